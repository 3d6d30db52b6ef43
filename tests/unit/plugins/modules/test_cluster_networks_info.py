# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""cluster_networks_info: each source of the cluster's ranges, with a fake apiserver and a /proc tree of files.

The lab reads the real ones (tests/integration/test_kubeadm_join_through_vip.py, kubeadm's manifests, kubeadm-config
and the Nodes; site.yml on the binary flavour, the processes' flags)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from ansible_collections.kubeha.apiserver.plugins.module_utils import _cluster_networks
from ansible_collections.kubeha.apiserver.plugins.module_utils._kubeapi import KubeAPIError, error_for_status
from ansible_collections.kubeha.apiserver.plugins.modules import cluster_networks_info

if TYPE_CHECKING:
    pass

MODULE = cluster_networks_info  # what conftest.py's run_module runs

KUBEADM_CONFIG = "/api/v1/namespaces/kube-system/configmaps/kubeadm-config"
CLUSTER_CONFIGURATION = """\
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
networking:
  dnsDomain: cluster.local
  serviceSubnet: 10.96.0.0/16,fd00:10:96::/112
  podSubnet: 10.244.0.0/16
"""
MANIFEST = """\
apiVersion: v1
kind: Pod
spec:
  containers:
  - name: kube-controller-manager
    command:
    - kube-controller-manager
    - --allocate-node-cidrs=true
    - --cluster-cidr=10.244.0.0/16,fd00:10:244::/56
    - --service-cluster-ip-range=10.96.0.0/16,fd00:10:96::/112
"""


class FakeAPI:
    def __init__(self, objects: dict[str, Any]) -> None:
        self.objects = objects
        self.calls: list[str] = []

    def get(self, path: str) -> dict[str, Any]:
        self.calls.append(path)
        if path not in self.objects:
            raise error_for_status("GET", path, 404, b"", "Not Found")
        answer = self.objects[path]
        if isinstance(answer, KubeAPIError):
            raise answer
        return answer


def nodes(*pod_cidrs: list[str]) -> dict[str, Any]:
    return {"items": [{"metadata": {"name": f"n{i}"}, "spec": {"podCIDRs": c}} for i, c in enumerate(pod_cidrs)]}


def proc_tree(root: Path, processes: dict[int, list[str]]) -> str:
    for pid, argv in processes.items():
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (root / "self").mkdir(exist_ok=True)
    return str(root)


@pytest.fixture
def empty_dirs(tmp_path: Path) -> tuple[str, str]:
    (tmp_path / "proc").mkdir()
    (tmp_path / "manifests").mkdir()
    return str(tmp_path / "proc"), str(tmp_path / "manifests")


def test_kubeadm_config_and_the_nodes(empty_dirs):
    proc, manifests = empty_dirs
    api = FakeAPI({
        KUBEADM_CONFIG: {"data": {"ClusterConfiguration": CLUSTER_CONFIGURATION}},
        "/api/v1/nodes": nodes(["10.244.1.0/24"], ["10.244.2.0/24", "fd00:10:244:2::/64"]),
    })  # fmt: skip
    result = _cluster_networks.read(api, manifests, proc).result()
    # A Node's range inside podSubnet is left out of `ranges`; the IPv6 one is inside nothing read: kept.
    assert result["ranges"] == ["10.96.0.0/16", "fd00:10:96::/112", "10.244.0.0/16", "fd00:10:244:2::/64"]
    assert result["service_ranges"] == ["10.96.0.0/16", "fd00:10:96::/112"]
    assert result["pod_ranges"] == ["10.244.0.0/16", "10.244.1.0/24", "10.244.2.0/24", "fd00:10:244:2::/64"]
    assert {"range": "10.244.2.0/24", "kind": "pod", "source": "Node n1 spec.podCIDRs"} in result["found"]
    assert {"range": "10.96.0.0/16", "kind": "service",
            "source": "ConfigMap kube-system/kubeadm-config networking.serviceSubnet"} in result["found"]  # fmt: skip


def test_flags_of_the_running_processes_in_both_spellings(tmp_path, empty_dirs):
    _proc, manifests = empty_dirs
    proc = proc_tree(tmp_path / "p", {
        10: ["/usr/local/bin/kube-apiserver", "--secure-port=6443", "--service-cluster-ip-range", "10.32.0.0/24"],
        11: ["kube-controller-manager", "--cluster-cidr=10.200.0.0/16", "--v=2"],
        12: ["/usr/bin/python3", "--service-cluster-ip-range=192.0.2.0/24"],  # not a control-plane program
        13: ["kube-apiserver", "--service-cluster-ip-range"],  # a flag without a value: nothing
    })  # fmt: skip
    api = FakeAPI({"/api/v1/nodes": nodes()})  # a binary install: no kubeadm-config (404), no manifests
    reading = _cluster_networks.read(api, manifests, proc)
    assert reading.result()["ranges"] == ["10.32.0.0/24", "10.200.0.0/16"]
    assert [f.source for f in reading.found] == [
        "kube-apiserver --service-cluster-ip-range (process 10)",
        "kube-controller-manager --cluster-cidr (process 11)",
    ]
    assert reading.warnings == []


def test_kubeadms_static_pod_manifests(tmp_path, empty_dirs):
    proc, _manifests = empty_dirs
    manifests = tmp_path / "m"
    manifests.mkdir()
    (manifests / "kube-controller-manager.yaml").write_text(MANIFEST)
    (manifests / "kube-apiserver.yaml").write_text("{not yaml: [")
    api = FakeAPI({"/api/v1/nodes": nodes()})
    reading = _cluster_networks.read(api, str(manifests), proc)
    assert reading.result()["ranges"] == ["10.244.0.0/16", "fd00:10:244::/56", "10.96.0.0/16", "fd00:10:96::/112"]
    source = f"kube-controller-manager --cluster-cidr ({manifests}/kube-controller-manager.yaml)"
    assert reading.found[0].source == source
    assert len(reading.warnings) == 1 and "kube-apiserver.yaml" in reading.warnings[0]


def test_a_value_that_is_not_a_cidr_is_left_out_with_a_warning_naming_it(empty_dirs):
    proc, manifests = empty_dirs
    config = "networking:\n  serviceSubnet: 10.96.0.0/33\n  podSubnet: 10.244.0.0/16\n"
    api = FakeAPI({KUBEADM_CONFIG: {"data": {"ClusterConfiguration": config}}, "/api/v1/nodes": nodes()})
    reading = _cluster_networks.read(api, manifests, proc)
    assert reading.result()["ranges"] == ["10.244.0.0/16"]
    assert reading.warnings == [
        "ConfigMap kube-system/kubeadm-config networking.serviceSubnet: '10.96.0.0/33' is not a CIDR, left out"
    ]


def test_an_apiserver_that_cannot_be_asked_is_an_error(empty_dirs):
    proc, manifests = empty_dirs
    api = FakeAPI({KUBEADM_CONFIG: error_for_status("GET", KUBEADM_CONFIG, 403, b"", "Forbidden")})
    with pytest.raises(KubeAPIError, match="forbidden"):
        _cluster_networks.read(api, manifests, proc)


def serving(monkeypatch, api: FakeAPI) -> None:
    """The module's client is ``api``."""
    monkeypatch.setattr(cluster_networks_info, "make_client", lambda *_a, **_k: api)


def test_the_module_reports_the_ranges_and_changes_nothing(run_module, monkeypatch, tmp_path):
    manifests = tmp_path / "m"
    manifests.mkdir()
    (manifests / "kube-controller-manager.yaml").write_text(MANIFEST)
    api = FakeAPI({KUBEADM_CONFIG: {"data": {"ClusterConfiguration": CLUSTER_CONFIGURATION}},
                   "/api/v1/nodes": nodes(["10.244.7.0/24"])})  # fmt: skip
    serving(monkeypatch, api)
    result = run_module({"manifest_dir": str(manifests)}, check_mode=True)
    assert result["changed"] is False and not result.get("failed")
    assert "10.244.0.0/16" in result["ranges"] and "10.244.7.0/24" not in result["ranges"]
    assert "fd00:10:244::/56" in result["pod_ranges"]


def test_the_module_fails_naming_what_it_could_not_read(run_module, monkeypatch, tmp_path):
    api = FakeAPI({KUBEADM_CONFIG: KubeAPIError("cannot reach the apiserver at https://192.0.2.1:6443: refused")})
    serving(monkeypatch, api)
    result = run_module({"manifest_dir": str(tmp_path)})
    assert result["failed"] is True
    assert result["msg"] == (
        "cannot read the cluster's service and pod ranges: "
        "cannot reach the apiserver at https://192.0.2.1:6443: refused"
    )
