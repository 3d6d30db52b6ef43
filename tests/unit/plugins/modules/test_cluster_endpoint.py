# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The cluster_endpoint module's main() through AnsibleModule, with a fake apiserver (and bootstrapsigner)."""

from __future__ import annotations

import base64
import copy
import json
from typing import TYPE_CHECKING, Any

import pytest
from ansible_collections.kubeha.apiserver.plugins.module_utils import _bootstrap_signatures as sig
from ansible_collections.kubeha.apiserver.plugins.module_utils._daemonset_restart import RESTARTED_FOR, configmap_digest
from ansible_collections.kubeha.apiserver.plugins.module_utils._kubeapi import (
    KubeAPIError,
    MissingLibraryError,
    error_for_status,
)
from ansible_collections.kubeha.apiserver.plugins.modules import cluster_endpoint

if TYPE_CHECKING:
    from .conftest import ModuleRunner

MODULE = cluster_endpoint  # what conftest.py's run_module runs

OLD, VIP = "https://10.0.0.11:6443", "https://169.254.100.1:6444"
ANNOTATION = "kubeha.apiserver/original-server"
CI_PATH = "/api/v1/namespaces/kube-public/configmaps/cluster-info"
KC_PATH = "/api/v1/namespaces/kube-system/configmaps/kubeadm-config"
KP_PATH = "/api/v1/namespaces/kube-system/configmaps/kube-proxy"
DS_PATH = "/apis/apps/v1/namespaces/kube-system/daemonsets/kube-proxy"
TOKEN_ID, TOKEN_SECRET = "abcdef", "0123456789abcdef"

CLUSTER_INFO = f"""\
apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: LS0tLS1CRUdJTg==
    server: {OLD}
  name: ""
contexts: null
current-context: ""
kind: Config
users: null
"""
CLUSTER_CONFIGURATION = """\
apiServer:
  certSANs:
  - 10.0.0.11
  - cp1
apiVersion: kubeadm.k8s.io/v1beta4
controlPlaneEndpoint: 10.0.0.11:6443
kind: ClusterConfiguration
kubernetesVersion: v1.36.3
"""
CONFIG_CONF = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: ipvs"
KUBE_PROXY = f"""\
apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt
    server: {OLD}
  name: default
contexts:
- context:
    cluster: default
    namespace: default
    user: default
  name: default
current-context: default"""
PRESENT = {"server": VIP, "cert_sans": ["169.254.100.1", "FD6B:6861:0::1"]}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class FakeAPI:
    """The three ConfigMaps and a bootstrap token in memory; the bootstrapsigner signs on each read."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any] | None] = {
            CI_PATH: self._cm("cluster-info", "kube-public", {"kubeconfig": CLUSTER_INFO}),
            KC_PATH: self._cm("kubeadm-config", "kube-system", {"ClusterConfiguration": CLUSTER_CONFIGURATION}),
            KP_PATH: self._cm("kube-proxy", "kube-system", {"config.conf": CONFIG_CONF, "kubeconfig.conf": KUBE_PROXY}),
            DS_PATH: {
                "metadata": {"name": "kube-proxy", "namespace": "kube-system"},
                "spec": {"template": {"metadata": {}}, "updateStrategy": {"type": "RollingUpdate"}},
            },
        }
        self.sign()
        self.signer_running = True
        self.calls: list[tuple[str, str]] = []
        self.errors: dict[tuple[str, str], list[KubeAPIError]] = {}
        self.closed = False

    @staticmethod
    def _cm(name: str, namespace: str, data: dict[str, str]) -> dict[str, Any]:
        metadata = {"name": name, "namespace": namespace, "resourceVersion": "100", "labels": {"app": name}}
        return {"kind": "ConfigMap", "apiVersion": "v1", "metadata": metadata, "data": data}

    def sign(self) -> None:
        info = self.objects[CI_PATH]
        if info is not None:
            jws = sig.detached_jws(info["data"]["kubeconfig"], TOKEN_ID, TOKEN_SECRET)
            info["data"][f"jws-kubeconfig-{TOKEN_ID}"] = jws

    def _call(self, method: str, path: str) -> dict[str, Any]:
        self.calls.append((method, path))
        pending = self.errors.get((method, path))
        if pending:
            raise pending.pop(0)
        if path == sig.TOKEN_SECRETS_PATH:
            data = {"token-id": TOKEN_ID, "token-secret": TOKEN_SECRET, "usage-bootstrap-signing": "true"}
            secret = {
                "type": "bootstrap.kubernetes.io/token",
                "metadata": {"name": f"bootstrap-token-{TOKEN_ID}"},
                "data": {k: b64(v) for k, v in data.items()},
            }
            return {"items": [secret]}
        found = self.objects.get(path)
        if found is None:
            name = path.rsplit("/", 1)[-1]
            raise error_for_status(
                method, path, 404, json.dumps({"message": f'configmaps "{name}" not found'}).encode()
            )
        return found

    def get(self, path: str) -> dict[str, Any]:
        if path == CI_PATH and self.signer_running and self.objects[CI_PATH] is not None:
            self.sign()
        return copy.deepcopy(self._call("GET", path))

    def put(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        current = self._call("PUT", path)
        assert body["metadata"]["resourceVersion"] == current["metadata"]["resourceVersion"]
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = str(int(current["metadata"]["resourceVersion"]) + 1)
        self.objects[path] = stored
        return copy.deepcopy(stored)

    def patch(self, path: str, body: dict[str, Any], content_type: str = "") -> dict[str, Any]:
        current = self._call("PATCH", path)
        self.patched = body
        current["metadata"].setdefault("annotations", {}).update(body.get("metadata", {}).get("annotations", {}))
        template = body.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations", {})
        current["spec"]["template"]["metadata"].setdefault("annotations", {}).update(template)
        return copy.deepcopy(current)

    def close(self) -> None:
        self.closed = True

    def puts(self) -> list[str]:
        return [path for method, path in self.calls if method == "PUT"]

    def snapshot(self) -> dict[str, Any]:
        return copy.deepcopy(self.objects)


class FakeTime:
    """The clock of the module's waits: sleeping moves it on at once."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeAPI:
    fake = FakeAPI()
    monkeypatch.setattr(cluster_endpoint, "make_client", lambda kubeconfig, allow_insecure=False: fake)
    monkeypatch.setattr(sig, "time", FakeTime())
    return fake


