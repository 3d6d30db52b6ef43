# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Pure logic of cluster_endpoint's module_utils (_cluster_endpoint_input, _configmap_server, _kubeadm_cert_sans,
_bootstrap_signatures): validation, the in-place edits, plans and signatures."""

from __future__ import annotations

import base64
import datetime
from typing import Any

import pytest
import yaml
from ansible_collections.kubeha.apiserver.plugins.module_utils import _bootstrap_signatures as sig
from ansible_collections.kubeha.apiserver.plugins.module_utils import _cluster_endpoint_input as inp
from ansible_collections.kubeha.apiserver.plugins.module_utils import _configmap_server as cms
from ansible_collections.kubeha.apiserver.plugins.module_utils import _kubeadm_cert_sans as kcs
from ansible_collections.kubeha.apiserver.plugins.module_utils._cluster_endpoint_input import (
    TARGET_SPECS,
    ClusterEndpointError,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._configmap_server import ANNOTATION

# A real cluster-info kubeconfig as `kubeadm init phase bootstrap-token` (v1.36) writes it, and the signature
# kube-controller-manager's bootstrapsigner computed for it with the token below (taken from a lab cluster:
# an independent known answer for detached_jws).
LAB_CA_DATA = (
    "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSURCVENDQWUyZ0F3SUJBZ0lJRHJQWkJWZEtSS2t3RFFZSktvWklodmNOQVFF"
    "TEJRQXdGVEVUTUJFR0ExVUUKQXhNS2EzVmlaWEp1WlhSbGN6QWVGdzB5TmpFeE1qWXhOVEl5TVRGYUZ3MHpOakV4TWpNeE5USTNN"
    "VEZhTUJVeApFekFSQmdOVkJBTVRDbXQxWW1WeWJtVjBaWE13Z2dFaU1BMEdDU3FHU0liM0RRRUJBUVVBQTRJQkR3QXdnZ0VLCkFv"
    "SUJBUUROSXlYRFVVbW5GSHAyYU9BZTJTcnVrNFNiekVudUhaMEtXbGJSZzRuN05rcE5MYzR2QXo4ZW0vdksKc3FjV3Z0QmJVdDJu"
    "NHBqQ24wdXR5OWhxdHFyaDBuQUczUSsrdTdLZm1zMENoQnFnNHR2ZGUyU09EYXBaQVBuUwpESldicllzY0xXZlovdGliQTZLMFBV"
    "WlNyVUg0dWkvdG9wTkhJS2gvaFRlSEErMVJXT3lSUkZQUlFtMHJMRFRaCkUwdEdJUExXazM3TitOdGViZEN4YU05eTJtZ2NidW5H"
    "ODNiR2VVNktHVjZDQy81Mzd4cUxOVVMyaG15V3pxdEUKUFR3eFN5RVFNQVR1Q2NLbndCZmkzVFl0bUhTeXk2ZGJtNDl2MC9CTnM4"
    "bitoQWFFT0pPUjJWa1RKMEdwalhreQowNnVkRUNhM3pPVUsvV0RjY1JBU05Tbk5WTGxKQWdNQkFBR2pXVEJYTUE0R0ExVWREd0VC"
    "L3dRRUF3SUNwREFQCkJnTlZIUk1CQWY4RUJUQURBUUgvTUIwR0ExVWREZ1FXQkJSVmxsb3JiTHhndnpua05BZjlENWlqWTdtMzNU"
    "QVYKQmdOVkhSRUVEakFNZ2dwcmRXSmxjbTVsZEdWek1BMEdDU3FHU0liM0RRRUJDd1VBQTRJQkFRQzZaMUFNdnBSYgoxMFlQREln"
    "d1FTQjdWSmxTcnZYRlYremJLc0FSZ2F1TjZTdGI5MEtHVEV3UVdqU3FrNStmVHllWllsTzBkVmFsCnNDTGRPRlRZQlRoRU1VUEJw"
    "TEtMZHJRSTYxMTlZQnIwOGV1WXF5NUlGbW1tT0pybXNhd29rWWt1c0JidDZqSEwKRlhwdDZmN05uM2Urc2MycGgwNWY0QUZ0N0Jw"
    "ME5HdjE3NVpqV3JCTWhFcXVHamVDZCtWdS9PTXJLKzk1WUZhWQpNS1V0THFiUVBhS1VxdlFEcWVZNU01VHhUd0lWNzJ2NU5QYVNK"
    "YklFWUt2Q0pXWElYNzlsZmdUaFQvcGJrYUNLClpYbm9IcVQ0OFZ2MEVieWQyS0ZSRmpzY01HTGtVWWlWc0RpM1FDbXZNUGpWSFF0"
    "ci9iNHFHVzBDOStjMDlTWHIKUTByaUlLb0NQV3hICi0tLS0tRU5EIENFUlRJRklDQVRFLS0tLS0K"
)
CLUSTER_INFO = (
    "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: " + LAB_CA_DATA + "\n"
    '    server: https://10.88.0.11:6443\n  name: ""\ncontexts: null\ncurrent-context: ""\nkind: Config\nusers: null\n'
)
LAB_TOKEN_ID, LAB_TOKEN_SECRET = "da836c", "1cdeedefd4f7134c"
LAB_JWS = "eyJhbGciOiJIUzI1NiIsImtpZCI6ImRhODM2YyJ9..0r-vueVSN3UTghSnmpR_r-6s4gxtn_NpY3OixDwrsBo"
VIP = "https://169.254.100.1:6444"

# kube-system/kube-proxy's kubeconfig.conf as kubeadm writes it (a `|-` block: no final newline).
KUBE_PROXY_KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt
    server: https://10.88.0.11:6443
  name: default
contexts:
- context:
    cluster: default
    namespace: default
    user: default
  name: default
current-context: default
users:
- name: default
  user:
    tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token"""

