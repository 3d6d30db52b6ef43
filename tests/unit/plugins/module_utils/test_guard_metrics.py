# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The guard's metrics, its endpoint and systemd's notification (module_utils/_guard_metrics, _guard_hooks)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_hooks import sd_notify
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_metrics import (
    MetricsSnapshot,
    render_metrics,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._proxy import DOWN, UP
from guard_rig import (
    M1,
    M2,
    M3,
    RigFactory,
    rigs,
)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[RigFactory]:
    yield from rigs(tmp_path)


# --------------------------------------------------------------------------------------------------
# Metrics and systemd
# --------------------------------------------------------------------------------------------------


def test_metrics_text() -> None:
    snap = MetricsSnapshot(
        backends=(M1, M2),
        health={M1: UP, M2: DOWN},
        weights={M1: 1, M2: 0},
        latency={M1: 0.0125},
        transitions={(M2, DOWN): 1, (M3, UP): 2},
        last_reconcile=1700000000.5,
        fail_open=False,
        discovered=3,
        apply_errors=0,
    )
    text = render_metrics(snap)
    lines = text.splitlines()
    for expected in [
        "# TYPE kubeha_apiserver_backend_up gauge",
        'kubeha_apiserver_backend_up{backend="10.0.0.11:6443"} 1',
        'kubeha_apiserver_backend_up{backend="10.0.0.12:6443"} 0',
        'kubeha_apiserver_backend_weight{backend="10.0.0.11:6443"} 1',
        'kubeha_apiserver_backend_weight{backend="10.0.0.12:6443"} 0',
        'kubeha_apiserver_probe_latency_seconds{backend="10.0.0.11:6443"} 0.0125',
        "# TYPE kubeha_apiserver_backend_transitions_total counter",
        'kubeha_apiserver_backend_transitions_total{backend="10.0.0.11:6443",to="down"} 0',
        'kubeha_apiserver_backend_transitions_total{backend="10.0.0.12:6443",to="down"} 1',
        'kubeha_apiserver_backend_transitions_total{backend="10.0.0.13:6443",to="up"} 2',
        "kubeha_apiserver_last_reconcile_timestamp_seconds 1700000000.5",
        "kubeha_apiserver_fail_open 0",
        "kubeha_apiserver_backends_discovered 3",
        "kubeha_apiserver_apply_errors_total 0",
    ]:
        assert expected in lines
    assert not any("probe_latency_seconds{" in line and "10.0.0.12" in line for line in lines)
    assert text.endswith("\n")


def test_sd_notify(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        assert sd_notify("READY=1", {"NOTIFY_SOCKET": path})
        assert listener.recv(64) == b"READY=1"
    assert sd_notify("READY=1", {}) is False
    abstract = f"@kubeha-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + abstract[1:])
        assert sd_notify("STOPPING=1", {"NOTIFY_SOCKET": abstract})
        assert listener.recv(64) == b"STOPPING=1"
