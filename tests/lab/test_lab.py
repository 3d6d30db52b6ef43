"""Acceptance of the lab itself: real apiservers, etcd, kubeadm's objects, IPVS on the qemu worker, SSH."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lab as labmod
import pytest

WORK = labmod.WORK


def hub_curl(*args: str) -> subprocess.CompletedProcess:
    return labmod.sh("curl", "-sS", "--max-time", "5", *args, ns=labmod.HUB_NS, check=False)


def test_every_apiserver_is_ready_with_its_certificate_verified(nodes):
    masters = [n for n in nodes.values() if n.role == "control-plane"]
    assert len(masters) >= 3
    for m in masters:
        res = hub_curl("--cacert", str(WORK / "ca.crt"), f"https://{m.addr4}:6443/readyz")
        assert (res.returncode, res.stdout) == (0, "ok"), f"{m.name}: {res.stderr}"


def test_a_wrong_ca_is_refused(nodes):
    # Negative control for the test above: the same request against another CA must fail verification.
    wrong_ca = labmod.seed_dir(nodes["cp1"]) / "rootfs/etc/kubernetes/pki/etcd/ca.crt"
    res = hub_curl("--cacert", str(wrong_ca), f"https://{nodes['cp1'].addr4}:6443/readyz")
    assert res.returncode == 60, res.stderr  # curl: peer certificate cannot be authenticated


def test_etcd_has_three_healthy_members(nodes):
    masters = [n for n in nodes.values() if n.role == "control-plane"]
    pki = labmod.seed_dir(masters[0]) / "rootfs/etc/kubernetes/pki/etcd"
    tls = [
        "--cacert",
        str(pki / "ca.crt"),
        "--cert",
        str(pki / "healthcheck-client.crt"),
        "--key",
        str(pki / "healthcheck-client.key"),
    ]
    for m in masters:
        res = hub_curl(*tls, f"https://{m.addr4}:2379/health")
        assert json.loads(res.stdout)["health"] == "true", f"{m.name}: {res.stdout} {res.stderr}"
    res = hub_curl(*tls, "-X", "POST", "-d", "{}", f"https://{masters[0].addr4}:2379/v3/cluster/member/list")
    members = json.loads(res.stdout)["members"]
    assert sorted(m["name"] for m in members) == sorted(m.name for m in masters)


@pytest.mark.parametrize(
    "namespace,kind,name",
    [
        ("kube-public", "configmap", "cluster-info"),
        ("kube-system", "configmap", "kube-proxy"),
        ("kube-system", "configmap", "kubeadm-config"),
        ("kube-system", "daemonset", "kube-proxy"),
    ],
)
def test_kubeadm_objects_exist(lab, namespace, kind, name):
    res = labmod.kubectl("get", "-n", namespace, kind, name, "-o", "json")
    assert json.loads(res.stdout)["metadata"]["name"] == name


def test_cluster_info_is_signed_by_the_bootstrap_signer(lab):
    # kube-controller-manager's bootstrapsigner adds a jws-kubeconfig-<token id> key for the lab's token.
    def signed():
        data = json.loads(labmod.kubectl("get", "-n", "kube-public", "cm", "cluster-info", "-o", "json").stdout)
        return [k for k in data["data"] if k.startswith("jws-kubeconfig-")]

    assert labmod.wait_for("a JWS signature in cluster-info", signed, 60)


def test_kubelet_conf_points_at_a_master_as_kubeadm_leaves_it(nodes):
    # Workers: the controlPlaneEndpoint (cp1 here, no load balancer). Masters: their own apiserver, as
    # kubeadm >= 1.31 writes it (ControlPlaneKubeletLocalMode).
    cp1 = nodes["cp1"]
    for node in nodes.values():
        text = labmod.ssh(node, "cat /etc/kubernetes/kubelet.conf").stdout
        server = node.addr4 if node.role == "control-plane" else cp1.addr4
        assert f"server: https://{server}:6443" in text, node.name
        assert f"system:node:{node.name}" in text, node.name


def test_qemu_worker_has_kernel_ipvs_and_kube_proxy_programs_it(nodes):
    ipvs_nodes = [n for n in nodes.values() if n.has_ipvs]
    assert ipvs_nodes
    for node in ipvs_nodes:
        labmod.ssh(node, "modprobe ip_vs")

        def kubernetes_service_programmed(node=node):
            table = labmod.ssh(node, "cat /proc/net/ip_vs").stdout
            # TCP 10.96.0.1:443 (the `kubernetes` service) with every master as a real server.
            return "0A600001:01BB" in table and table.count(":192B") >= 3 and table

        table = labmod.wait_for(f"kube-proxy's IPVS services on {node.name}", kubernetes_service_programmed, 120)
        assert "0A58000B:192B" in table  # cp1 10.88.0.11:6443


def test_userspace_worker_runs_kube_proxy_without_ipvs(nodes):
    others = [n for n in nodes.values() if n.role == "worker" and not n.has_ipvs]
    assert others
    for node in others:
        assert labmod.ssh(node, "test -e /proc/net/ip_vs", check=False).returncode != 0
        assert labmod.ssh(node, "systemctl is-active kube-proxy").stdout.strip() == "active"


def test_ansible_reaches_every_node(lab, nodes):
    res = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible"),
            "all",
            "-i",
            str(WORK / "inventory.yml"),
            "-m",
            "ansible.builtin.ping",
            "-o",
        ],
        capture_output=True,
        check=False,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    for name in nodes:
        assert f"{name} | SUCCESS" in res.stdout


def test_apiservers_and_nodes_run_the_pinned_versions(nodes):
    # The release the lab was built for (KUBEHA_K8S_VERSION for the previous minor), asked of each apiserver.
    want = labmod.versions()["K8S_VERSION"]
    for m in (n for n in nodes.values() if n.role == "control-plane"):
        res = hub_curl("--cacert", str(WORK / "ca.crt"), f"https://{m.addr4}:6443/version")
        assert res.returncode == 0, f"{m.name}: {res.stderr}"
        assert json.loads(res.stdout)["gitVersion"] == want, m.name


def test_both_supported_debian_releases_run_in_the_lab(nodes):
    seen = {}
    for node in nodes.values():
        codename = labmod.ssh(node, ". /etc/os-release && echo $VERSION_CODENAME").stdout.strip()
        assert codename == node.suite, f"{node.name} runs {codename}, the lab meant {node.suite}"
        seen.setdefault(codename, []).append(node.name)
    v = labmod.versions()
    assert set(seen) == {v["DEBIAN_SUITE"], v["DEBIAN_SUITE_NEWER"]}, seen