# kube-system/kubeadm-config's ClusterConfiguration as kubeadm (v1.36) uploads it.
CLUSTER_CONFIGURATION = """\
apiServer:
  certSANs:
  - 10.88.0.11
  - cp1
  - fd88:88::11
apiVersion: kubeadm.k8s.io/v1beta4
caCertificateValidityPeriod: 87600h0m0s
certificateValidityPeriod: 8760h0m0s
certificatesDir: /etc/kubernetes/pki
clusterName: kubeha-lab
controlPlaneEndpoint: 10.88.0.11:6443
controllerManager: {}
dns: {}
kind: ClusterConfiguration
kubernetesVersion: v1.36.3
networking:
  dnsDomain: cluster.local
proxy: {}
scheduler: {}
"""


TAIL = "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\n"


def changed_lines(before: str, after: str) -> tuple[list[str], list[str]]:
    """The lines only in ``before`` and only in ``after`` (order kept)."""
    old, new = before.splitlines(), after.splitlines()
    return [x for x in old if x not in new], [x for x in new if x not in old]


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://169.254.100.1:6444", "https://169.254.100.1:6444"),
        (" https://169.254.100.1:6444/ ", "https://169.254.100.1:6444"),
        ("HTTPS://[FD6B:6861:0::1]:6444", "https://[fd6b:6861::1]:6444"),
        ("https://Api.Example.COM:6444", "https://api.example.com:6444"),
        ("https://localhost", "https://localhost"),
        ("https://10.0.0.1:06444", "https://10.0.0.1:6444"),
    ],
)
def test_normalize_server_accepts(value: str, expected: str) -> None:
    assert inp.normalize_server(value) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("http://169.254.100.1:6444", "is not an https:// URL"),
        ("169.254.100.1:6444", "is not an https:// URL"),
        ("", "must be an https:// URL"),
        (None, "must be an https:// URL"),
        (6444, "must be an https:// URL"),
        ("https://fd6b:6861::1:6444", "must be written in brackets"),
        ("https://[fd6b:zz::1]:6444", "not a valid"),
        ("https://[fe80::1%eth0]:6444", "zone index"),
        ("https://169.254.100.1:0", "invalid port '0'"),
        ("https://169.254.100.1:70000", "invalid port '70000'"),
        ("https://169.254.100.1:", "invalid port ''"),
        ("https://169.254.100.1:64x", "invalid port '64x'"),
        ("https://169.254.100.256:6444", "neither an IPv4 address nor a valid DNS name"),
        ("https://bad_host:6444", "neither an IPv4 address nor a valid DNS name"),
        ("https://-bad.example:6444", "neither an IPv4 address nor a valid DNS name"),
        ("https://:6444", "has no host"),
        ("https://user:pw@10.0.0.1:6444", "user information"),
        ("https://10.0.0.1:6444/api", "path, query or fragment"),
        ("https://10.0.0.1:6444?x=1", "path, query or fragment"),
    ],
)
def test_normalize_server_refuses_naming_value_and_reason(value: Any, reason: str) -> None:
    with pytest.raises(ClusterEndpointError) as info:
        inp.normalize_server(value)
    assert reason in str(info.value)
    if isinstance(value, str) and value:
        assert repr(value.strip()) in str(info.value)


