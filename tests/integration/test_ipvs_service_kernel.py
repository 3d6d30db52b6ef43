"""ipvs_service on a real kernel (the lab's qemu worker), with real traffic to real servers on the masters."""

from __future__ import annotations

import lab as labmod
import pytest
from conftest import BACKEND_PORT, VIP4, VIP6, Client, run_module
from conftest import VIP_PORT as PORT

MODULE = "kubeha.apiserver.ipvs_service"

VIP_PLUMBING = """set -e
modprobe ip_vs
ip link add khatest0 type dummy 2>/dev/null || true
ip link set khatest0 up
ip addr replace {vip4}/32 dev khatest0
ip -6 addr replace {vip6}/128 dev khatest0 nodad
sysctl -qw net.ipv4.vs.conntrack=1
nft -f - <<'NFT'
table inet kubeha_test
delete table inet kubeha_test
table inet kubeha_test {{
  chain post {{
    type nat hook postrouting priority srcnat;
    ip saddr {vip4} masquerade
    ip6 saddr {vip6} masquerade
  }}
}}
NFT
"""


@pytest.fixture(scope="module")
def vip(ipvs_node, vips_excluded):
    """Node-originated traffic to a VIP on a dummy interface needs IPVS conntrack and source NAT (LAB-NOTES)."""
    labmod.ssh(ipvs_node, VIP_PLUMBING.format(vip4=VIP4, vip6=VIP6))
    yield ipvs_node
    cleanup = f"ipvsadm -D -t {VIP4}:{PORT}; ipvsadm -D -t [{VIP6}]:{PORT}; nft delete table inet kubeha_test"
    labmod.ssh(ipvs_node, cleanup + "; ip link del khatest0", check=False)


def ipvsadm(node, service: str = "") -> str:
    """`ipvsadm -Ln`, or only the lines of one service (kube-proxy's services share this table)."""
    if service:
        return labmod.ssh(node, f"ipvsadm -Ln -t {service}").stdout
    return labmod.ssh(node, "ipvsadm -Ln").stdout


def ipvs_rules(node, service: str) -> str:
    """One service's configuration as the kernel holds it: `ipvsadm -Ln -t` without the ActiveConn and InActConn
    columns, which the kernel changes by itself as earlier connections expire."""
    lines = ipvsadm(node, service).splitlines()
    return "\n".join(" ".join(x.split()[:4]) if x.lstrip().startswith("->") else x for x in lines)


def service_args(backends, weights=None, **extra) -> dict:
    weights = weights or {}
    reals = [{"address": m.addr4, "port": BACKEND_PORT, "weight": weights.get(m.name, 1)} for m in backends]
    return {"address": VIP4, "port": PORT, "real_servers": reals} | extra


def spread(node, host: str, count: int) -> dict[str, int]:
    client = Client(node)
    try:
        return client(f"spread {host} {PORT} {count}")
    finally:
        client.close()


def test_create_then_rerun_unchanged(vip, backends):
    first = run_module(vip, MODULE, service_args(backends[:2]))
    assert first["changed"] is True, first
    table = ipvs_rules(vip, f"{VIP4}:{PORT}")
    assert f"TCP  {VIP4}:{PORT} rr" in table
    for m in backends[:2]:
        assert f"-> {m.addr4}:{BACKEND_PORT}" in table
    assert table.count("Masq") == 2
    again = run_module(vip, MODULE, service_args(backends[:2]))
    assert again["changed"] is False, again
    assert ipvs_rules(vip, f"{VIP4}:{PORT}") == table
    assert sorted(r["address"] for r in again["service"]["real_servers"]) == sorted(m.addr4 for m in backends[:2])


def test_check_mode_predicts_and_touches_nothing(vip, backends):
    run_module(vip, MODULE, service_args(backends[:2]))
    before = ipvs_rules(vip, f"{VIP4}:{PORT}")
    result = run_module(vip, MODULE, service_args(backends, scheduler="wrr"), check=True, diff=True)
    assert result["changed"] is True
    assert result["diff"]["before"]["scheduler"] == "rr"
    assert result["diff"]["after"]["scheduler"] == "wrr"
    assert len(result["diff"]["after"]["real_servers"]) == len(backends)
    assert ipvs_rules(vip, f"{VIP4}:{PORT}") == before  # verified in the kernel, not on the module's word
    fresh = run_module(vip, MODULE, {"address": VIP4, "port": PORT + 1, "real_servers": []}, check=True)
    assert fresh["changed"] is True
    assert f"{VIP4}:{PORT + 1}" not in ipvsadm(vip)


