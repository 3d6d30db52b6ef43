"""Integration fixtures: run the collection's modules on lab nodes with ansible, against real kernels."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import lab as labmod
import pytest
from scenarios import run_playbook

REPO = Path(__file__).resolve().parents[2]
FILES = Path(__file__).resolve().parent / "files"
NODE_VENV = "/opt/kubeha-test/venv"
BACKEND_PORT = 18080
# The test virtual servers: link-local and ULA addresses nothing else in the lab uses.
VIP4, VIP6, VIP_PORT = "169.254.210.1", "fd88:210::1", 16443


def run_module(node: labmod.Node, module: str, args: dict, *, check: bool = False, diff: bool = False,
               python: str = NODE_VENV + "/bin/python") -> dict:  # fmt: skip
    """One task of `module` on one lab node through ansible-playbook; returns its registered result."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        play = [{
            "hosts": node.name, "gather_facts": False,
            "vars": {"ansible_python_interpreter": python},
            "tasks": [
                {"name": "module under test", module: args, "register": "result", "ignore_errors": True,
                 "check_mode": check, "diff": diff},
                {"name": "hand the result to the test", "delegate_to": "localhost",
                 "vars": {"ansible_python_interpreter": sys.executable},
                 "ansible.builtin.copy": {"content": "{{ result | to_json }}", "dest": str(out)}},
            ],
        }]  # fmt: skip
        (Path(tmp) / "play.yml").write_text(json.dumps(play))
        res = run_playbook(Path(tmp) / "play.yml", timeout=300)
        if not out.exists():
            raise AssertionError(f"no result from {module} on {node.name}: {res.stdout}\n{res.stderr}")
        return json.loads(out.read_text())


class Client:
    """vip_client.py running on a node over one SSH session: a test's hands on that node's sockets."""

    def __init__(self, node: labmod.Node):
        script = (FILES / "vip_client.py").read_text()
        self.proc = subprocess.Popen(
            labmod.ssh_argv(node, f"python3 -u -c {shlex.quote(script)}"),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    def __call__(self, line: str) -> dict:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="session")
def masters(nodes) -> list[labmod.Node]:
    return [n for n in nodes.values() if n.role == "control-plane"]


@pytest.fixture(scope="session")
def backends(masters):
    """hostname_server.py on every master, port 18080: real servers that say who answered."""
    script = (FILES / "hostname_server.py").read_text()
    unit = f"""[Unit]
Description=kubeha test backend (answers with the host name)
[Service]
ExecStart=/usr/bin/python3 /root/hostname_server.py {BACKEND_PORT}
"""
    for m in masters:
        labmod.ssh(m, f"cat > /root/hostname_server.py <<'EOF'\n{script}EOF\n")
        # A unit file, not systemd-run: transient unit names linger on these nspawn nodes after a stop.
        labmod.ssh(m, f"cat > /etc/systemd/system/kubeha-test-echo.service <<'EOF'\n{unit}EOF\n")
        labmod.ssh(m, "systemctl daemon-reload && systemctl restart kubeha-test-echo")
    yield masters
    for m in masters:
        labmod.ssh(m, "systemctl stop kubeha-test-echo", check=False)


def prepare_node(node: labmod.Node, debs: str, wheels: str) -> None:
    """Debian packages from the lab's site mirror and a virtualenv from its wheelhouse, as the roles do."""
    probe = " && ".join([f"command -v {d} >/dev/null" for d in debs.split() if d != "python3-venv"] or ["true"])
    imports = ", ".join(w.lower().replace("pyyaml", "yaml") for w in wheels.split())
    labmod.ssh(
        node,
        "set -e; export DEBIAN_FRONTEND=noninteractive; "
        f"{probe} && {NODE_VENV}/bin/python -c 'import {imports}' 2>/dev/null && exit 0; "
        f"apt-get update -qq && apt-get install -y -qq {debs} >/dev/null; "
        f"python3 -m venv {NODE_VENV} && {NODE_VENV}/bin/pip install -q {wheels}",
        timeout=600,
    )


@pytest.fixture(scope="session")
def ipvs_node(nodes) -> labmod.Node:
    """The qemu worker, ready for the modules: ipvsadm for checking, pyroute2 in the venv."""
    node = next(n for n in nodes.values() if n.has_ipvs)
    prepare_node(node, "ipvsadm python3-venv nftables", "pyroute2")
    return node


@pytest.fixture(scope="session")
def control_node(masters) -> labmod.Node:
    """A master with admin.conf, where the cluster-side modules run (PyYAML in the venv)."""
    prepare_node(masters[0], "python3-venv", "PyYAML")
    return masters[0]


# Module scope: its teardown must run while the lab is still up (the suite ends by taking the lab down).
@pytest.fixture(scope="module")
def vips_excluded(control_node, ipvs_node):
    """The test VIPs in kube-proxy's excludeCIDRs (else kube-proxy deletes their IPVS services), then removed."""
    args = {"cidrs": [VIP4, VIP6], "kubeconfig": "/etc/kubernetes/admin.conf"}
    result = run_module(control_node, "kubeha.apiserver.kubeproxy_exclude_cidr", args)
    assert not result.get("failed"), result
    labmod.restart_kube_proxy(ipvs_node)
    yield
    run_module(control_node, "kubeha.apiserver.kubeproxy_exclude_cidr", args | {"state": "absent"})
    labmod.restart_kube_proxy(ipvs_node)