def test_server_host() -> None:
    assert inp.server_host("https://[fd6b:6861::1]:6444") == "fd6b:6861::1"
    assert inp.server_host("https://169.254.100.1:6444") == "169.254.100.1"
    assert inp.server_host("https://api.example") == "api.example"


def test_normalize_sans() -> None:
    values = ["169.254.100.1", "FD6B:6861:0::1", "Api.Example.com", "*.Example.com", "fd6b:6861::1", "API.example.com"]
    assert inp.normalize_sans(values) == ["169.254.100.1", "fd6b:6861::1", "api.example.com", "*.example.com"]
    assert inp.normalize_sans(None) == []
    assert inp.normalize_sans([]) == []


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("10.0.0.0/8", "is a network"),
        ("[fd6b::1]", "without brackets"),
        ("fe80::1%eth0", "zone index"),
        ("10.0.0.256", "neither a valid IP address nor a DNS name"),
        ("under_score.example", "neither a valid IP address nor a DNS name"),
        ("a..b", "neither a valid IP address nor a DNS name"),
        ("*", "neither a valid IP address nor a DNS name"),
        ("", "is not an IP address or a DNS name"),
        (7, "is not an IP address or a DNS name"),
    ],
)
def test_normalize_san_refuses_naming_value_and_reason(value: Any, reason: str) -> None:
    with pytest.raises(ClusterEndpointError) as info:
        inp.normalize_sans(["10.0.0.1", value])
    assert reason in str(info.value) and repr(value.strip() if isinstance(value, str) else value) in str(info.value)


def test_normalize_sans_refuses_a_string() -> None:
    with pytest.raises(ClusterEndpointError, match="must be a list"):
        inp.normalize_sans("10.0.0.1")


def test_normalize_targets() -> None:
    assert inp.normalize_targets(None) == ["cluster_info", "kubeadm_config", "kube_proxy"]
    assert inp.normalize_targets(["kube_proxy", "cluster_info"]) == ["cluster_info", "kube_proxy"]
    with pytest.raises(ClusterEndpointError, match="unknown target 'kubelet'"):
        inp.normalize_targets(["cluster_info", "kubelet"])
    with pytest.raises(ClusterEndpointError, match="targets is empty"):
        inp.normalize_targets([])


# --------------------------------------------------------------------------------------------------
# kubeconfig server
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [CLUSTER_INFO, KUBE_PROXY_KUBECONFIG])
def test_set_server_changes_only_the_value_and_goes_back_byte_for_byte(text: str) -> None:
    edited = cms.set_server(text, VIP)
    assert cms.kubeconfig_server(edited) == VIP
    assert changed_lines(text, edited) == (["    server: https://10.88.0.11:6443"], [f"    server: {VIP}"])
    assert edited.endswith("\n") == text.endswith("\n")
    assert cms.set_server(edited, "https://10.88.0.11:6443") == text
    assert cms.set_server(text, "https://10.88.0.11:6443") is text


def test_set_server_keeps_the_quoting_and_the_comment() -> None:
    text = 'clusters:\n- cluster:\n    server: "https://10.0.0.1:6443"  # kubeadm\n  name: a\r\n'
    edited = cms.set_server(text, VIP)
    assert edited == text.replace('"https://10.0.0.1:6443"', f'"{VIP}"')
    single = "clusters:\n- cluster:\n    server: 'https://10.0.0.1:6443'\n"
    assert cms.set_server(single, VIP) == single.replace("'https://10.0.0.1:6443'", f"'{VIP}'")


