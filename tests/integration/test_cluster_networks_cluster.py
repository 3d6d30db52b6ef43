"""cluster_networks_info against the lab's real cluster: every source of its service and pod ranges, either flavour.

Both flavours: kubeadm-config's networking (the binary flavour uploads one too), every Node's podCIDRs (the
controller-manager allocates them), and the flags of the running kube-apiserver and kube-controller-manager (systemd
units on the binary flavour, static pods' processes on the kubeadm one); on the kubeadm flavour also kubeadm's
static-pod manifests. The ranges found are the lab's own (tests/lab/lab_core.py: SERVICE_CIDRS, POD_CIDRS), each Node's
podCIDR folded into the pod range, and nothing is changed. site.yml reads them on every run (its preflight refuses a
VIP inside them: tests/unit/playbooks/test_cluster_ranges_preflight.py).
"""

from __future__ import annotations

import lab as labmod
from conftest import run_module

MODULE = "kubeha.apiserver.cluster_networks_info"
MANIFEST = "/etc/kubernetes/manifests/kube-apiserver.yaml"


def test_the_cluster_ranges_are_read_from_every_source(lab, control_node, nodes):
    result = run_module(control_node, MODULE, {}, check=True)
    assert not result.get("failed") and result["changed"] is False, result
    services, pods = labmod.SERVICE_CIDRS.split(","), labmod.POD_CIDRS.split(",")
    assert result["ranges"] == services + pods, result
    assert result["service_ranges"] == services and result["pod_ranges"][:2] == pods, result
    sources = {f["source"] for f in result["found"]}
    assert "ConfigMap kube-system/kubeadm-config networking.serviceSubnet" in sources, sources
    assert "ConfigMap kube-system/kubeadm-config networking.podSubnet" in sources, sources
    assert {f"Node {name} spec.podCIDRs" for name in nodes} <= sources, sources
    for flag in ("kube-apiserver --service-cluster-ip-range", "kube-controller-manager --cluster-cidr",
                 "kube-controller-manager --service-cluster-ip-range"):  # fmt: skip
        assert any(s.startswith(f"{flag} (process ") for s in sources), (flag, sources)
    manifest = f"kube-apiserver --service-cluster-ip-range ({MANIFEST})"
    assert (manifest in sources) == (lab.get("flavour") == "kubeadm"), sources
    assert not result.get("warnings"), result
