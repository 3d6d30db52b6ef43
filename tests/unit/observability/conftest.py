# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The guard's real metrics text, rendered by its own ``render_metrics()`` from a realistic snapshot: the
reference the metrics documentation, the alert rules and the dashboard are checked against."""

from __future__ import annotations

import re

import pytest
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_metrics import MetricsSnapshot, render_metrics
from ansible_collections.kubeha.apiserver.plugins.module_utils._proxy import DOWN, UP, Backend

M1, M2, M3 = Backend("10.0.0.11", 6443), Backend("10.0.0.12", 6443), Backend("10.0.0.13", 6443)
M6 = Backend("fd00::11", 6443)
GONE = Backend("10.0.0.14", 6443)  # a master that left the set: only its transitions remain

_TYPE = re.compile(r"^# TYPE (\S+) (\S+)$")
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def realistic_snapshot() -> MetricsSnapshot:
    """A master's guard a while after start: its own apiserver preferred, one master down, one gone, an IPv6
    backend discovered, one failed apply."""
    return MetricsSnapshot(
        backends=(M1, M2, M3, M6),
        health={M1: UP, M2: DOWN, M3: UP, M6: UP},
        weights={M1: 2, M2: 0, M3: 1, M6: 1},
        latency={M1: 0.0031, M2: 1.0004, M3: 0.0127, M6: 0.0042},
        transitions={(M1, UP): 1, (M2, UP): 1, (M2, DOWN): 2, (M3, UP): 1, (M6, UP): 1, (GONE, UP): 1, (GONE, DOWN): 1},
        last_reconcile=1767225600.25,
        fail_open=False,
        discovered=4,
        apply_errors=1,
    )


def parse_families(text: str) -> dict[str, str]:
    """``{metric name: type}`` of a text exposition; every sample must belong to a declared family."""
    types: dict[str, str] = {}
    for line in text.splitlines():
        match = _TYPE.match(line)
        if match:
            types[match.group(1)] = match.group(2)
            continue
        if not line or line.startswith("# HELP "):
            continue
        sample = _SAMPLE.match(line)
        assert sample, f"not a sample line: {line!r}"
        assert sample.group(1) in types, f"sample {line!r} before its # TYPE line"
        float(sample.group(3))
    return types


@pytest.fixture(scope="session")
def metrics_text() -> str:
    return render_metrics(realistic_snapshot())


@pytest.fixture(scope="session")
def rendered_types(metrics_text: str) -> dict[str, str]:
    return parse_families(metrics_text)