def test_set_server_in_a_flow_mapping_is_verified() -> None:
    text = "clusters:\n- {cluster: {server: https://10.0.0.1:6443}, name: a}\n"
    edited = cms.set_server(text, "https://[fd6b::1]:6444")
    assert yaml.safe_load(edited)["clusters"][0]["cluster"]["server"] == "https://[fd6b::1]:6444"
    assert edited.replace("https://[fd6b::1]:6444", "X").replace('"X"', "X") == text.replace(
        "https://10.0.0.1:6443", "X"
    )


def test_server_of_the_current_context_cluster() -> None:
    text = """\
clusters:
- cluster: {server: https://first:6443}
  name: first
- cluster:
    server: https://second:6443
  name: second
contexts:
- context: {cluster: second, user: u}
  name: ctx
current-context: ctx
"""
    assert cms.kubeconfig_server(text) == "https://second:6443"
    assert "https://first:6443" in cms.set_server(text, VIP)
    assert cms.kubeconfig_server(cms.set_server(text, VIP)) == VIP


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("clusters: []\n", "has no clusters"),
        ("kind: Config\n", "has no clusters"),
        ("clusters:\n- cluster: {}\n  name: a\n", "has no server"),
        ("clusters:\n- cluster:\n    server: |\n      https://x\n", "not a one-line string"),
        ("clusters:\n- cluster:\n    server: 6443\n", "not a one-line string"),
        ("- a\n", "not a YAML mapping"),
        ("clusters: [\n", "not valid YAML"),
    ],
)
def test_kubeconfig_server_refuses(text: str, reason: str) -> None:
    with pytest.raises(ClusterEndpointError, match=reason):
        cms.kubeconfig_server(text, "ConfigMap x/y, key k")


def test_set_server_refuses_an_anchored_value() -> None:
    text = "x: &s https://10.0.0.1:6443\nclusters:\n- cluster:\n    server: *s\n"
    with pytest.raises(ClusterEndpointError, match="does not handle"):
        cms.set_server(text, VIP)


def configmap(key: str, text: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "x", "resourceVersion": "7"}
    if annotations is not None:
        metadata["annotations"] = annotations
    return {"metadata": metadata, "data": {key: text}}


def test_plan_server_present_then_absent_is_byte_identical() -> None:
    target = TARGET_SPECS["cluster_info"]
    original = configmap("kubeconfig", CLUSTER_INFO)
    plan = cms.plan_server(original, target, VIP, "present")
    assert plan.changed and (plan.before, plan.after) == ("https://10.88.0.11:6443", VIP)
    assert plan.original_after == "https://10.88.0.11:6443"
    applied = cms.apply_server(dict(original, metadata=dict(original["metadata"])), plan)
    assert applied["metadata"]["annotations"] == {ANNOTATION: "https://10.88.0.11:6443"}

    again = cms.plan_server(applied, target, VIP, "present")
    assert not again.changed

    back = cms.plan_server(applied, target, None, "absent")
    assert back.changed and (back.before, back.after, back.original_after) == (VIP, "https://10.88.0.11:6443", None)
    restored = cms.apply_server(applied, back)
    assert restored == original
    assert not cms.plan_server(restored, target, None, "absent").changed


def test_plan_server_keeps_the_first_original_when_the_endpoint_moves() -> None:
    target = TARGET_SPECS["kube_proxy"]
    obj = configmap(
        "kubeconfig.conf", cms.set_server(KUBE_PROXY_KUBECONFIG, VIP), {ANNOTATION: "https://10.88.0.11:6443"}
    )
    plan = cms.plan_server(obj, target, "https://169.254.100.1:7444", "present")
    assert plan.changed and plan.original_after == "https://10.88.0.11:6443"


def test_plan_server_already_there_without_annotation_warns() -> None:
    target = TARGET_SPECS["cluster_info"]
    obj = configmap("kubeconfig", cms.set_server(CLUSTER_INFO, VIP), {"other": "kept"})
    plan = cms.plan_server(obj, target, VIP, "present")
    assert not plan.changed and "state=absent will leave it" in plan.warning
    absent = cms.plan_server(obj, target, VIP, "absent")
    assert not absent.changed and "left as it is" in absent.warning


def test_plan_server_absent_only_drops_the_annotation_when_the_server_is_already_back() -> None:
    target = TARGET_SPECS["cluster_info"]
    obj = configmap("kubeconfig", CLUSTER_INFO, {ANNOTATION: "https://10.88.0.11:6443", "other": "kept"})
    plan = cms.plan_server(obj, target, None, "absent")
    assert plan.changed and plan.text_after == CLUSTER_INFO
    assert cms.apply_server(obj, plan)["metadata"]["annotations"] == {"other": "kept"}


