"""kubeproxy_exclude_cidr against the lab's real apiservers, and its effect on the real kube-proxy (IPVS mode).

The negative control comes first: without the exclude, kube-proxy deletes the VIP's IPVS service on its
first sync (kubernetes/kubernetes#59507 and friends). With it, the service survives kube-proxy's syncs.
"""

from __future__ import annotations

import json

import lab as labmod
import pytest
import yaml
from conftest import BACKEND_PORT, VIP4, VIP6, VIP_PORT, run_module

MODULE = "kubeha.apiserver.kubeproxy_exclude_cidr"
ADMIN = "/etc/kubernetes/admin.conf"


def kube_proxy_cm() -> dict:
    return json.loads(labmod.kubectl("get", "-n", "kube-system", "cm", "kube-proxy", "-o", "json").stdout)


def create_vip_services(node, backends) -> None:
    """Both VIP services, each created by this call (the module found it absent and added it)."""
    for vip, attr in ((VIP4, "addr4"), (VIP6, "addr6")):
        reals = [{"address": getattr(m, attr), "port": BACKEND_PORT} for m in backends]
        args = {"address": vip, "port": VIP_PORT, "real_servers": reals}
        result = run_module(node, "kubeha.apiserver.ipvs_service", args)
        assert not result.get("failed") and result["changed"] is True, result


def vip_services(node) -> list[str]:
    table = labmod.ssh(node, "ipvsadm -Ln").stdout
    return [vip for vip in (f"{VIP4}:{VIP_PORT}", f"[{VIP6}]:{VIP_PORT}") if vip in table]


@pytest.fixture(scope="module")
def clean_exclude(control_node, ipvs_node):
    run_module(control_node, MODULE, {"cidrs": [VIP4, VIP6], "kubeconfig": ADMIN, "state": "absent"})
    labmod.restart_kube_proxy(ipvs_node)
    yield
    run_module(control_node, MODULE, {"cidrs": [VIP4, VIP6], "kubeconfig": ADMIN, "state": "absent"})
    labmod.ssh(ipvs_node, f"ipvsadm -D -t {VIP4}:{VIP_PORT}; ipvsadm -D -t [{VIP6}]:{VIP_PORT}", check=False)
    labmod.restart_kube_proxy(ipvs_node)


# Both tests judge after the same span: a new kube-proxy's first sync and its next periodic one of each family (a
# sync that stopped early, a failed ipset call say, skips the cleanup that deletes unowned services; the next does it).
SYNCS = 2


def after_syncs(node, done) -> list[str]:
    """The VIP services once `done(services)` holds or both families have synced SYNCS times, whichever is first."""
    labmod.wait_for(
        f"kube-proxy on {node.name} synced both families {SYNCS} times",
        lambda: done(vip_services(node)) or labmod.synced_both_families(node, SYNCS),
        120,  # the periodic sync is every 30 s (syncPeriod's default)
    )
    return vip_services(node)


def test_negative_control_without_exclude_kube_proxy_deletes_the_vip(clean_exclude, ipvs_node, backends):
    # Each service is known to have been created (create_vip_services). Not checked after both: on the emulated node
    # the two creations take about 35 s, and the running kube-proxy (without the exclude) may already delete the
    # first on its 30 s periodic sync, which is this test's claim arriving early (seen in CI, 2026-12-07).
    create_vip_services(ipvs_node, backends)
    labmod.restart_kube_proxy(ipvs_node)
    assert after_syncs(ipvs_node, lambda services: services == []) == []


