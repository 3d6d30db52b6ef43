# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""module_utils/_kubeconfig: the one kubeconfig selection, its server checks and file names, and the three callers
(_kubeapi.load_kubeconfig, _kubeconfig_server.inspect, _cluster_endpoint's server edit) that must agree on it."""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible_collections.kubeha.apiserver.plugins.module_utils import _cluster_endpoint_input as inp
from ansible_collections.kubeha.apiserver.plugins.module_utils import _configmap_server as cms
from ansible_collections.kubeha.apiserver.plugins.module_utils import _kubeconfig_server as ks
from ansible_collections.kubeha.apiserver.plugins.module_utils._kubeapi import KubeAPIError, load_kubeconfig
from ansible_collections.kubeha.apiserver.plugins.module_utils._kubeconfig import (
    KubeconfigError,
    Selection,
    referenced_files,
    resolve_path,
    select,
)

CERT_PEM = b"-----BEGIN CERTIFICATE-----\nY2VydA==\n-----END CERTIFICATE-----\n"
KEY_PEM = b"-----BEGIN PRIVATE KEY-----\na2V5\n-----END PRIVATE KEY-----\n"
CA_DATA = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nY2E=\n-----END CERTIFICATE-----\n").decode()
CERT_DATA = base64.b64encode(CERT_PEM).decode()
KEY_DATA = base64.b64encode(KEY_PEM).decode()

# The current context's cluster and user are the second of three: a first-match rule picks another one.
SEVERAL = f"""\
apiVersion: v1
kind: Config
clusters:
- name: first
  cluster: {{server: 'https://10.0.0.1:6443', certificate-authority-data: {CA_DATA}}}
- name: second
  cluster:
    certificate-authority-data: {CA_DATA}
    server: https://10.0.0.2:6443
- name: third
  cluster: {{server: 'https://10.0.0.3:6443', certificate-authority-data: {CA_DATA}}}
contexts:
- {{name: one, context: {{cluster: first, user: alice}}}}
- {{name: two, context: {{cluster: second, user: bob}}}}
current-context: two
users:
- name: alice
  user: {{token: alice-token}}
- name: bob
  user: {{token: bob-token}}
"""
# cluster-info as kubeadm writes it: one unnamed cluster, no context, no user.
CLUSTER_INFO = (
    f"apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {CA_DATA}\n"
    '    server: https://10.88.0.11:6443\n  name: ""\ncontexts: null\ncurrent-context: ""\nkind: Config\nusers: null\n'
)


def doc(text: str = SEVERAL) -> dict[str, Any]:
    return yaml.safe_load(text)


def selection(cluster: dict[str, Any], user: dict[str, Any] | None = None, source: str = "/etc/k/admin.conf"):
    return Selection(source, "ctx", "c", 0, cluster, "u" if user is not None else "", 0, user)


# --------------------------------------------------------------------------------------------------
# select
# --------------------------------------------------------------------------------------------------


def test_the_current_context_is_chosen_over_the_first_entries() -> None:
    picked = select(doc(), "several.conf")
    assert (picked.context, picked.cluster_name, picked.cluster_index) == ("two", "second", 1)
    assert (picked.user_name, picked.user_index, dict(picked.user or {})) == ("bob", 1, {"token": "bob-token"})
    assert picked.cluster["server"] == "https://10.0.0.2:6443"
    # Negative control: the document's first entries are not the current context's, so the test above can fail.
    assert doc()["clusters"][0]["name"] != picked.cluster_name and doc()["users"][0]["name"] != picked.user_name
    # A context given by name wins over current-context.
    one = select(doc(), "several.conf", "one")
    assert (one.cluster_name, one.cluster_index, one.user_name, one.user_index) == ("first", 0, "alice", 0)


def test_the_index_counts_entries_that_are_not_mappings() -> None:
    # The index is the position in the list as written: _cluster_endpoint edits that node.
    document = doc()
    document["clusters"].insert(0, "not an entry")
    assert select(document, "x").cluster_index == 2


@pytest.mark.parametrize("section", ["contexts", "clusters", "users"])
@pytest.mark.parametrize("used", [True, False])
def test_a_name_used_twice_is_refused_naming_the_file_the_section_and_the_name(section: str, used: bool) -> None:
    document = doc()
    entries = document[section]
    entries.append(dict(entries[1 if used else 2 if section == "clusters" else 0]))
    name = entries[-1]["name"]
    with pytest.raises(KubeconfigError) as info:
        select(document, "/etc/kubernetes/admin.conf")
    assert str(info.value).startswith(f"/etc/kubernetes/admin.conf: {section} has 2 entries named {name!r}: ")
    assert "ambiguous" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"current-context": "three"}, "x.conf: context 'three' is not defined in contexts (defined: one, two)"),
        (
            {"contexts": [{"name": "two", "context": {"cluster": "fourth", "user": "bob"}}]},
            "x.conf: cluster 'fourth' is not defined in clusters (defined: first, second, third)",
        ),
        (
            {"contexts": [{"name": "two", "context": {"cluster": "second", "user": "carol"}}]},
            "x.conf: user 'carol' is not defined in users (defined: alice, bob)",
        ),
        ({"users": None}, "x.conf: user 'bob' is not defined in users (defined: none)"),
        ({"contexts": [{"name": "two", "context": {"user": "bob"}}]}, "x.conf: context 'two' names no cluster"),
        ({"contexts": [{"name": "two", "context": {"cluster": "second"}}]}, "x.conf: context 'two' names no user"),
        ({"current-context": ""}, "x.conf: no context was given and current-context is not set"),
        ({"current-context": 2}, "x.conf: current-context 2 is not a string"),
        ({"users": "bob"}, "x.conf: users is not a list"),
        ({"contexts": [{"name": "two", "context": "second"}]}, "contexts entry 'two' has a context that is not a"),
    ],
)
def test_what_is_missing_is_named(change: dict[str, Any], message: str) -> None:
    with pytest.raises(KubeconfigError, match=re.escape(message)):
        select(doc() | change, "x.conf")


