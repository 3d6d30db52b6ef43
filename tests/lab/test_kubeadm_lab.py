"""Acceptance of the lab's kubeadm flavour: kubeadm's control plane as static pods, real kubelets, kube-proxy pods.

Run on a lab brought up with KUBEHA_LAB_FLAVOUR=kubeadm (make test-kubeadm-lab; make test runs it after the binary
flavour's suites). The lab fixture replaces a running lab of the other flavour.
"""

from __future__ import annotations

import json
from pathlib import Path

import lab as labmod
import pytest

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")


def kubectl_json(*args: str) -> dict:
    return json.loads(labmod.kubectl(*args, "-o", "json").stdout)


def conditions(obj: dict) -> dict[str, str]:
    return {c["type"]: c["status"] for c in obj["status"].get("conditions", [])}


@pytest.fixture(scope="module", autouse=True)
def kubeadm_lab(lab):
    assert lab.get("flavour") == "kubeadm", "this suite runs on the kubeadm flavour (KUBEHA_LAB_FLAVOUR=kubeadm)"
    return lab


def test_the_masters_run_the_control_plane_as_static_pods_made_by_kubeadm(nodes):
    masters = [n for n in nodes.values() if n.role == "control-plane"]
    assert len(masters) >= 3
    pods = {p["metadata"]["name"]: p for p in kubectl_json("get", "pods", "-n", "kube-system")["items"]}
    for m in masters:
        listed = labmod.ssh(m, "ls /etc/kubernetes/manifests").stdout.split()
        assert sorted(listed) == sorted(f"{c}.yaml" for c in COMPONENTS), m.name
        for component in COMPONENTS:
            pod = pods[f"{component}-{m.name}"]
            # A mirror pod: kubelet runs it from the manifest file, the API only shows it.
            assert pod["metadata"]["annotations"]["kubernetes.io/config.source"] == "file"
            assert conditions(pod).get("Ready") == "True", f"{component} on {m.name}"
        # No systemd unit of the binary flavour: kubelet is what runs the apiserver here.
        units = labmod.ssh(m, "systemctl list-unit-files 'kube-apiserver*' 'etcd*' --no-legend", check=False).stdout
        assert units.strip() == "", units
        # kubeadm's own record of the node it initialised or joined.
        kubeadm_files = "test -s /etc/kubernetes/admin.conf && test -s /var/lib/kubelet/config.yaml"
        assert labmod.ssh(m, kubeadm_files, check=False).returncode == 0, m.name


def test_every_node_is_ready_with_its_own_kubelet_and_containerd(nodes):
    version = labmod.versions()["K8S_VERSION"]
    objects = {n["metadata"]["name"]: n for n in kubectl_json("get", "nodes")["items"]}
    assert set(objects) == set(nodes)
    for name, node in nodes.items():
        obj = objects[name]
        assert conditions(obj).get("Ready") == "True", name
        info = obj["status"]["nodeInfo"]
        assert info["kubeletVersion"] == version
        assert info["containerRuntimeVersion"].startswith("containerd://")
        assert labmod.ssh(node, "systemctl is-active kubelet containerd").stdout.split() == ["active", "active"]
        # The qemu worker has its own kernel; nspawn nodes report the host's.
        kernel = labmod.ssh(node, "uname -r").stdout.strip()
        assert info["kernelVersion"] == kernel


def test_every_node_but_the_first_joined_by_tls_bootstrap_with_the_kubeadm_token(nodes, lab):
    csrs = kubectl_json("get", "csr")["items"]
    by_token = [
        c
        for c in csrs
        if c["spec"]["signerName"] == "kubernetes.io/kube-apiserver-client-kubelet"
        and c["spec"]["username"] == f"system:bootstrap:{lab['bootstrap_token_id']}"
        and any(x["type"] == "Approved" for x in c["status"].get("conditions", []))
    ]
    # kubeadm join: one approved CSR per joining kubelet, sent with the bootstrap token (cp1 was initialised).
    assert len(by_token) == len(nodes) - 1, [c["spec"]["username"] for c in csrs]
    for w in (n for n in nodes.values() if n.role == "worker"):
        # kubeadm join leaves the rotated client certificate and deletes the bootstrap kubeconfig.
        res = labmod.ssh(w, "test -s /var/lib/kubelet/pki/kubelet-client-current.pem && "
                            "test ! -e /etc/kubernetes/bootstrap-kubelet.conf", check=False)  # fmt: skip
        assert res.returncode == 0, w.name


def test_etcd_is_stacked_with_one_member_per_master(nodes):
    masters = [n for n in nodes.values() if n.role == "control-plane"]
    members = labmod.etcd_members(masters[0], "list", {})["members"]
    assert sorted(m["name"] for m in members) == sorted(m.name for m in masters)


def test_kube_proxy_runs_as_kubeadms_daemonset_in_the_mode_each_kernel_allows(nodes):
    ds = kubectl_json("get", "daemonset", "-n", "kube-system", "kube-proxy")
    assert ds["status"]["numberReady"] == ds["status"]["desiredNumberScheduled"] == len(nodes)
    pods = kubectl_json("get", "pods", "-n", "kube-system", "-l", "k8s-app=kube-proxy")["items"]
    assert sorted(p["spec"]["nodeName"] for p in pods) == sorted(nodes)
    config = labmod.kubectl("get", "cm", "-n", "kube-system", "kube-proxy", "-o", "jsonpath={.data.config\\.conf}")
    assert "\nmode: ipvs\n" in config.stdout  # kubeadm's one configuration; nodes without IPVS run iptables
    kubernetes_service = "0A600001:01BB"  # 10.96.0.1:443 as /proc/net/ip_vs lists it
    for node in nodes.values():
        ipvs = labmod.ssh(node, "cat /proc/net/ip_vs 2>/dev/null", check=False).stdout
        nat = labmod.ssh(node, "iptables-save -t nat 2>/dev/null | grep -c '^-A KUBE-SERVICES' || true").stdout
        if node.has_ipvs:
            assert kubernetes_service in ipvs, f"{node.name}: {ipvs}"
        else:
            assert kubernetes_service not in ipvs
            assert int(nat.strip() or 0) > 0, f"{node.name}: no KUBE-SERVICES rules"


def test_no_image_was_pulled(nodes, lab):
    imported = set(json.loads((Path(lab["container_images"]) / "images.json").read_text()).values())
    for node in nodes.values():
        refs = set(labmod.ssh(node, "ctr -n k8s.io images ls -q").stdout.split())
        named = {r for r in refs if not r.startswith("sha256:")}
        assert named and named <= imported, f"{node.name} has images the lab did not import: {named - imported}"
    events = kubectl_json("get", "events", "-A", "--field-selector", "reason=Pulling")["items"]
    assert events == []