def test_plan_server_missing_key_names_the_keys() -> None:
    with pytest.raises(ClusterEndpointError, match=r"kube-public/cluster-info has no key 'kubeconfig' \(keys: other\)"):
        cms.plan_server(configmap("other", ""), TARGET_SPECS["cluster_info"], VIP, "present")


# --------------------------------------------------------------------------------------------------
# certSANs
# --------------------------------------------------------------------------------------------------


def sans_edit(text: str, sans: list[str], state: str) -> str:
    config = kcs.parse_cluster_configuration(text)
    new, _added, _removed = kcs.plan_sans(kcs.current_sans(config), inp.normalize_sans(sans), state)
    return kcs.render_sans(text, config, new)


def test_sans_appended_after_the_last_entry_and_removed_exactly() -> None:
    added = sans_edit(CLUSTER_CONFIGURATION, ["169.254.100.1", "FD6B:6861::1", "cp1", "FD88:88:0::11"], "present")
    assert changed_lines(CLUSTER_CONFIGURATION, added) == ([], ["  - 169.254.100.1", "  - fd6b:6861::1"])
    assert added.index("  - fd6b:6861::1\n") < added.index("apiVersion:")
    assert sans_edit(added, ["169.254.100.1", "fd6b:6861::1"], "absent") == CLUSTER_CONFIGURATION
    assert sans_edit(added, ["169.254.100.1", "fd6b:6861::1"], "present") == added


def test_sans_absent_removes_only_the_named_entries() -> None:
    removed = sans_edit(CLUSTER_CONFIGURATION, ["CP1", "10.99.0.1"], "absent")
    assert changed_lines(CLUSTER_CONFIGURATION, removed) == (["  - cp1"], [])


def test_removing_every_san_leaves_an_empty_apiserver_as_kubeadm_writes_it() -> None:
    text = sans_edit(CLUSTER_CONFIGURATION, ["10.88.0.11", "cp1", "fd88:88::11"], "absent")
    assert text.startswith("apiServer: {}\napiVersion:")
    assert "certSANs" not in text


def test_removing_every_san_keeps_the_other_apiserver_keys() -> None:
    text = "apiServer:\n  certSANs:\n  - a.example\n  extraArgs: []\n" + TAIL.rstrip("\n")
    assert sans_edit(text, ["A.example"], "absent") == "apiServer:\n  extraArgs: []\n" + TAIL.rstrip("\n")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (  # no certSANs yet: the first key of apiServer, as kubeadm sorts them
            "apiServer:\n  extraArgs:\n  - name: v\n    value: '2'\n" + TAIL,
            "apiServer:\n  certSANs:\n  - 169.254.100.1\n  extraArgs:\n  - name: v\n    value: '2'\n"
            "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\n",
        ),
        (
            "apiServer: {}\n" + TAIL,
            "apiServer:\n  certSANs:\n  - 169.254.100.1\n" + TAIL,
        ),
        (
            "apiServer:\n  certSANs: null\n" + TAIL,
            "apiServer:\n  certSANs:\n  - 169.254.100.1\n" + TAIL,
        ),
        (
            "apiServer:\n  certSANs: []\n" + TAIL,
            "apiServer:\n  certSANs:\n  - 169.254.100.1\n" + TAIL,
        ),
        (
            "# kubeadm\n" + TAIL.rstrip("\n"),
            "# kubeadm\napiServer:\n  certSANs:\n  - 169.254.100.1\n" + TAIL.rstrip("\n"),
        ),
    ],
)
def test_sans_added_where_there_are_none(text: str, expected: str) -> None:
    assert sans_edit(text, ["169.254.100.1"], "present") == expected
    assert sans_edit(text, ["169.254.100.1"], "absent") == text


def test_sans_edit_keeps_crlf_and_no_final_newline() -> None:
    text = CLUSTER_CONFIGURATION.rstrip("\n").replace("\n", "\r\n")
    added = sans_edit(text, ["169.254.100.1"], "present")
    assert "  - fd88:88::11\r\n  - 169.254.100.1\r\napiVersion" in added and not added.endswith("\n")
    assert sans_edit(added, ["169.254.100.1"], "absent") == text
    last = "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\napiServer:\n  certSANs:\n  - a\n  - b"
    assert sans_edit(last, ["c"], "present") == last + "\n  - c"
    assert sans_edit(last, ["b"], "absent") == last[: -len("\n  - b")]