def data(api: FakeAPI, path: str, key: str) -> str:
    obj = api.objects[path]
    assert obj is not None
    return obj["data"][key]


def annotations(api: FakeAPI, path: str) -> dict[str, str]:
    obj = api.objects[path]
    assert obj is not None
    return obj["metadata"].get("annotations", {})


def test_present_points_the_objects_at_the_endpoint(api: FakeAPI, run_module: ModuleRunner) -> None:
    old_signature = data(api, CI_PATH, f"jws-kubeconfig-{TOKEN_ID}")
    result = run_module(PRESENT | {"wait_signed": True})
    assert result["changed"] is True, result
    assert result["server"] == VIP
    assert result["changed_objects"] == [
        "kube-public/cluster-info",
        "kube-system/kubeadm-config",
        "kube-system/kube-proxy",
    ]
    assert data(api, CI_PATH, "kubeconfig") == CLUSTER_INFO.replace(OLD, VIP)
    assert data(api, KP_PATH, "kubeconfig.conf") == KUBE_PROXY.replace(OLD, VIP)
    assert data(api, KP_PATH, "config.conf") == CONFIG_CONF
    assert data(api, KC_PATH, "ClusterConfiguration") == CLUSTER_CONFIGURATION.replace(
        "  - cp1\n", "  - cp1\n  - 169.254.100.1\n  - fd6b:6861::1\n"
    )
    assert annotations(api, CI_PATH) == annotations(api, KP_PATH) == {ANNOTATION: OLD}
    assert annotations(api, KC_PATH) == {}
    assert api.objects[CI_PATH]["metadata"]["labels"] == {"app": "cluster-info"}
    info = result["objects"]["cluster_info"]
    assert (info["before"], info["after"], info["original_server"], info["changed"]) == (OLD, VIP, OLD, True)
    kubeadm = result["objects"]["kubeadm_config"]
    assert kubeadm["added"] == ["169.254.100.1", "fd6b:6861::1"] and kubeadm["removed"] == []
    assert kubeadm["control_plane_endpoint"] == "10.0.0.11:6443"
    assert "controlPlaneEndpoint: 10.0.0.11:6443" in data(api, KC_PATH, "ClusterConfiguration")
    assert result["signed_tokens"] == [TOKEN_ID]
    assert data(api, CI_PATH, f"jws-kubeconfig-{TOKEN_ID}") != old_signature
    assert api.closed is True
    assert "warnings" not in result and "diff" not in result


