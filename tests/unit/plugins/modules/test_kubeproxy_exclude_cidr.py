# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The kubeproxy_exclude_cidr module's main() through AnsibleModule, with a fake apiserver client."""

from __future__ import annotations

import copy
import json
from typing import TYPE_CHECKING, Any

import pytest
from ansible_collections.kubeha.apiserver.plugins.module_utils import _daemonset_restart
from ansible_collections.kubeha.apiserver.plugins.module_utils._daemonset_restart import (
    RESTARTED_AT,
    RESTARTED_FOR,
    configmap_digest,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._kubeapi import (
    KubeAPIError,
    MissingLibraryError,
    error_for_status,
)
from ansible_collections.kubeha.apiserver.plugins.modules import kubeproxy_exclude_cidr

if TYPE_CHECKING:
    from .conftest import ModuleRunner

MODULE = kubeproxy_exclude_cidr  # what conftest.py's run_module runs

CM_PATH = "/api/v1/namespaces/kube-system/configmaps/kube-proxy"
DS_PATH = "/apis/apps/v1/namespaces/kube-system/daemonsets/kube-proxy"

# The ipvs part of kubeadm's config.conf, verbatim, between other kubeadm blocks.
CONFIG = """\
apiVersion: kubeproxy.config.k8s.io/v1alpha1
bindAddress: 0.0.0.0
clientConnection:
  acceptContentTypes: ""
  burst: 0
  contentType: ""
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 0
clusterCIDR: 10.244.0.0/16
conntrack:
  maxPerCore: null
  min: null
  tcpCloseWaitTimeout: null
  tcpEstablishedTimeout: null
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: ""
  strictARP: false
  syncPeriod: 0s
  tcpFinTimeout: 0s
  tcpTimeout: 0s
  udpTimeout: 0s
kind: KubeProxyConfiguration
mode: ipvs
portRange: \"\""""

KUBECONFIG_CONF = """\
apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt
    server: https://10.0.0.11:6443
  name: default"""

EXPECTED = CONFIG.replace("  excludeCIDRs: null\n", "  excludeCIDRs:\n  - 169.254.100.1/32\n  - fd00:100::1/128\n")
ARGS = {"cidrs": ["169.254.100.1", "fd00:100::1"]}


class FakeAPI:
    """The kube-proxy ConfigMap and DaemonSet in memory; records every call."""

    def __init__(self, config: str | None = CONFIG, daemonset: bool = True) -> None:
        self.configmap: dict[str, Any] | None = None
        if config is not None:
            self.configmap = {
                "kind": "ConfigMap",
                "metadata": {"name": "kube-proxy", "namespace": "kube-system", "resourceVersion": "411"},
                "data": {"config.conf": config, "kubeconfig.conf": KUBECONFIG_CONF},
            }
        self.daemonset: dict[str, Any] | None = None
        if daemonset:
            self.daemonset = {
                "metadata": {"name": "kube-proxy", "generation": 1},
                "spec": {"template": {"metadata": {}}, "updateStrategy": {"type": "RollingUpdate"}},
                "status": {
                    "observedGeneration": 1,
                    "desiredNumberScheduled": 2,
                    "updatedNumberScheduled": 2,
                    "numberAvailable": 2,
                },
            }
        self.calls: list[tuple[str, str]] = []
        self.errors: dict[tuple[str, str], KubeAPIError] = {}
        self.closed = False

    def _object(self, method: str, path: str) -> dict[str, Any]:
        self.calls.append((method, path))
        if (method, path) in self.errors:
            raise self.errors[(method, path)]
        found = {CM_PATH: self.configmap, DS_PATH: self.daemonset}.get(path)
        if found is None:
            kind = "configmaps" if "configmaps" in path else "daemonsets.apps"
            raise error_for_status(
                method, path, 404, json.dumps({"message": f'{kind} "kube-proxy" not found'}).encode()
            )
        return found

    def get(self, path: str) -> dict[str, Any]:
        return copy.deepcopy(self._object("GET", path))

    def put(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        current = self._object("PUT", path)
        assert body["metadata"]["resourceVersion"] == current["metadata"]["resourceVersion"]
        self.configmap = copy.deepcopy(body)
        self.configmap["metadata"]["resourceVersion"] = str(int(body["metadata"]["resourceVersion"]) + 1)
        return copy.deepcopy(self.configmap)

    def patch(self, path: str, body: dict[str, Any], content_type: str) -> dict[str, Any]:
        current = self._object("PATCH", path)
        marker = body.get("metadata", {}).get("annotations", {})
        current["metadata"].setdefault("annotations", {}).update(marker)
        if "spec" in body:  # a template change: a new generation of pods
            annotations = body["spec"]["template"]["metadata"]["annotations"]
            current["spec"]["template"]["metadata"].setdefault("annotations", {}).update(annotations)
            current["metadata"]["generation"] += 1
            current["status"]["observedGeneration"] = current["metadata"]["generation"]
        return copy.deepcopy(current)

    def close(self) -> None:
        self.closed = True

    def methods(self) -> list[str]:
        return [method for method, _path in self.calls]


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    env: dict[str, Any] = {"fake": FakeAPI(), "kubeconfigs": []}

    def make_client(kubeconfig: str, allow_insecure: bool = False) -> FakeAPI:
        env["kubeconfigs"].append(kubeconfig)
        return env["fake"]

    monkeypatch.setattr(kubeproxy_exclude_cidr, "make_client", make_client)
    return env


def stored(api: dict[str, Any]) -> str:
    return api["fake"].configmap["data"]["config.conf"]


def test_adds_the_cidrs(api: dict[str, Any], run_module: ModuleRunner) -> None:
    result = run_module(ARGS)
    assert result["changed"] is True
    assert result["exclude_cidrs"] == ["169.254.100.1/32", "fd00:100::1/128"]
    assert (result["mode"], result["mode_is_ipvs"], result["restarted"]) == ("ipvs", True, False)
    assert stored(api) == EXPECTED
    assert api["fake"].configmap["data"]["kubeconfig.conf"] == KUBECONFIG_CONF
    assert api["fake"].methods() == ["GET", "PUT"]
    assert api["fake"].closed is True
    assert api["kubeconfigs"] == ["/etc/kubernetes/admin.conf"]
    assert "warnings" not in result
    assert "diff" not in result


def test_second_run_is_unchanged(api: dict[str, Any], run_module: ModuleRunner) -> None:
    run_module(ARGS)
    api["fake"].calls.clear()
    result = run_module({"cidrs": ["FD00:100:0::1/128", "169.254.100.1/32"]})
    assert result["changed"] is False
    assert result["exclude_cidrs"] == ["169.254.100.1/32", "fd00:100::1/128"]
    assert api["fake"].methods() == ["GET"]


def test_check_mode_writes_nothing_and_diff_shows_the_text(api: dict[str, Any], run_module: ModuleRunner) -> None:
    result = run_module(ARGS, check_mode=True, diff=True)
    assert result["changed"] is True
    assert api["fake"].methods() == ["GET"]
    assert stored(api) == CONFIG
    assert result["exclude_cidrs"] == ["169.254.100.1/32", "fd00:100::1/128"]
    assert result["diff"] == {
        "before": CONFIG,
        "after": EXPECTED,
        "before_header": "ConfigMap kube-system/kube-proxy, key config.conf",
        "after_header": "ConfigMap kube-system/kube-proxy, key config.conf",
    }


def test_diff_when_unchanged(api: dict[str, Any], run_module: ModuleRunner) -> None:
    api["fake"] = FakeAPI(EXPECTED)
    result = run_module(ARGS, diff=True)
    assert result["changed"] is False
    assert result["diff"]["before"] == result["diff"]["after"] == EXPECTED


def test_absent_removes_back_to_null(api: dict[str, Any], run_module: ModuleRunner) -> None:
    api["fake"] = FakeAPI(EXPECTED)
    result = run_module({**ARGS, "state": "absent"})
    assert result["changed"] is True
    assert result["exclude_cidrs"] == []
    assert stored(api) == CONFIG


def test_invalid_cidr_fails_before_any_client_call(api: dict[str, Any], run_module: ModuleRunner) -> None:
    result = run_module({"cidrs": ["169.254.100.1", "10.0.0.1/24"]})
    assert result["failed"] is True
    assert result["msg"].startswith("10.0.0.1/24 has host bits set")
    assert api["kubeconfigs"] == []
    assert api["fake"].calls == []


def test_configmap_missing_explains_non_kubeadm_clusters(api: dict[str, Any], run_module: ModuleRunner) -> None:
    api["fake"] = FakeAPI(config=None)
    result = run_module(ARGS)
    assert result["failed"] is True
    msg = result["msg"]
    assert msg.startswith("ConfigMap kube-system/kube-proxy was not found (not found: cannot get configmaps")
    assert "does not seem to be managed by kubeadm" in msg
    assert "--ipvs-exclude-cidrs=169.254.100.1/32,fd00:100::1/128" in msg
    assert api["fake"].methods() == ["GET"]


def test_key_missing(api: dict[str, Any], run_module: ModuleRunner) -> None:
    result = run_module({**ARGS, "key": "proxy.yaml"})
    assert result["failed"] is True
    assert (
        result["msg"] == "ConfigMap kube-system/kube-proxy has no key 'proxy.yaml' (keys: config.conf, kubeconfig.conf)"
    )
    assert api["fake"].methods() == ["GET"]


def test_malformed_yaml(api: dict[str, Any], run_module: ModuleRunner) -> None:
    api["fake"] = FakeAPI("mode: [ipvs\n")
    result = run_module(ARGS)
    assert result["failed"] is True
    assert result["msg"].startswith(
        "ConfigMap kube-system/kube-proxy, key config.conf: the configuration is not valid YAML"
    )
    assert api["fake"].methods() == ["GET"]


def test_forbidden_names_verb_and_resource(api: dict[str, Any], run_module: ModuleRunner) -> None:
    message = (
        'configmaps "kube-proxy" is forbidden: User "system:node:cp1" cannot update resource "configmaps" '
        'in API group "" in the namespace "kube-system"'
    )
    api["fake"].errors[("PUT", CM_PATH)] = error_for_status(
        "PUT", CM_PATH, 403, json.dumps({"message": message}).encode()
    )
    result = run_module(ARGS)
    assert result["failed"] is True
    assert result["msg"] == f"forbidden: cannot update configmaps kube-system/kube-proxy: {message}"
    assert stored(api) == CONFIG


def test_conflict_is_retried(api: dict[str, Any], run_module: ModuleRunner) -> None:
    fake = api["fake"]
    original_put = fake.put
    conflicts = [error_for_status("PUT", CM_PATH, 409, b'{"message": "the object has been modified"}')]

    def put(path: str, body: dict[str, Any]) -> dict[str, Any]:
        if conflicts:
            fake.calls.append(("PUT", path))
            raise conflicts.pop()
        return original_put(path, body)

    fake.put = put
    result = run_module(ARGS)
    assert result["changed"] is True
    assert fake.methods() == ["GET", "PUT", "GET", "PUT"]
    assert stored(api) == EXPECTED


def test_restart_only_when_changed(api: dict[str, Any], run_module: ModuleRunner) -> None:
    result = run_module({**ARGS, "restart": True})
    assert result["restarted"] is True
    # The DaemonSet had no marker: what its pods run is recorded before the ConfigMap changes, then the restart
    # records the new ConfigMap in the same patch that rolls the pods.
    assert api["fake"].methods() == ["GET", "GET", "PATCH", "GET", "PUT", "PATCH"]
    assert RESTARTED_AT in api["fake"].daemonset["spec"]["template"]["metadata"]["annotations"]
    assert api["fake"].daemonset["metadata"]["annotations"][RESTARTED_FOR] == configmap_digest(api["fake"].configmap)

    api["fake"].calls.clear()
    result = run_module({**ARGS, "restart": True})
    assert (result["changed"], result["restarted"]) == (False, False)
    assert "PATCH" not in api["fake"].methods()


def test_check_mode_does_not_restart(api: dict[str, Any], run_module: ModuleRunner) -> None:
    result = run_module({**ARGS, "restart": True, "wait": True}, check_mode=True)
    assert (result["changed"], result["restarted"]) == (True, True)  # what would happen
    assert api["fake"].methods() == ["GET", "GET"]
    assert "annotations" not in api["fake"].daemonset["spec"]["template"]["metadata"]


def test_restart_and_wait(api: dict[str, Any], run_module: ModuleRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_daemonset_restart.time, "sleep", lambda seconds: None)
    result = run_module({**ARGS, "restart": True, "wait": True, "wait_timeout": 5})
    assert result["restarted"] is True
    assert api["fake"].methods() == ["GET", "GET", "PATCH", "GET", "PUT", "PATCH", "GET"]


def test_restart_with_missing_daemonset_writes_nothing(api: dict[str, Any], run_module: ModuleRunner) -> None:
    api["fake"] = FakeAPI(daemonset=False)
    result = run_module({**ARGS, "restart": True})
    assert result["failed"] is True
    assert result["msg"].startswith("DaemonSet kube-system/kube-proxy was not found")
    assert "nothing was changed" in result["msg"]
    assert api["fake"].methods() == ["GET"]
    assert stored(api) == CONFIG


def restarted_before(api: dict[str, Any]) -> None:
    """As an earlier run leaves the DaemonSet: its pods restarted for the ConfigMap as it is now."""
    marker = {RESTARTED_FOR: configmap_digest(api["fake"].configmap)}
    api["fake"].daemonset["metadata"]["annotations"] = marker


def test_failed_restart_reports_the_change(api: dict[str, Any], run_module: ModuleRunner) -> None:
    restarted_before(api)
    api["fake"].errors[("PATCH", DS_PATH)] = error_for_status("PATCH", DS_PATH, 403, b'{"message": "no"}')
    result = run_module({**ARGS, "restart": True})
    assert result["failed"] is True
    assert result["changed"] is True
    assert result["restarted"] is False
    assert result["msg"] == (
        "ConfigMap kube-system/kube-proxy, key config.conf was updated, but restarting kube-proxy failed: "
        "forbidden: cannot patch daemonsets.apps kube-system/kube-proxy: no"
    )
    assert stored(api) == EXPECTED


def test_warns_when_not_ipvs(api: dict[str, Any], run_module: ModuleRunner) -> None:
    api["fake"] = FakeAPI(CONFIG.replace("mode: ipvs", 'mode: ""'))
    result = run_module(ARGS)
    assert result["changed"] is True
    assert (result["mode"], result["mode_is_ipvs"]) == ("", False)
    assert len(result["warnings"]) == 1
    warning = json.dumps(result["warnings"][0])  # ansible-core 2.19 returns structured warnings
    assert "according to ConfigMap kube-system/kube-proxy, key config.conf, not ipvs" in warning
    assert "harmless there but not needed" in warning


def test_other_objects_and_kubeconfig(api: dict[str, Any], run_module: ModuleRunner) -> None:
    result = run_module({**ARGS, "namespace": "proxy", "configmap": "kp", "kubeconfig": "/etc/kubeha/other.conf"})
    assert result["failed"] is True
    assert api["fake"].calls == [("GET", "/api/v1/namespaces/proxy/configmaps/kp")]
    assert api["kubeconfigs"] == ["/etc/kubeha/other.conf"]
    assert "ConfigMap proxy/kp was not found" in result["msg"]


def test_missing_pyyaml(monkeypatch: pytest.MonkeyPatch, run_module: ModuleRunner) -> None:
    def no_yaml(kubeconfig: str, allow_insecure: bool = False) -> None:
        raise MissingLibraryError("PyYAML", "Traceback: ModuleNotFoundError: No module named 'yaml'")

    monkeypatch.setattr(kubeproxy_exclude_cidr, "make_client", no_yaml)
    result = run_module(ARGS)
    assert result["failed"] is True
    assert "PyYAML" in result["msg"]
    assert "Failed to import the required Python library" in result["msg"]


def test_real_make_client_reads_the_kubeconfig(monkeypatch: pytest.MonkeyPatch, run_module: ModuleRunner) -> None:
    result = run_module({**ARGS, "kubeconfig": "/nonexistent/admin.conf"})
    assert result["failed"] is True
    assert result["msg"].startswith("cannot read the kubeconfig /nonexistent/admin.conf")


def test_a_restart_that_an_earlier_run_left_undone_happens_on_the_next_run(
    api: dict[str, Any], run_module: ModuleRunner
) -> None:
    # The first run changes the ConfigMap and dies before the restart (its PATCH refused): the marker it recorded
    # first says the pods run the old ConfigMap, so the next run restarts, though it changes nothing itself.
    api["fake"].errors[("PATCH", DS_PATH)] = error_for_status("PATCH", DS_PATH, 503, b'{"message": "down"}')
    api["fake"].daemonset["metadata"]["annotations"] = {}
    first = run_module({**ARGS, "restart": True})
    assert first["failed"] is True and "nothing was changed" in first["msg"] and stored(api) == CONFIG
    del api["fake"].errors[("PATCH", DS_PATH)]
    fail_restart_once(api)
    second = run_module({**ARGS, "restart": True})
    assert (second.get("failed"), second["changed"], second["restarted"]) == (True, True, False)
    assert stored(api) == EXPECTED
    check = run_module({**ARGS, "restart": True}, check_mode=True)
    assert (check["changed"], check["restarted"]) == (True, True)  # predicted: a restart is a change
    third = run_module({**ARGS, "restart": True})
    assert (third["changed"], third["restarted"]) == (True, True)
    assert RESTARTED_AT in api["fake"].daemonset["spec"]["template"]["metadata"]["annotations"]
    fourth = run_module({**ARGS, "restart": True})
    assert (fourth["changed"], fourth["restarted"]) == (False, False)  # done once, not at every run


def fail_restart_once(api: dict[str, Any]) -> None:
    """The next template PATCH (the restart) fails once; marker-only patches go through."""
    fake, patch = api["fake"], api["fake"].patch

    def failing(path: str, body: dict[str, Any], content_type: str) -> dict[str, Any]:
        if "spec" in body and not getattr(fake, "failed_once", False):
            fake.failed_once = True
            fake.calls.append(("PATCH", path))
            raise error_for_status("PATCH", path, 503, b'{"message": "the controller died here"}')
        return patch(path, body, content_type)

    fake.patch = failing


def test_a_configmap_changed_by_hand_with_no_marker_is_not_a_restart(
    api: dict[str, Any], run_module: ModuleRunner
) -> None:
    """Negative control: a cluster the collection never restarted has no marker; a run that changes nothing does not
    restart kube-proxy (the pods are taken to run the ConfigMap as it is), with an up-to-date marker neither."""
    api["fake"].configmap["data"]["config.conf"] = EXPECTED
    assert run_module({**ARGS, "restart": True})["restarted"] is False
    assert "PATCH" not in api["fake"].methods()
    restarted_before(api)
    assert run_module({**ARGS, "restart": True})["restarted"] is False