def test_sans_edit_keeps_the_comment_of_the_line_it_rewrites() -> None:
    text = "apiServer:  # kubeadm\n  certSANs: []  # none yet\n" + TAIL
    added = sans_edit(text, ["169.254.100.1"], "present")
    assert added == "apiServer:  # kubeadm\n  certSANs:  # none yet\n  - 169.254.100.1\n" + TAIL
    assert sans_edit(added, ["169.254.100.1"], "absent") == "apiServer: {}  # kubeadm\n" + TAIL


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("apiServer:\n  certSANs: [a, b]\n", "written inline"),
        ("apiServer: {extraArgs: []}\n", "apiServer is written inline"),
        ("apiServer:\n  certSANs:\n  - [a]\n", "cannot edit line by line"),
    ],
)
def test_sans_edit_refuses_layouts_it_cannot_edit(text: str, reason: str) -> None:
    text += "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\n"
    config = yaml.safe_load(text)
    with pytest.raises(ClusterEndpointError, match=reason):
        kcs.render_sans(text, config, ["c"])


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("kind: InitConfiguration\napiVersion: kubeadm.k8s.io/v1beta4\n", "of kind 'InitConfiguration'"),
        ("kind: ClusterConfiguration\napiVersion: v1\n", "apiVersion 'v1'"),
        ("kind: ClusterConfiguration\napiVersion: kubeadm.k8s.io/v1beta4\napiServer: []\n", "not a mapping"),
        (
            "kind: ClusterConfiguration\napiVersion: kubeadm.k8s.io/v1beta4\napiServer:\n  certSANs: a\n",
            "certSANs is 'a', not a list",
        ),
    ],
)
def test_parse_cluster_configuration_refuses(text: str, reason: str) -> None:
    with pytest.raises(ClusterEndpointError, match=reason):
        kcs.parse_cluster_configuration(text)


def test_plan_kubeadm_config_skips_a_cluster_without_kubeadm() -> None:
    target = TARGET_SPECS["kubeadm_config"]
    missing = kcs.plan_kubeadm_config(None, target, ["169.254.100.1"], "present")
    assert missing.skipped and not missing.changed and "does not exist" in missing.message
    no_key = kcs.plan_kubeadm_config({"data": {"ClusterStatus": ""}}, target, ["169.254.100.1"], "present")
    assert no_key.skipped and "has no key ClusterConfiguration" in no_key.message


def test_plan_kubeadm_config_reports_the_endpoint_and_never_changes_it() -> None:
    target = TARGET_SPECS["kubeadm_config"]
    plan = kcs.plan_kubeadm_config({"data": {target.key: CLUSTER_CONFIGURATION}}, target, ["169.254.100.1"], "present")
    assert plan.control_plane_endpoint == "10.88.0.11:6443"
    assert "controlPlaneEndpoint: 10.88.0.11:6443\n" in plan.text_after
    assert (plan.added, plan.removed) == (["169.254.100.1"], [])
    assert plan.result()["after"] == ["10.88.0.11", "cp1", "fd88:88::11", "169.254.100.1"]


# --------------------------------------------------------------------------------------------------
# Signatures
# --------------------------------------------------------------------------------------------------


def test_detached_jws_matches_the_bootstrapsigner() -> None:
    assert sig.detached_jws(CLUSTER_INFO, LAB_TOKEN_ID, LAB_TOKEN_SECRET) == LAB_JWS
    assert sig.signature_valid(LAB_JWS, CLUSTER_INFO, LAB_TOKEN_ID, LAB_TOKEN_SECRET)
    edited = cms.set_server(CLUSTER_INFO, VIP)
    assert not sig.signature_valid(LAB_JWS, edited, LAB_TOKEN_ID, LAB_TOKEN_SECRET)
    assert not sig.signature_valid(LAB_JWS, CLUSTER_INFO, LAB_TOKEN_ID, "0" * 16)
    assert not sig.signature_valid(None, CLUSTER_INFO, LAB_TOKEN_ID, LAB_TOKEN_SECRET)
    header = LAB_JWS.split(".", maxsplit=1)[0]
    assert base64.urlsafe_b64decode(header + "==") == b'{"alg":"HS256","kid":"da836c"}'


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def token_secret(token_id: str, secret: str, **extra: str) -> dict[str, Any]:
    data = {"token-id": token_id, "token-secret": secret, "usage-bootstrap-signing": "true"} | extra
    return {
        "type": "bootstrap.kubernetes.io/token",
        "metadata": {"name": f"bootstrap-token-{token_id}"},
        "data": {k: b64(v) for k, v in data.items()},
    }