def test_second_run_is_unchanged_and_writes_nothing(api: FakeAPI, run_module: ModuleRunner) -> None:
    run_module(PRESENT)
    api.calls.clear()
    result = run_module({"server": "HTTPS://169.254.100.1:6444/", "cert_sans": ["fd6b:6861::1"]})
    assert result["changed"] is False and result["changed_objects"] == []
    assert api.puts() == []


def test_restart_kube_proxy_rolls_the_daemonset_only_when_its_kubeconfig_changed(
    api: FakeAPI, run_module: ModuleRunner
) -> None:
    daemonset = DS_PATH
    check = run_module(PRESENT | {"restart_kube_proxy": "kube-proxy"}, check_mode=True)
    assert check["kube_proxy_restarted"] is True and ("PATCH", daemonset) not in api.calls  # predicted
    first = run_module(PRESENT | {"restart_kube_proxy": "kube-proxy"})
    assert first["kube_proxy_restarted"] is True
    # No marker yet: what the pods run is recorded before the change, then the restart records the new ConfigMap.
    assert api.calls.count(("PATCH", daemonset)) == 2
    annotations = api.patched["spec"]["template"]["metadata"]["annotations"]
    assert "kubectl.kubernetes.io/restartedAt" in annotations
    marker = api.objects[DS_PATH]["metadata"]["annotations"][RESTARTED_FOR]
    assert marker == configmap_digest(api.objects[KP_PATH])
    second = run_module(PRESENT | {"restart_kube_proxy": "kube-proxy"})
    assert second["kube_proxy_restarted"] is False and api.calls.count(("PATCH", daemonset)) == 2
    assert second["changed"] is False


def test_a_kube_proxy_restart_left_undone_by_a_dead_run_happens_on_the_next_run(
    api: FakeAPI, run_module: ModuleRunner
) -> None:
    # The run that pointed kube-proxy's kubeconfig at the VIP died before rolling the DaemonSet (its restart PATCH
    # failed): the next run changes no object, yet restarts kube-proxy once, then no more.
    restart = PRESENT | {"restart_kube_proxy": "kube-proxy"}
    real_patch = api.patch

    def die_at_the_restart(path: str, body: dict[str, Any], content_type: str = "") -> dict[str, Any]:
        if "spec" in body:
            api.calls.append(("PATCH", path))
            raise error_for_status("PATCH", path, 503, b'{"message": "the controller died here"}')
        return real_patch(path, body, content_type)

    api.patch = die_at_the_restart  # type: ignore[method-assign]
    first = run_module(restart)
    assert first["failed"] is True and api.objects[KP_PATH]["data"]["kubeconfig.conf"] == KUBE_PROXY.replace(OLD, VIP)
    api.patch = real_patch  # type: ignore[method-assign]
    check = run_module(restart, check_mode=True)
    assert (check["changed"], check["kube_proxy_restarted"], check["changed_objects"]) == (True, True, [])
    second = run_module(restart)
    assert (second["changed"], second["kube_proxy_restarted"], second["changed_objects"]) == (True, True, [])
    third = run_module(restart)
    assert (third["changed"], third["kube_proxy_restarted"]) == (False, False)


def test_negative_control_without_a_marker_a_run_that_changes_nothing_restarts_nothing(
    api: FakeAPI, run_module: ModuleRunner
) -> None:
    """A cluster the collection never restarted kube-proxy on (no marker), already at the VIP: no restart."""
    api.objects[KP_PATH]["data"]["kubeconfig.conf"] = KUBE_PROXY.replace(OLD, VIP)
    result = run_module(PRESENT | {"restart_kube_proxy": "kube-proxy"})
    assert result["kube_proxy_restarted"] is False and ("PATCH", DS_PATH) not in api.calls