def test_check_mode_diff_then_apply_then_unchanged(clean_exclude, control_node):
    before = kube_proxy_cm()
    args = {"cidrs": [VIP4, VIP6], "kubeconfig": ADMIN}
    predicted = run_module(control_node, MODULE, args, check=True, diff=True)
    assert predicted["changed"] is True and predicted["mode"] == "ipvs"
    assert f"{VIP4}/32" in predicted["diff"]["after"] and f"{VIP4}/32" not in predicted["diff"]["before"]
    assert kube_proxy_cm()["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]

    applied = run_module(control_node, MODULE, args, diff=True)
    assert applied["changed"] is True
    # Entries someone else put there (an earlier site.yml's VIP, say) stay, in their place, before ours.
    others = (yaml.safe_load(before["data"]["config.conf"]).get("ipvs") or {}).get("excludeCIDRs") or []
    assert applied["exclude_cidrs"] == [*others, f"{VIP4}/32", f"{VIP6}/128"]
    after = kube_proxy_cm()
    config = after["data"]["config.conf"]
    assert f"- {VIP4}/32" in config and f"- {VIP6}/128" in config
    # Only the excludeCIDRs lines changed; every other line of kubeadm's text is as it was.
    old_lines = [x for x in before["data"]["config.conf"].splitlines() if "excludeCIDRs" not in x]
    new_lines = [x for x in config.splitlines() if "excludeCIDRs" not in x and VIP4 not in x and VIP6 not in x]
    assert old_lines == new_lines
    assert after["data"]["kubeconfig.conf"] == before["data"]["kubeconfig.conf"]

    again = run_module(control_node, MODULE, args)
    assert again["changed"] is False
    assert kube_proxy_cm()["metadata"]["resourceVersion"] == after["metadata"]["resourceVersion"]


def test_with_exclude_the_vip_survives_kube_proxy(clean_exclude, control_node, ipvs_node, backends):
    result = run_module(control_node, MODULE, {"cidrs": [VIP4, VIP6], "kubeconfig": ADMIN})
    assert not result.get("failed"), result
    # kube-proxy reads the exclude at start: the one running still has the fixture's config (no exclude), and
    # its next sync of either family would delete that family's service before the claim is even tested.
    labmod.restart_kube_proxy(ipvs_node)
    create_vip_services(ipvs_node, backends)
    labmod.restart_kube_proxy(ipvs_node)  # a fresh start syncs both families from scratch
    assert len(after_syncs(ipvs_node, lambda services: len(services) < 2)) == 2


def test_bad_cidr_fails_before_any_change(clean_exclude, control_node):
    before = kube_proxy_cm()["metadata"]["resourceVersion"]
    result = run_module(control_node, MODULE, {"cidrs": ["10.0.0.1/24"], "kubeconfig": ADMIN})
    assert result.get("failed") is True
    assert "10.0.0.1/24" in result["msg"], result["msg"]
    assert kube_proxy_cm()["metadata"]["resourceVersion"] == before


def test_missing_configmap_names_the_object(clean_exclude, control_node):
    result = run_module(control_node, MODULE, {"cidrs": [VIP4], "kubeconfig": ADMIN, "configmap": "no-such-proxy"})
    assert result.get("failed") is True
    assert "no-such-proxy" in result["msg"] and "kubeadm" in result["msg"], result["msg"]


MARKER = "kubeha.apiserver/restarted-for-configmap"


def kube_proxy_ds() -> dict:
    return json.loads(labmod.kubectl("get", "-n", "kube-system", "ds", "kube-proxy", "-o", "json").stdout)


def restarted_at(ds: dict) -> str | None:
    return (ds["spec"]["template"]["metadata"].get("annotations") or {}).get("kubectl.kubernetes.io/restartedAt")


def test_a_restart_a_dead_run_left_undone_happens_on_the_next_run(clean_exclude, control_node):
    # On the real apiserver: a run restarts kube-proxy's DaemonSet and records what its pods run; a second run
    # changes the ConfigMap and dies before its restart (here: a run without restart); the next run, which changes
    # nothing, restarts, once. The old rule (restart only when this run changed the ConfigMap) fails the third step.
    args = {"cidrs": [VIP4, VIP6], "kubeconfig": ADMIN, "restart": True}
    # From a known start whatever the tests before left (the exclude there or not, a marker or none; CI 2026-12-07
    # found the exclude there and no marker): the VIPs out, so that the first run changes the ConfigMap.
    run_module(control_node, MODULE, args | {"state": "absent", "restart": False})
    first = run_module(control_node, MODULE, args)
    assert first["restarted"] is True, first
    recorded = kube_proxy_ds()
    marker, rolled = recorded["metadata"]["annotations"][MARKER], restarted_at(recorded)
    died = run_module(control_node, MODULE, args | {"state": "absent", "restart": False})
    assert died["changed"] is True and died["restarted"] is False
    assert kube_proxy_ds()["metadata"]["annotations"][MARKER] == marker  # the pods still run the old ConfigMap
    predicted = run_module(control_node, MODULE, args | {"state": "absent"}, check=True)
    assert (predicted["changed"], predicted["restarted"]) == (True, True), predicted
    rerun = run_module(control_node, MODULE, args | {"state": "absent"})
    assert (rerun["changed"], rerun["restarted"]) == (True, True), rerun
    after = kube_proxy_ds()
    assert after["metadata"]["annotations"][MARKER] != marker and restarted_at(after) != rolled
    # Negative control: with the marker up to date, a run restarts nothing.
    again = run_module(control_node, MODULE, args | {"state": "absent"})
    assert (again["changed"], again["restarted"]) == (False, False), again
    assert restarted_at(kube_proxy_ds()) == restarted_at(after)