def test_a_caller_that_needs_no_user_takes_a_context_without_one() -> None:
    no_user = doc() | {"contexts": [{"name": "two", "context": {"cluster": "second"}}]}
    assert select(no_user, "x", require_user=False).user is None
    undefined = doc() | {"users": None}
    picked = select(undefined, "x", require_user=False)
    assert (picked.cluster_name, picked.user_name, picked.user, picked.user_index) == ("second", "bob", None, None)


def test_no_context_is_the_one_cluster_only_when_the_caller_allows_it() -> None:
    picked = select(doc(CLUSTER_INFO), "cluster-info", allow_no_context=True)
    assert (picked.context, picked.cluster_name, picked.cluster_index, picked.user) == ("", "", 0, None)
    with pytest.raises(KubeconfigError, match="current-context is not set"):
        select(doc(CLUSTER_INFO), "cluster-info")
    two = doc(SEVERAL) | {"current-context": ""}
    with pytest.raises(KubeconfigError, match="current-context is not set and clusters has 3 entries: which one"):
        select(two, "x", allow_no_context=True)


def test_not_a_mapping_is_not_a_kubeconfig() -> None:
    with pytest.raises(KubeconfigError, match=r"^x\.conf is not a kubeconfig"):
        select(["a"], "x.conf")


# --------------------------------------------------------------------------------------------------
# file names
# --------------------------------------------------------------------------------------------------


def test_relative_paths_are_resolved_against_the_kubeconfigs_directory(tmp_path: Path) -> None:
    source = str(tmp_path / "conf" / "kubelet.conf")
    assert resolve_path(source, "pki/ca.crt") == str(tmp_path / "conf" / "pki" / "ca.crt")
    assert resolve_path(source, "/var/lib/kubelet/pki/kubelet-client-current.pem").startswith("/var/lib/kubelet")
    # Negative control: not the working directory.
    assert resolve_path(source, "ca.crt") != os.path.abspath("ca.crt")


