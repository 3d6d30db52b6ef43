"""`site.yml --check --diff` on a cluster the collection has never touched: it reports what would change and
changes nothing.

On the kubeadm flavour right after its acceptance (nothing of the collection's on any node). What the run must say:
every node lacks the collection's virtualenv (so the steps that run in it are not predicted, said per node and per
play), and the VIPs are missing from each master's apiserver certificate (predicted with the controller's
community.crypto). What it must not do: write anything under /etc, /opt, /usr, /var/lib/dpkg or the collection's
state directory of any node, add an address or an nftables rule, or write any object of the cluster it reads or
would edit (their resourceVersions). The one write allowed is the apt package index (/var/lib/apt/lists), which
the role refreshes in check mode too when a package is missing, so that apt can say whether it would install.

The emulated worker (w1) is left out of the run for time (each task costs it 6 to 13 s, docs/test-time.md): its
tasks in check mode are the ones w2 runs up to the virtualenv, where the play ends for a node without one.
The negative controls show that each witness sees a write: a file under /etc on a node, an annotation on a
ConfigMap.
"""

from __future__ import annotations

import re

import lab as labmod
import pytest
from scenarios import playbook

MARKER = "/run/kubeha-check-mode-marker"
# Where a run of site.yml writes (packages, units, configuration, the virtualenv, state); /var/lib/apt/lists is
# left out on purpose (see the module docstring).
WATCHED = "/etc /opt /usr /var/lib/dpkg /var/lib/kubeha-apiserver"
NODE_STATE = (
    f"find {WATCHED} -xdev -newer {MARKER} 2>/dev/null | sort; "
    "ip -o addr | awk '{print $2, $4}' | sort; "
    "if command -v nft >/dev/null; then nft list ruleset | sha256sum; else echo 'no nft'; fi; "
    "sysctl -n net.ipv4.ip_nonlocal_bind net.ipv6.ip_nonlocal_bind 2>&1"
)
# The objects the collection reads or would edit; their resourceVersions change on any write.
OBJECTS = [
    ("kube-system", "configmap/kube-proxy"),
    ("kube-system", "configmap/kubeadm-config"),
    ("kube-public", "configmap/cluster-info"),
    ("kube-system", "daemonset/kube-proxy"),
]


def node_state(node: labmod.Node) -> str:
    return labmod.ssh(node, NODE_STATE).stdout


def cluster_state() -> dict[str, str]:
    state = {}
    for namespace, name in OBJECTS:
        res = labmod.kubectl("-n", namespace, "get", name, "-o", "jsonpath={.metadata.resourceVersion}")
        state[name if namespace == "kube-system" else f"{namespace}/{name}"] = res.stdout.strip()
    rbac = labmod.kubectl("get", "clusterroles,clusterrolebindings,roles,rolebindings", "-A", "-o", "name")
    state["rbac of the collection"] = " ".join(sorted(r for r in rbac.stdout.split() if "kubeha" in r))
    return state


@pytest.fixture(scope="module")
def untouched(lab, nodes):
    """The nspawn nodes of a kubeadm lab the collection has not touched, each with a fresh time marker."""
    assert lab.get("flavour") == "kubeadm", "this suite runs on the kubeadm flavour (KUBEHA_LAB_FLAVOUR=kubeadm)"
    targets = [n for n in nodes.values() if n.kind == "nspawn"]
    for node in targets:
        res = labmod.ssh(node, "test -e /opt/kubeha-apiserver || test -e /etc/kubeha-apiserver", check=False)
        assert res.returncode != 0, f"{node.name} already has files of the collection: not a fresh cluster"
        labmod.ssh(node, f"touch {MARKER} && sleep 1")
    return targets


def test_site_check_on_a_fresh_cluster_reports_and_changes_nothing(untouched):
    nodes_before = {n.name: node_state(n) for n in untouched}
    cluster_before = cluster_state()

    run = playbook("site", "--check", "--diff", "--limit", ",".join(n.name for n in untouched))
    out = run.stdout
    assert run.returncode == 0, out[-4000:] + run.stderr[-2000:]

    recap = dict(re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)\s+unreachable=0\s+failed=0", out, re.M))
    assert set(recap) == {n.name for n in untouched}, out[-3000:]
    assert all(int(changed) > 0 for changed in recap.values()), recap
    for node in untouched:
        assert f"{node.name} lacks the virtualenv" in out, f"no word for {node.name}'s missing virtualenv"
    masters = [n.name for n in untouched if n.role == "control-plane"]
    for master in masters:
        assert f"Would issue a new certificate for {master}" in out, f"no prediction for {master}'s certificate"

    assert {n.name: node_state(n) for n in untouched} == nodes_before
    assert cluster_state() == cluster_before


def test_negative_control_each_witness_sees_a_write(untouched):
    node = next(n for n in untouched if n.role == "worker")
    before = node_state(node)
    labmod.ssh(node, "touch /etc/kubeha-check-mode-control")
    try:
        after = node_state(node)
    finally:
        labmod.ssh(node, "rm -f /etc/kubeha-check-mode-control")
    assert after != before and "/etc/kubeha-check-mode-control" in after

    cluster_before = cluster_state()
    labmod.kubectl("-n", "kube-public", "annotate", "configmap/cluster-info", "kubeha.test/control=1")
    try:
        cluster_after = cluster_state()
    finally:
        labmod.kubectl("-n", "kube-public", "annotate", "configmap/cluster-info", "kubeha.test/control-")
    assert cluster_after["kube-public/configmap/cluster-info"] != cluster_before["kube-public/configmap/cluster-info"]
