"""Day 2 on the lab: a master removed from every node's proxy, then added back, while traffic flows.

cp3 plays the master that leaves (its apiserver stopped, as `kubeadm reset` would: its unit, or its static pod)
and then joins again (its apiserver started, the inventory lists it again). Each playbook must reach every node
without restarting any proxy (the guard's and haproxy's PIDs stay the same) and without failing a request
through the VIP. Runs after test_local_proxy.py (file order), on the lab it leaves with site.yml applied.
"""

from __future__ import annotations

import json

import lab as labmod
import pytest
import yaml
from scenarios import playbook, under_load

PROXY_UNITS = ("kubeha-apiserver-guard", "kubeha-apiserver-haproxy")


def without(inventory: dict, host: str) -> dict:
    trimmed = json.loads(json.dumps(inventory))
    for group in trimmed["all"]["children"].values():
        group["hosts"].pop(host, None)
    return trimmed


def proxy_pids(nodes) -> dict[str, str]:
    pids = {}
    for node in nodes:
        for unit in PROXY_UNITS:
            pid = labmod.ssh(node, f"systemctl show -p MainPID --value {unit}", check=False).stdout.strip()
            if pid not in ("", "0"):
                pids[f"{node.name}/{unit}"] = pid
    return pids


def backends_on(node) -> str:
    if node.has_ipvs:
        return labmod.ssh(node, "ipvsadm -Ln -t 169.254.100.1:6444").stdout
    return labmod.ssh(node, "cat /etc/kubeha-apiserver/haproxy.cfg").stdout


def proxies_list_every_master(nodes, masters) -> bool:
    """What test_local_proxy.py leaves: every node's guard running, every master one of its proxy's backends."""
    return all(
        labmod.ssh(n, "systemctl is-active kubeha-apiserver-guard", check=False).stdout.strip() == "active"
        and all(f"{m.addr4}:6443" in backends_on(n) for m in masters)
        for n in nodes.values()
    )


@pytest.fixture(scope="module")
def day2(lab, nodes, masters):
    if not proxies_list_every_master(nodes, masters):  # this file alone, on a lab without site.yml
        site = playbook("site")
        assert site.returncode == 0, site.stdout[-4000:]
    inventory = yaml.safe_load((labmod.WORK / "inventory.yml").read_text())
    leaving = masters[2]
    yield inventory, leaving
    # Whatever happened, cp3's apiserver runs again and every node's proxy lists it.
    labmod.ssh(leaving, labmod.apiserver_command("start"), check=False)
    labmod.wait_for(f"{leaving.name}'s apiserver ready", lambda: labmod.readyz(leaving.addr4), 180)
    if not proxies_list_every_master(nodes, masters):
        assert playbook("site").returncode == 0


def test_remove_master_reaches_every_node_without_a_restart_or_a_failed_request(day2, nodes, masters):
    inventory, leaving = day2
    staying = [n for n in nodes.values() if n.name != leaving.name]
    labmod.ssh(leaving, labmod.apiserver_command("stop"), timeout=180)
    labmod.wait_for(
        "the kubernetes EndpointSlice drops cp3", lambda: leaving.addr4 not in labmod.kubernetes_endpoints(), 60
    )
    before = proxy_pids(staying)
    run, load = under_load([nodes["w2"]], lambda: playbook("remove_master", inventory=without(inventory, leaving.name)))
    assert run.returncode == 0, run.stdout[-6000:]
    print(f"\nremove_master.yml under load from w2: {json.dumps(load)}")
    assert load["w2"]["failed"] == 0, load
    assert proxy_pids(staying) == before  # reloaded, never restarted
    for node in staying:
        assert f"{leaving.addr4}:6443" not in backends_on(node), node.name


def test_negative_control_remove_master_refuses_when_no_master_would_remain(day2, nodes):
    # The only backend left in the inventory does not exist: remove_master.yml must stop before any change.
    # (The masters stay in kube_control_plane: an empty group is the inventory check's refusal, not this one.)
    inventory, _leaving = day2
    nowhere = json.loads(json.dumps(inventory))
    nowhere["all"]["vars"]["local_proxy_backends"] = ["10.88.0.99:6443"]  # in the lab's subnet, no such host
    before = {n.name: backends_on(n) for n in nodes.values()}
    run = playbook("remove_master", inventory=nowhere)
    assert run.returncode != 0
    assert "reaches none of ['10.88.0.99:6443']: nothing was changed" in run.stdout, run.stdout[-3000:]
    assert {n.name: backends_on(n) for n in nodes.values()} == before


def test_add_master_reaches_every_node_without_a_restart_or_a_failed_request(day2, nodes, masters):
    inventory, returning = day2
    everyone = list(nodes.values())
    labmod.ssh(returning, labmod.apiserver_command("start"))
    labmod.wait_for(f"{returning.name}'s apiserver ready", lambda: labmod.readyz(returning.addr4), 180)
    before = proxy_pids([n for n in everyone if n.name != returning.name])
    run, load = under_load([nodes["w2"]], lambda: playbook("add_master", inventory=inventory))
    assert run.returncode == 0, run.stdout[-6000:]
    print(f"\nadd_master.yml under load from w2: {json.dumps(load)}")
    assert load["w2"]["failed"] == 0, load
    assert proxy_pids([n for n in everyone if n.name != returning.name]) == before
    for node in everyone:
        assert f"{returning.addr4}:6443" in backends_on(node), node.name