def test_referenced_files_keep_the_client_key_when_separate() -> None:
    picked = selection(
        {"server": "https://a:6443", "certificate-authority": "pki/ca.crt"},
        {"client-certificate": "/var/lib/kubelet/pki/client.crt", "client-key": "client.key", "token": "t"},
        "/etc/kubernetes/kubelet.conf",
    )
    assert referenced_files(picked) == {
        "certificate-authority": "/etc/kubernetes/pki/ca.crt",
        "client-certificate": "/var/lib/kubelet/pki/client.crt",
        "client-key": "/etc/kubernetes/client.key",
    }
    with pytest.raises(KubeconfigError, match=re.escape("users[u].client-key 7 is not a file name")):
        referenced_files(selection({"server": "https://a"}, {"client-key": 7}))


def test_load_kubeconfig_honours_a_separate_client_key(tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / "client.key").write_bytes(KEY_PEM)
    text = SEVERAL.replace(
        "user: {token: bob-token}", f"user: {{client-certificate-data: {CERT_DATA}, client-key: pki/client.key}}"
    )
    path = tmp_path / "admin.conf"
    path.write_text(text)
    creds = load_kubeconfig(str(path))
    assert (creds.server, creds.client_cert, creds.client_key, creds.token) == (
        "https://10.0.0.2:6443",
        CERT_PEM,
        KEY_PEM,
        None,
    )


# --------------------------------------------------------------------------------------------------
# The callers agree
# --------------------------------------------------------------------------------------------------


def server_by_kubeapi(tmp_path: Path, text: str) -> str | None:
    path = tmp_path / "kubeconfig"
    path.write_text(text)
    try:
        return load_kubeconfig(str(path)).server
    except KubeAPIError:
        return None


def server_by_kubeconfig_server(text: str) -> str | None:
    try:
        return ks.inspect(text, "kubeconfig").server
    except ks.KubeconfigServerError:
        return None


def server_by_cluster_endpoint(text: str) -> str | None:
    try:
        return cms.kubeconfig_server(text, "kubeconfig")
    except inp.ClusterEndpointError:
        return None


DUPLICATE_CLUSTER = SEVERAL.replace("- name: third\n", "- name: second\n")
UNDEFINED_CONTEXT = SEVERAL.replace("current-context: two", "current-context: three")
UNDEFINED_CLUSTER = SEVERAL.replace("cluster: second, user: bob", "cluster: fourth, user: bob")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (SEVERAL, "https://10.0.0.2:6443"),
        (SEVERAL.replace("current-context: two", "current-context: one"), "https://10.0.0.1:6443"),
        # These were the disagreements: _kubeapi took the first of two "second", _cluster_endpoint the last,
        # and _cluster_endpoint fell back to the first cluster for an undefined context or cluster.
        (DUPLICATE_CLUSTER, None),
        (UNDEFINED_CONTEXT, None),
        (UNDEFINED_CLUSTER, None),
    ],
)
def test_all_callers_pick_the_same_cluster(tmp_path: Path, text: str, expected: str | None) -> None:
    picked = (server_by_kubeapi(tmp_path, text), server_by_kubeconfig_server(text), server_by_cluster_endpoint(text))
    assert picked == (expected, expected, expected)


def test_the_edit_changes_the_cluster_the_others_read() -> None:
    edited = cms.set_server(SEVERAL, "https://169.254.100.1:6444")
    clusters = {c["name"]: c["cluster"]["server"] for c in doc(edited)["clusters"]}
    assert clusters == {
        "first": "https://10.0.0.1:6443",
        "second": "https://169.254.100.1:6444",
        "third": "https://10.0.0.3:6443",
    }
    assert ks.edit(SEVERAL, "https://169.254.100.1:6444", "kubeconfig") == edited


def test_each_caller_keeps_its_error_type_with_the_one_message(tmp_path: Path) -> None:
    needle = "clusters has 2 entries named 'second'"
    path = tmp_path / "kubeconfig"
    path.write_text(DUPLICATE_CLUSTER)
    with pytest.raises(KubeAPIError, match=needle):
        load_kubeconfig(str(path))
    with pytest.raises(ks.KubeconfigServerError, match=needle):
        ks.inspect(DUPLICATE_CLUSTER, "kubeconfig")
    with pytest.raises(inp.ClusterEndpointError, match=needle):
        cms.kubeconfig_server(DUPLICATE_CLUSTER, "kubeconfig")
