"""playbooks/site.yml on the lab: the local proxy on every node, both modes, and a master killed under load.

Runs after the module suites (file order) and leaves the proxy installed for the lab's last checks.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess

import lab as labmod
import pytest
from conftest import FILES
from scenarios import PORT, VIP4, drill, playbook


def site(*extra: str) -> subprocess.CompletedProcess:
    return playbook("site", *extra)


def recap(output: str) -> dict[str, dict[str, int]]:
    hosts = {}
    for host, counts in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", output, re.M):
        hosts[host] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counts)}
    return hosts


@pytest.fixture(scope="module")
def installed(lab, nodes):
    first = site()
    assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-2000:]
    return first


def test_second_run_changes_nothing(installed, nodes):
    second = site()
    assert second.returncode == 0, second.stdout[-4000:]
    counts = recap(second.stdout)
    assert set(counts) == set(nodes)
    assert {h: c["changed"] for h, c in counts.items()} == dict.fromkeys(nodes, 0), second.stdout[-4000:]


def test_every_node_answers_through_its_vip(installed, nodes):
    script = (FILES / "vip_load.py").read_text()
    for node in nodes.values():
        assert labmod.ssh(node, "systemctl is-active kubeha-apiserver-guard").stdout.strip() == "active"
        cmd = f"python3 -c {shlex.quote(script)} {VIP4} {PORT} /etc/kubernetes/pki/ca.crt 1 0.5"
        run = json.loads(labmod.ssh(node, cmd).stdout)
        assert run["results"] and all(result[1] for result in run["results"]), (node.name, run)


def test_ipvs_node_lists_every_master_and_userspace_nodes_run_haproxy(installed, nodes, masters):
    for node in nodes.values():
        if node.has_ipvs:
            table = labmod.ssh(node, f"ipvsadm -Ln -t {VIP4}:{PORT}").stdout
            for m in masters:
                assert f"-> {m.addr4}:6443" in table, table
        else:
            config = labmod.ssh(node, "cat /etc/kubeha-apiserver/haproxy.cfg").stdout
            for m in masters:
                assert f"{m.addr4}:6443" in config, config
            assert labmod.ssh(node, "systemctl is-active kubeha-apiserver-haproxy").stdout.strip() == "active"


@pytest.mark.parametrize("kind", ["ipvs", "haproxy"])
def test_a_master_killed_under_load(installed, nodes, masters, kind):
    node = next(n for n in nodes.values() if n.role == "worker" and n.has_ipvs == (kind == "ipvs"))
    victim = masters[1]
    result = drill(node, victim)
    print(f"\n{kind} on {node.name}, SIGKILL of {victim.name}'s apiserver: {json.dumps(result)}")
    labmod.wait_for(f"apiserver on {victim.name} back", lambda: labmod.readyz(victim.addr4), 120)
    assert result["requests"] >= 60
    if kind == "haproxy":
        assert result["failed"] == 0, result  # haproxy retries another server: no request fails
    else:
        assert result["last_failure_s"] is None or result["last_failure_s"] <= 1.5, result
