# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""kubeha_apiserver_last_reconcile_timestamp_seconds is the age of the guard's loop, as the
KubehaApiserverGuardLoopStale alert assumes: every probe round moves it, changes or not; a round that fails
does not."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_config import parse_config
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_daemon import Guard
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_hooks import Hooks
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_metrics import render_metrics
from ansible_collections.kubeha.apiserver.plugins.module_utils._node_plumbing import Paths
from ansible_collections.kubeha.apiserver.plugins.module_utils._probe import ProbeSettings
from ansible_collections.kubeha.apiserver.plugins.module_utils._proxy import Backend, ProbeResult
from fake_ipvs import FakeIPVSAdapter

METRIC = "kubeha_apiserver_last_reconcile_timestamp_seconds"


def value(guard: Guard) -> float:
    lines = [line for line in render_metrics(guard.snapshot()).splitlines() if line.startswith(METRIC + " ")]
    assert len(lines) == 1
    return float(lines[0].split()[1])


def test_every_round_moves_the_timestamp_and_a_failing_round_does_not(tmp_path: Path) -> None:
    (tmp_path / "sys" / "class" / "net" / "kha0").mkdir(parents=True)
    cfg = parse_config(
        {
            "vip": ["169.254.100.1"],
            "port": 6444,
            "seeds": ["10.0.0.11:6443", "10.0.0.12:6443"],
            "ca_file": str(tmp_path / "ca.crt"),
            "state_file": str(tmp_path / "state.json"),
            "fast_check_interval_s": 0,
            "metrics_port": 0,
        }
    )
    now = [1_767_225_600.0]
    failing = [False]

    def prober(backends: Sequence[Backend], settings: ProbeSettings) -> Mapping[Backend, ProbeResult]:
        if failing[0]:
            raise RuntimeError("probe pool broken")
        return {b: ProbeResult(b, True, 0.004) for b in backends}

    ipvs = FakeIPVSAdapter()
    hooks = Hooks(
        runner=lambda argv, stdin=None: (0, "", ""),
        ipvs_factory=lambda: ipvs,
        prober=prober,
        clock=lambda: now[0],
        monotonic=lambda: now[0],
        paths=Paths(proc_root=str(tmp_path), proc_sys=str(tmp_path), sys_root=str(tmp_path / "sys")),
    )
    guard = Guard(cfg, None, hooks)
    guard._plumbed = True  # the plumbing is the subject of the guard's own tests
    try:
        assert value(guard) == 0.0  # before the first round
        guard.run_round()  # both backends come up: the data path changes
        assert value(guard) == now[0]
        assert ipvs.applied
        for _round in range(3):  # nothing changes any more, the timestamp still moves with every round
            ipvs.applied.clear()
            now[0] += 1.0
            guard.run_round()
            assert ipvs.applied == []
            assert value(guard) == now[0]
        last = now[0]
        failing[0] = True
        now[0] += 1.0
        with pytest.raises(RuntimeError):
            guard.run_round()
        assert value(guard) == last  # the alert sees the loop stand still
    finally:
        guard.close()