def test_check_mode_predicts_and_changes_nothing(api: FakeAPI, run_module: ModuleRunner) -> None:
    before = api.snapshot()
    result = run_module(PRESENT | {"wait_signed": True}, check_mode=True, diff=True)
    assert result["changed"] is True
    assert result["objects"]["kube_proxy"]["after"] == VIP
    assert api.puts() == [] and api.snapshot() == before
    assert result["signed_tokens"] == []
    assert [d["before_header"] for d in result["diff"]] == [
        f"ConfigMap kube-public/cluster-info, key kubeconfig (and annotation {ANNOTATION})",
        "ConfigMap kube-system/kubeadm-config, key ClusterConfiguration",
        f"ConfigMap kube-system/kube-proxy, key kubeconfig.conf (and annotation {ANNOTATION})",
    ]
    first = result["diff"][0]
    assert first["before"] == CLUSTER_INFO
    assert first["after"] == f"# metadata.annotations[{ANNOTATION}]: {OLD}\n" + CLUSTER_INFO.replace(OLD, VIP)


def test_absent_restores_the_objects_byte_for_byte(api: FakeAPI, run_module: ModuleRunner) -> None:
    before = api.snapshot()
    run_module(PRESENT)
    result = run_module({"cert_sans": PRESENT["cert_sans"], "state": "absent", "wait_signed": True}, diff=True)
    assert result["changed"] is True and result["server"] is None
    assert result["objects"]["kube_proxy"]["after"] == OLD
    after = api.snapshot()
    for path in (CI_PATH, KC_PATH, KP_PATH):
        assert after[path]["data"] == before[path]["data"], path
        assert after[path]["metadata"] | {"resourceVersion": "x"} == before[path]["metadata"] | {"resourceVersion": "x"}
    again = run_module({"state": "absent"})
    assert again["changed"] is False
    assert again["objects"]["cluster_info"]["message"] == f"no {ANNOTATION} annotation: nothing to restore"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ({"server": "http://169.254.100.1:6444"}, "'http://169.254.100.1:6444' is not an https:// URL"),
        ({"server": "https://fd6b::1:6444"}, "must be written in brackets"),
        ({"server": "https://bad_host:6444"}, "'bad_host' is neither"),
        ({"server": VIP, "cert_sans": ["10.0.0.0/8"]}, "'10.0.0.0/8' is a network"),
        ({"server": VIP, "cert_sans": ["bad_name"]}, "'bad_name' is neither"),
        ({"server": VIP, "targets": ["kubelet"]}, "kubelet"),
        ({"server": VIP, "timeout": -1}, "timeout must be 0 or more"),
        ({"cert_sans": ["10.0.0.1"]}, "server"),
    ],
)
def test_bad_input_fails_before_the_apiserver_is_asked(
    api: FakeAPI, run_module: ModuleRunner, args: dict[str, Any], needle: str
) -> None:
    result = run_module(args)
    assert result["failed"] is True
    assert needle in result["msg"], result["msg"]
    assert api.calls == []
    assert "exception" not in result


def test_missing_cluster_info_fails_with_nothing_changed(api: FakeAPI, run_module: ModuleRunner) -> None:
    api.objects[CI_PATH] = None
    before = api.snapshot()
    result = run_module(PRESENT)
    assert result["failed"] is True
    assert (
        "ConfigMap kube-public/cluster-info was not found" in result["msg"] and "Nothing was changed" in result["msg"]
    )
    assert api.puts() == [] and api.snapshot() == before


def test_unparsable_kube_proxy_kubeconfig_fails_before_any_change(api: FakeAPI, run_module: ModuleRunner) -> None:
    api.objects[KP_PATH]["data"]["kubeconfig.conf"] = "clusters: [\n"
    result = run_module(PRESENT)
    assert result["failed"] is True
    assert "ConfigMap kube-system/kube-proxy, key kubeconfig.conf is not valid YAML" in result["msg"]
    assert api.puts() == []


