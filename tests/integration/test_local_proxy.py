"""playbooks/site.yml on the lab: the local proxy on every node, both modes, and a master killed under load.

Runs after the module suites (file order) and leaves the proxy installed for the lab's last checks.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import lab as labmod
import pytest
from conftest import FILES, REPO, collections_path

VIP4, PORT = "169.254.100.1", 6444


def site(*extra: str) -> subprocess.CompletedProcess:
    env = os.environ | {"ANSIBLE_COLLECTIONS_PATH": str(collections_path()), "ANSIBLE_HOST_KEY_CHECKING": "False"}
    playbook = str(Path(sys.executable).parent / "ansible-playbook")
    argv = [playbook, "-i", str(labmod.WORK / "inventory.yml"), str(REPO / "playbooks" / "site.yml"), *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=1800, env=env, check=False)


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


def drill(node, victim) -> dict:
    """SIGKILL the victim's apiserver while `node` opens a new connection through its VIP every 100 ms."""
    script = (FILES / "vip_load.py").read_text()
    offset = float(labmod.ssh(node, "date +%s.%N").stdout) - time.time()  # node clock minus host clock (approx.)
    load = subprocess.Popen(
        labmod.ssh_argv(node, f"python3 -c {shlex.quote(script)} {VIP4} {PORT} /etc/kubernetes/pki/ca.crt 12 0.1"),
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(3)
    killed_at = time.time() + offset
    labmod.ssh(victim, "kill -KILL $(systemctl show -p MainPID --value kube-apiserver)")
    out = load.communicate(timeout=60)[0]
    run = json.loads(out)
    failures = [t - killed_at for t, ok, _error in run["results"] if not ok]
    return {"requests": len(run["results"]), "failed": len(failures), "last_failure_s": max(failures, default=None),
            "errors": sorted({e for _t, ok, e in run["results"] if not ok})[:3]}  # fmt: skip


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