def test_traffic_is_spread_as_the_scheduler_says(vip, backends):
    run_module(vip, MODULE, service_args(backends))
    counts = spread(vip, VIP4, 3 * len(backends))
    assert counts == {m.name: 3 for m in backends}, counts  # round robin: exactly even


def test_weight_zero_drains_without_cutting_live_connections(vip, backends):
    run_module(vip, MODULE, service_args(backends))
    client = Client(vip)
    try:
        held = client(f"open {VIP4} {PORT}")["backend"]
        held_addr = next(m.addr4 for m in backends if m.name == held)
        result = run_module(vip, MODULE, service_args(backends, weights={held: 0}))
        assert result["changed"] is True
        assert [a.split(" of ")[0] for a in result["actions"]] == [f"set real server {held_addr}:{BACKEND_PORT}"]
        line = next(x for x in ipvsadm(vip).splitlines() if f"-> {held_addr}:{BACKEND_PORT}" in x)
        assert line.split()[3:5] == ["0", "1"], line  # weight 0, the held connection still active
        assert client("again") == {"backend": held}  # and it still carries requests
        new = 2 * (len(backends) - 1)
        counts = client(f"spread {VIP4} {PORT} {new}")
        assert held not in counts and sum(counts.values()) == new, counts
    finally:
        client.close()


def test_weight_zero_negative_control_removal_does_cut(vip, backends):
    # The same held connection, but its real server is removed instead of drained: requests on it fail.
    # This shows the test above can fail, and why reweighting must never be a delete and re-add.
    run_module(vip, MODULE, service_args(backends))
    client = Client(vip)
    try:
        held = client(f"open {VIP4} {PORT}")["backend"]
        run_module(vip, MODULE, service_args([m for m in backends if m.name != held]))
        assert "error" in client("again")
    finally:
        client.close()


def test_purge_and_removal_of_a_real_server(vip, backends):
    run_module(vip, MODULE, service_args(backends))
    kept = backends[:1]
    unpurged = run_module(vip, MODULE, service_args(kept, purge_real_servers=False))
    assert unpurged["changed"] is False  # unlisted servers stay without purge
    purged = run_module(vip, MODULE, service_args(kept))
    assert purged["changed"] is True
    table = ipvsadm(vip)
    assert f"-> {kept[0].addr4}:{BACKEND_PORT}" in table
    assert all(f"-> {m.addr4}:{BACKEND_PORT}" not in table for m in backends[1:])


def test_bad_input_fails_and_changes_nothing(vip, backends):
    before = ipvs_rules(vip, f"{VIP4}:{PORT}")
    args = service_args(backends)
    args["real_servers"].append({"address": backends[0].addr6, "port": BACKEND_PORT})
    result = run_module(vip, MODULE, args)
    assert result.get("failed") is True
    assert backends[0].addr6 in result["msg"] and "family" in result["msg"], result["msg"]
    assert ipvs_rules(vip, f"{VIP4}:{PORT}") == before


def test_ipv6_service_carries_traffic(vip, backends):
    reals = [{"address": m.addr6, "port": BACKEND_PORT} for m in backends]
    result = run_module(vip, MODULE, {"address": VIP6, "port": PORT, "real_servers": reals})
    assert result["changed"] is True
    assert f"TCP  [{VIP6}]:{PORT} rr" in ipvsadm(vip)
    counts = spread(vip, VIP6, 2 * len(backends))
    assert counts == {m.name: 2 for m in backends}, counts
    again = run_module(vip, MODULE, {"address": VIP6, "port": PORT, "real_servers": reals})
    assert again["changed"] is False


def test_state_absent_removes_and_is_idempotent(vip, backends):
    run_module(vip, MODULE, service_args(backends))
    gone = run_module(vip, MODULE, {"address": VIP4, "port": PORT, "state": "absent"})
    assert gone["changed"] is True
    assert f"{VIP4}:{PORT} " not in ipvsadm(vip)
    again = run_module(vip, MODULE, {"address": VIP4, "port": PORT, "state": "absent"})
    assert again["changed"] is False
