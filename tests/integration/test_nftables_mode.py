"""The nftables data path on the lab, beside kube-proxy in nftables mode, and the IPVS data path's loss there.

w2 (a container on this machine's kernel: nftables, no IPVS) has its kube-proxy switched to nftables mode (a
drop-in of the lab's unit); site.yml on w2 alone then chooses `nftables` for it by itself (`auto`: the running
kube-proxy is in nftables mode), replacing its haproxy. On it, under load through the VIP: kube-proxy restarted,
a master's apiserver killed, a master black-holed, the guard restarted; and kube-proxy's own Services still
answered through its rules while the collection's table is there. The negative control: w1 (IPVS), its
kube-proxy switched to nftables mode, whose start-up cleanup deletes the VIP's IPVS service (the guard restores
it, counted). Both nodes are put back as they were (kube-proxy's mode, w2's haproxy) at the end.

Runs after test_local_proxy.py (file order), on the install it leaves; alone, it installs with site.yml first.
"""

from __future__ import annotations

import json
import re
import shlex

import lab as labmod
import pytest
from conftest import FILES
from scenarios import PORT, VIP4, drill, kill_apiserver, playbook

DROP_IN = "/etc/systemd/system/kube-proxy.service.d/kubeha-mode.conf"
TABLE = "kubeha_apiserver_lb"
DROP_6443 = "iptables -I INPUT -p tcp --dport 6443 -j DROP"
UNDROP_6443 = "iptables -D INPUT -p tcp --dport 6443 -j DROP"
KUBERNETES_SERVICE = "10.96.0.1"  # the lab's service range is 10.96.0.0/16: the kubernetes Service's ClusterIP


def set_kube_proxy_mode(node: labmod.Node, mode: str | None) -> None:
    """kube-proxy's mode on the node through a drop-in of the lab's unit (None: the unit's own), then restarted
    and synced."""
    if mode:
        text = f"[Service]\nEnvironment=KUBEHA_LAB_PROXY_MODE={mode}\n"
        labmod.ssh(node, f"mkdir -p {DROP_IN.rsplit('/', 1)[0]} && printf %s {shlex.quote(text)} > {DROP_IN}")
    else:
        labmod.ssh(node, f"rm -f {DROP_IN}")
    labmod.ssh(node, "systemctl daemon-reload")
    labmod.restart_kube_proxy(node)


def repairs(node: labmod.Node) -> int:
    found = re.search(r"^kubeha_apiserver_datapath_repairs_total (\d+)", labmod.node_metrics(node, 9445), re.M)
    assert found, f"no repairs metric on {node.name}"
    return int(found.group(1))


def guard_mode(node: labmod.Node) -> str:
    return json.loads(labmod.ssh(node, "cat /etc/kubeha-apiserver/guard.json").stdout)["mode"]


def spread(node: labmod.Node, host: str = VIP4, port: int = PORT, count: int = 30) -> dict[str, int]:
    script = (FILES / "vip_spread.py").read_text()
    masters = ",".join(raw["name"] for raw in labmod.load_state()["nodes"] if raw["role"] == "control-plane")
    cmd = f"python3 -c {shlex.quote(script)} {host} {port} /etc/kubernetes/pki/ca.crt {count} {masters}"
    return json.loads(labmod.ssh(node, cmd).stdout)


def site_on(node: labmod.Node):
    run = playbook("site", "--limit", node.name)
    assert run.returncode == 0, run.stdout[-4000:]
    return run


@pytest.fixture(scope="module")
def w2(lab, nodes):
    node = nodes["w2"]
    if labmod.ssh(node, "systemctl is-active kubeha-apiserver-guard", check=False).stdout.strip() != "active":
        assert playbook("site").returncode == 0  # run alone: the install the drills need
    # kube-proxy's nftables mode runs the nft command: the lab's node image has only iptables.
    install = "command -v nft >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive " \
              "apt-get install -y -qq nftables >/dev/null)"  # fmt: skip
    labmod.ssh(node, install)
    set_kube_proxy_mode(node, "nftables")
    try:
        run = site_on(node)
        assert "mode nftables: kube-proxy runs in nftables mode" in run.stdout, run.stdout[-4000:]
        yield node
    finally:
        set_kube_proxy_mode(node, None)
        back = site_on(node)
        assert "mode haproxy: no IPVS in this kernel" in back.stdout, back.stdout[-4000:]
        assert labmod.ssh(node, "systemctl is-active kubeha-apiserver-haproxy").stdout.strip() == "active"
        assert labmod.ssh(node, f"nft list table inet {TABLE}", check=False).returncode != 0