NOW = datetime.datetime(2026, 11, 26, 12, 0, tzinfo=datetime.UTC)


def test_signing_tokens_as_the_bootstrapsigner_picks_them() -> None:
    renamed = token_secret("cccccc", "cccccccccccccccc")
    renamed["metadata"]["name"] = "bootstrap-token-dddddd"
    secrets = [
        token_secret("aaaaaa", "aaaaaaaaaaaaaaaa", expiration="2026-11-27T00:00:00Z"),
        token_secret("bbbbbb", "bbbbbbbbbbbbbbbb", **{"usage-bootstrap-signing": "false"}),
        renamed,
        token_secret("eeeeee", "eeeeeeeeeeeeeeee", expiration="2026-11-26T11:59:59Z"),
        token_secret("ffffff", "ffffffffffffffff", expiration="tomorrow"),
        token_secret("gggggg", ""),
        token_secret("hhhhhh", "hhhhhhhhhhhhhhhh") | {"type": "Opaque"},
        token_secret("iiiiii", "iiiiiiiiiiiiiiii"),
    ]
    assert sig.signing_tokens(secrets, NOW) == {"aaaaaa": "aaaaaaaaaaaaaaaa", "iiiiii": "iiiiiiiiiiiiiiii"}


class SigningAPI:
    """cluster-info and the token secrets; ``sign_after`` GETs of cluster-info, it gets signed."""

    def __init__(self, content: str, sign_after: int, tokens: dict[str, str]) -> None:
        self.cm: dict[str, Any] = {"data": {"kubeconfig": content}}
        self.tokens = tokens
        self.sign_after = sign_after
        self.reads = 0

    def get(self, path: str) -> dict[str, Any]:
        if path == sig.TOKEN_SECRETS_PATH:
            return {"items": [token_secret(t, s) for t, s in self.tokens.items()]}
        assert path == TARGET_SPECS["cluster_info"].path
        self.reads += 1
        if self.reads > self.sign_after:
            content = self.cm["data"]["kubeconfig"]
            for tid, secret in self.tokens.items():
                self.cm["data"][f"jws-kubeconfig-{tid}"] = sig.detached_jws(content, tid, secret)
        return self.cm


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_wait_signed_returns_once_every_token_validates() -> None:
    api = SigningAPI(CLUSTER_INFO, 3, {"aaaaaa": "aaaaaaaaaaaaaaaa", "bbbbbb": "bbbbbbbbbbbbbbbb"})
    clock = Clock()
    assert sig.wait_signed(api, CLUSTER_INFO, 30, clock=clock, sleep=clock.sleep) == ["aaaaaa", "bbbbbb"]
    assert api.reads == 4 and clock.now == 3


def test_wait_signed_times_out_naming_the_token() -> None:
    api = SigningAPI(CLUSTER_INFO, 10**6, {"aaaaaa": "aaaaaaaaaaaaaaaa"})
    clock = Clock()
    with pytest.raises(ClusterEndpointError) as info:
        sig.wait_signed(api, CLUSTER_INFO, 5, clock=clock, sleep=clock.sleep)
    assert "timed out after 5s" in str(info.value) and "jws-kubeconfig-aaaaaa" in str(info.value)
    assert "bootstrap token aaaaaa" in str(info.value)


def test_wait_signed_notices_someone_else_changed_cluster_info() -> None:
    api = SigningAPI(CLUSTER_INFO, 0, {"aaaaaa": "aaaaaaaaaaaaaaaa"})
    with pytest.raises(ClusterEndpointError, match="changed by someone else"):
        sig.wait_signed(api, cms.set_server(CLUSTER_INFO, VIP), 5)