def test_a_cluster_without_kubeadm_config_is_skipped(api: FakeAPI, run_module: ModuleRunner) -> None:
    api.objects[KC_PATH] = None
    result = run_module(PRESENT)
    assert result["changed"] is True
    kubeadm = result["objects"]["kubeadm_config"]
    assert kubeadm["skipped"] is True and kubeadm["changed"] is False
    assert "kube-system/kubeadm-config does not exist" in kubeadm["message"]
    assert any("kubeadm-config does not exist" in json.dumps(w) for w in result["warnings"])

    api.objects[CI_PATH]["data"]["kubeconfig"] = CLUSTER_INFO  # as it was, to see that nothing gets written
    api.calls.clear()
    required = run_module(PRESENT | {"kubeadm_config_required": True})
    assert required["failed"] is True and "kubeadm_config_required is set" in required["msg"]
    assert api.puts() == []


def test_targets_limit_what_is_read_and_written(api: FakeAPI, run_module: ModuleRunner) -> None:
    result = run_module(PRESENT | {"targets": ["cluster_info"]})
    assert list(result["objects"]) == ["cluster_info"]
    assert {path for _method, path in api.calls} == {CI_PATH}
    assert data(api, KP_PATH, "kubeconfig.conf") == KUBE_PROXY


def test_warns_when_the_server_host_is_not_a_san(api: FakeAPI, run_module: ModuleRunner) -> None:
    result = run_module({"server": VIP})
    assert any("169.254.100.1 is not in apiServer.certSANs" in json.dumps(w) for w in result["warnings"])


def test_conflict_is_retried_from_a_fresh_read(api: FakeAPI, run_module: ModuleRunner) -> None:
    conflict = error_for_status("PUT", KP_PATH, 409, b'{"message": "the object has been modified"}')
    api.errors[("PUT", KP_PATH)] = [conflict]
    result = run_module(PRESENT)
    assert result["changed"] is True
    assert api.puts().count(KP_PATH) == 2
    assert data(api, KP_PATH, "kubeconfig.conf") == KUBE_PROXY.replace(OLD, VIP)


def test_a_failed_write_names_what_was_already_changed(api: FakeAPI, run_module: ModuleRunner) -> None:
    forbidden = error_for_status("PUT", KP_PATH, 403, b'{"message": "no"}')
    api.errors[("PUT", KP_PATH)] = [forbidden]
    result = run_module(PRESENT)
    assert result["failed"] is True
    assert "forbidden: cannot update configmaps kube-system/kube-proxy" in result["msg"]
    assert "already changed: kube-public/cluster-info, kube-system/kubeadm-config" in result["msg"]
    assert result["changed"] is True
    assert result["changed_objects"] == ["kube-public/cluster-info", "kube-system/kubeadm-config"]


def test_signing_timeout_names_the_token(api: FakeAPI, run_module: ModuleRunner) -> None:
    api.signer_running = False
    result = run_module(PRESENT | {"wait_signed": True, "timeout": 20})
    assert result["failed"] is True
    assert "timed out after 20s" in result["msg"] and f"bootstrap token {TOKEN_ID}" in result["msg"]
    assert "already changed: kube-public/cluster-info" in result["msg"]


def test_api_error_on_read_names_verb_and_object(api: FakeAPI, run_module: ModuleRunner) -> None:
    api.errors[("GET", KC_PATH)] = [error_for_status("GET", KC_PATH, 403, b'{"message": "denied"}')]
    result = run_module(PRESENT)
    assert result["failed"] is True
    assert result["msg"] == "forbidden: cannot get configmaps kube-system/kubeadm-config: denied"
    assert api.puts() == []


def test_missing_pyyaml_is_reported(monkeypatch: pytest.MonkeyPatch, run_module: ModuleRunner) -> None:
    def broken(kubeconfig: str, allow_insecure: bool = False) -> Any:
        raise MissingLibraryError("PyYAML", "Traceback: no module named yaml")

    monkeypatch.setattr(cluster_endpoint, "make_client", broken)
    result = run_module(PRESENT)
    assert result["failed"] is True and "PyYAML" in result["msg"]