def test_auto_chooses_nftables_beside_nftables_kube_proxy_and_haproxy_leaves(w2, masters):
    assert guard_mode(w2) == "nftables"
    assert f"ip daddr {VIP4} tcp dport {PORT}" in labmod.ssh(w2, f"nft list table inet {TABLE}").stdout
    assert labmod.ssh(w2, "systemctl is-active kubeha-apiserver-haproxy", check=False).stdout.strip() != "active"
    assert labmod.ssh(w2, "test -e /etc/kubeha-apiserver/haproxy.cfg", check=False).returncode != 0
    assert set(spread(w2)) == {m.name for m in masters}


def test_kube_proxys_services_still_answer_beside_the_collections_table(w2, masters):
    # The kubernetes Service's ClusterIP, answered by the apiservers through kube-proxy's own nftables rules.
    assert "table ip kube-proxy" in labmod.ssh(w2, "nft list tables").stdout
    seen = spread(w2, KUBERNETES_SERVICE, 443, 12)
    assert "error" not in seen and sum(seen.values()) == 12, seen


def test_kube_proxy_restarted_under_load_fails_nothing_with_the_nftables_data_path(w2):
    before = repairs(w2)
    result = drill(w2, lambda: labmod.restart_kube_proxy(w2), seconds=20)
    print(f"\nnftables on w2, kube-proxy (nftables mode) restarted: {json.dumps(result)}")
    assert result["requests"] >= 40 and result["failed"] == 0, result
    assert repairs(w2) == before  # kube-proxy never touched the collection's table


def test_guard_restart_under_load_fails_nothing_with_the_nftables_data_path(w2):
    result = drill(w2, lambda: labmod.ssh(w2, "systemctl restart kubeha-apiserver-guard"), seconds=8)
    print(f"\nnftables on w2, guard restarted: {json.dumps(result)}")
    assert result["requests"] >= 40 and result["failed"] == 0, result


def test_a_master_killed_under_load_with_the_nftables_data_path(w2, masters):
    victim = masters[1]
    result = drill(w2, lambda: kill_apiserver(victim))
    print(f"\nnftables on w2, SIGKILL of {victim.name}'s apiserver: {json.dumps(result)}")
    labmod.wait_for(f"apiserver on {victim.name} back", lambda: labmod.readyz(victim.addr4), 120)
    assert result["requests"] >= 60
    # As with IPVS: the kernel does not retry another backend, the fast check takes the dead one out at once.
    assert result["event_lasted_s"] < 0.5 and result["failed_in_flight"] <= 2, result
    assert result["last_failure_s"] is None or result["last_failure_s"] <= 1.5, result


def test_a_master_black_holed_under_load_with_the_nftables_data_path(w2, masters):
    victim = masters[2]
    try:
        result = drill(w2, lambda: labmod.ssh(victim, DROP_6443), seconds=12)
    finally:
        labmod.ssh(victim, UNDROP_6443, check=False)
    print(f"\nnftables on w2, {victim.name} black-holed: {json.dumps(result)}")
    assert result["requests"] >= 30
    assert result["last_failure_s"] is None or result["last_failure_s"] < 2.0, result
    assert result["slowest_after_settle_s"] < 1.0, result


def test_negative_control_kube_proxy_in_nftables_mode_deletes_the_ipvs_data_path(nodes):
    # w1 keeps the IPVS data path; its kube-proxy switched to nftables mode deletes every IPVS service when it
    # starts. The guard restores the VIP's (counted as a repair): what the nftables data path never needs.
    w1 = nodes["w1"]
    before = repairs(w1)
    try:
        result = drill(w1, lambda: set_kube_proxy_mode(w1, "nftables"), seconds=50)
        print(f"\nipvs on w1, kube-proxy switched to nftables mode: {json.dumps(result)}, "
              f"repairs {repairs(w1) - before}")  # fmt: skip
        assert repairs(w1) > before, result
    finally:
        set_kube_proxy_mode(w1, None)
    assert f"{VIP4}:{PORT}" in labmod.ssh(w1, "ipvsadm -Ln").stdout
