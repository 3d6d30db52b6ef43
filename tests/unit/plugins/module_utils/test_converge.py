# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""module_utils/_converge, the apiserver_proxy module's two paths, on the guard's rig: check mode (``predict``) runs
the guard's own decision and its data path's plan and changes nothing; a run (``converge``) is one guard round and
reports every change it made, and none when it only looked."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from ansible_collections.kubeha.apiserver.plugins.module_utils._converge import converge, predict
from guard_rig import M1, M2, M3, M6, VIP4, VIP6, RigFactory, rigs


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[RigFactory]:
    yield from rigs(tmp_path)


def test_check_mode_predicts_the_services_and_changes_nothing(rig: RigFactory) -> None:
    r = rig()
    r.prober.set("fail", M3)
    shutil.rmtree(Path(r.paths.sys_root) / "class" / "net" / "kha0")  # nothing set up yet
    outcome = predict(r.cfg, r.hooks)
    assert outcome.changed and outcome.mode == "ipvs"
    assert outcome.actions[0] == f"create interface kha0 with {VIP4}"
    assert any(a.startswith("add service") for a in outcome.actions[1:]), outcome.actions
    assert {b["backend"]: (b["ready"], b["weight"]) for b in outcome.backends} == {
        str(M1): (True, 1),
        str(M2): (True, 1),
        str(M3): (False, 0),
    }
    assert outcome.ready == 2 and not outcome.fail_open
    assert r.ipvs.services == {} and r.ipvs.applied == []
    assert r.runner.calls == []  # no command at all: no interface, sysctl, module or nftables change
    assert not Path(r.cfg.state_file).exists()


def test_a_run_reports_its_changes_then_check_mode_and_a_second_run_report_none(rig: RigFactory) -> None:
    r = rig()
    first = converge(r.cfg, str(r.tmp_path / "guard.json"), r.hooks)
    assert first.changed
    assert "sysctl net.ipv4.vs.conntrack=1" in first.actions  # plumbing is reported, not only the services
    assert any(a.startswith("add service") for a in first.actions)
    assert r.ipvs.weights() == {"10.0.0.11:6443": 1, "10.0.0.12:6443": 1, "10.0.0.13:6443": 1}
    assert not predict(r.cfg, r.hooks).changed
    again = converge(r.cfg, str(r.tmp_path / "guard.json"), r.hooks)
    assert not again.changed and again.actions == []


def test_check_mode_decides_as_the_guard_per_address_family(rig: RigFactory) -> None:
    # A dual-stack master that prefers its own IPv4 apiserver: the guard gives the IPv4 service the failover
    # scheduler and the IPv6 one, which has no local backend, round robin. Check mode's plan is the guard's, so it
    # predicts exactly what a run then applies (a copy of the decision once took the scheduler from both families).
    r = rig(
        vip=[VIP4, VIP6],
        seeds=["10.0.0.11:6443", "10.0.0.12:6443", "[fd00::11]:6443", "[fd00::12]:6443"],
        local_addresses=["10.0.0.11", "fd00::99"],
        prefer_local=True,
    )
    predicted = predict(r.cfg, r.hooks)
    converge(r.cfg, str(r.tmp_path / "guard.json"), r.hooks)
    applied = [a.describe() for a in r.ipvs.applied]
    assert [a for a in predicted.actions if not a.startswith("create interface")] == applied
    assert r.ipvs.services[(VIP4, 6443, "tcp")].scheduler == "fo"
    assert r.ipvs.services[(VIP6, 6443, "tcp")].scheduler == "rr"
    assert {b["backend"]: b["weight"] for b in predicted.backends}[str(M6)] == 1
    assert not predict(r.cfg, r.hooks).changed


def test_haproxy_check_mode_names_the_file_and_the_reload_and_writes_nothing(rig: RigFactory) -> None:
    rig_dir = rig().tmp_path
    config = rig_dir / "etc" / "haproxy.cfg"
    r = rig(mode="haproxy", haproxy={"config_path": str(config)})
    outcome = predict(r.cfg, r.hooks)
    assert outcome.actions == [f"write {config} (3 backends)", "reload haproxy"]
    assert not config.parent.exists() and r.runner.calls == []
