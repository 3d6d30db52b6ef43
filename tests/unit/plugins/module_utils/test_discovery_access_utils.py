# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""_discovery_subjects, _discovery_rbac and _discovery_access.validate: validation, the managed fields and the pure
plans of the Role and the RoleBinding."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from ansible_collections.kubeha.apiserver.plugins.module_utils._discovery_access import validate
from ansible_collections.kubeha.apiserver.plugins.module_utils._discovery_rbac import (
    MANAGED_BY,
    MANAGER,
    adoption_warning,
    collection_path,
    managed_fields,
    plan_binding,
    plan_role,
    rbac_path,
    rules_match,
    subjects_of,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._discovery_subjects import (
    DiscoveryAccessError,
    Subject,
    normalize_subjects,
    validate_name,
    validate_namespace,
)

NAME, NS = "kubeha-apiserver:discovery", "default"
NODES = Subject("Group", "system:nodes")
RULE = {
    "apiGroups": ["discovery.k8s.io"],
    "resources": ["endpointslices"],
    "resourceNames": ["kubernetes"],
    "verbs": ["get"],
}
SERVER_METADATA = {
    "uid": "0b7e5f0c-1111-2222-3333-444455556666",
    "resourceVersion": "4242",
    "creationTimestamp": "2025-01-01T00:00:00Z",
    "managedFields": [{"manager": "kubectl", "operation": "Update"}],
}


def role(rules: list[dict[str, Any]] | None = None, labels: dict[str, str] | None = None) -> dict[str, Any]:
    labels = {MANAGED_BY: MANAGER} if labels is None else labels
    return {
        "kind": "Role",
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "metadata": {"name": NAME, "namespace": NS, "labels": labels, **SERVER_METADATA},
        "rules": [RULE] if rules is None else rules,
    }


def binding(
    subjects: list[dict[str, Any]] | None = None,
    ref: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    labels = {MANAGED_BY: MANAGER} if labels is None else labels
    return {
        "kind": "RoleBinding",
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "metadata": {"name": NAME, "namespace": NS, "labels": labels, **SERVER_METADATA},
        "roleRef": ref or {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME},
        "subjects": [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "system:nodes"}]
        if subjects is None
        else subjects,
    }


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def test_defaults() -> None:
    request = validate({})
    assert (request.namespace, request.name, request.state) == (NS, NAME, "present")
    assert request.subjects == [NODES]


@pytest.mark.parametrize("value", ["default", "kube-system", "a", "a" * 63, "x1-y2"])
def test_valid_namespaces(value: str) -> None:
    assert validate_namespace(value) == value


@pytest.mark.parametrize("value", ["Default", "-a", "a-", "a_b", "a.b", "a" * 64, ""])
def test_invalid_namespaces(value: str) -> None:
    with pytest.raises(DiscoveryAccessError, match="namespace"):
        validate_namespace(value)


@pytest.mark.parametrize("value", [NAME, "system:kubeha", "Any Thing:ok", "a.b"])
def test_valid_names(value: str) -> None:
    assert validate_name(value) == value


@pytest.mark.parametrize("value", ["", ".", "..", "a/b", "a%2F", " lead", "trail ", "x" * 254])
def test_invalid_names(value: str) -> None:
    with pytest.raises(DiscoveryAccessError, match="name"):
        validate_name(value)


def test_subjects_are_deduplicated_and_service_accounts_get_the_namespace() -> None:
    raw = [
        {"kind": "Group", "name": "system:nodes", "namespace": None},
        {"kind": "User", "name": "system:node:w1"},
        {"kind": "ServiceAccount", "name": "guard"},
        {"kind": "ServiceAccount", "name": "prom", "namespace": "monitoring"},
        {"kind": "Group", "name": "system:nodes"},
        {"kind": "ServiceAccount", "name": "guard", "namespace": NS},
    ]
    assert normalize_subjects(raw, NS) == [
        NODES,
        Subject("User", "system:node:w1"),
        Subject("ServiceAccount", "guard", NS),
        Subject("ServiceAccount", "prom", "monitoring"),
    ]
    assert Subject("ServiceAccount", "guard", NS).to_api() == {
        "kind": "ServiceAccount",
        "apiGroup": "",
        "name": "guard",
        "namespace": NS,
    }
    assert NODES.to_api() == {"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "system:nodes"}


@pytest.mark.parametrize(
    ("subjects", "message"),
    [
        ([{"kind": "Pod", "name": "x"}], "subjects[0].kind 'Pod' is not one of User, Group, ServiceAccount"),
        ([{"kind": "group", "name": "x"}], "subjects[0].kind 'group' is not one of"),
        ([NODES.to_api() | {"apiGroup": ""}], "subjects[0] has unknown keys apiGroup"),
        ([{"kind": "Group", "name": "a"}, {"kind": "User", "name": ""}], "subjects[1] (User) has no name"),
        ([{"kind": "User", "name": " admin"}], "leading or trailing spaces"),
        ([{"kind": "User", "name": "bob", "namespace": "x"}], "namespace is only meaningful for a ServiceAccount"),
        ([{"kind": "ServiceAccount", "name": "Bad_SA"}], "'Bad_SA' is not a valid ServiceAccount name"),
        (
            [{"kind": "ServiceAccount", "name": "sa", "namespace": "No"}],
            "subjects[0]: namespace 'No' is not a valid namespace name",
        ),
        ([], "subjects is empty"),
        ("system:nodes", "subjects must be a list"),
        ([["Group", "system:nodes"]], "subjects[0] must be a mapping"),
    ],
)
def test_bad_subjects(subjects: Any, message: str) -> None:
    with pytest.raises(DiscoveryAccessError) as info:
        validate({"subjects": subjects})
    assert message in str(info.value)


def test_bad_state() -> None:
    with pytest.raises(DiscoveryAccessError, match="state 'gone' is not one of present, absent"):
        validate({"state": "gone"})


def test_paths_quote_the_name() -> None:
    assert rbac_path(NS, "Role", NAME) == (
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles/kubeha-apiserver%3Adiscovery"
    )
    assert collection_path("kube-system", "RoleBinding") == (
        "/apis/rbac.authorization.k8s.io/v1/namespaces/kube-system/rolebindings"
    )


# --------------------------------------------------------------------------------------------------
# Comparing only what the module owns
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("Group", "system:authenticated"),
        ("Group", "system:unauthenticated"),
        ("User", "system:anonymous"),
        ("Group", "system:serviceaccounts"),
        ("Group", "system:serviceaccounts:kube-system"),
    ],
)
def test_subjects_that_stand_for_everyone_are_refused(kind: str, name: str) -> None:
    with pytest.raises(DiscoveryAccessError, match=rf"subjects\[1\] {kind} '{name}' stands for more than the nodes"):
        normalize_subjects([{"kind": "Group", "name": "system:nodes"}, {"kind": kind, "name": name}], "default")


def test_negative_control_the_nodes_and_a_dedicated_identity_are_accepted() -> None:
    subjects = [
        {"kind": "Group", "name": "system:nodes"},
        {"kind": "User", "name": "kubeha-guard"},
        {"kind": "ServiceAccount", "name": "kubeha-guard", "namespace": "kube-system"},
    ]
    assert [str(s) for s in normalize_subjects(subjects, "default")] == [
        "Group system:nodes",
        "User kubeha-guard",
        "ServiceAccount kube-system/kubeha-guard",
    ]


def test_rules_compare_as_sets() -> None:
    assert rules_match([RULE])
    two = {**RULE, "apiGroups": ["discovery.k8s.io", "discovery.k8s.io"], "verbs": ["get", "get"]}
    assert rules_match([two])  # the same sets, written otherwise
    assert not rules_match([{**RULE, "verbs": ["get", "list"]}])
    assert not rules_match([RULE, {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}])
    assert not rules_match([{**RULE, "resourceNames": []}])  # every EndpointSlice: wider than the one needed
    assert not rules_match([{**RULE, "resourceNames": ["kubernetes", "other"]}])
    assert not rules_match([])
    assert not rules_match(None)


def test_subjects_of_reads_them_as_the_authorizer_does() -> None:
    obj = binding([{"kind": "ServiceAccount", "name": "guard"}, {"kind": "User", "name": "u", "namespace": "x"}])
    assert subjects_of(obj) == [Subject("ServiceAccount", "guard", NS), Subject("User", "u")]


def test_managed_fields_leave_server_metadata_out() -> None:
    obj = role()
    obj["metadata"]["labels"]["team"] = "platform"
    obj["metadata"]["annotations"] = {"note": "x"}
    assert managed_fields(obj) == {"metadata": {"labels": {MANAGED_BY: MANAGER}}, "rules": [RULE]}
    assert managed_fields(binding()) == {
        "metadata": {"labels": {MANAGED_BY: MANAGER}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME},
        "subjects": [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "system:nodes"}],
    }
    assert managed_fields(None) == {}


# --------------------------------------------------------------------------------------------------
# Plans
# --------------------------------------------------------------------------------------------------


def test_role_plans() -> None:
    created = plan_role(None, NS, NAME, "present")
    assert created.action == "created" and created.changed
    assert created.after == {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": NAME, "namespace": NS, "labels": {MANAGED_BY: MANAGER}},
        "rules": [RULE],
    }
    assert plan_role(role(), NS, NAME, "present").action == "unchanged"
    # server-populated metadata and other people's labels never make a change
    other = role(labels={MANAGED_BY: MANAGER, "team": "platform"})
    other["metadata"]["resourceVersion"] = "999"
    assert plan_role(other, NS, NAME, "present").action == "unchanged"

    widened = plan_role(
        role([RULE, {"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}]), NS, NAME, "present"
    )
    assert widened.action == "updated"
    assert widened.after is not None and widened.after["rules"] == [RULE]
    assert widened.after["metadata"]["uid"] == SERVER_METADATA["uid"]
    assert adoption_warning(widened) is None


def test_role_without_the_label_is_adopted_with_a_warning() -> None:
    foreign = role(labels={"team": "platform"})
    plan = plan_role(foreign, NS, NAME, "present")
    assert plan.action == "updated"
    assert plan.after is not None and plan.after["metadata"]["labels"] == {"team": "platform", MANAGED_BY: MANAGER}
    warning = adoption_warning(plan)
    assert warning == (
        f"Role default/{NAME} existed with no {MANAGED_BY} label; it is now labelled {MANAGED_BY}={MANAGER} "
        "and managed by this module"
    )
    assert foreign["metadata"]["labels"] == {"team": "platform"}  # the input is not mutated


def test_binding_plans() -> None:
    assert plan_binding(None, NS, NAME, [NODES], "present").action == "created"
    assert plan_binding(binding(), NS, NAME, [NODES], "present").action == "unchanged"
    # apiGroup defaulted by the server or not, same subject
    assert (
        plan_binding(binding([{"kind": "Group", "name": "system:nodes"}]), NS, NAME, [NODES], "present").changed
        is False
    )
    two = [Subject("User", "system:node:w1"), NODES]
    reordered = binding([s.to_api() for s in reversed(two)])
    assert plan_binding(reordered, NS, NAME, two, "present").action == "unchanged"

    narrowed = plan_binding(binding(), NS, NAME, two, "present")
    assert narrowed.action == "updated"
    assert narrowed.after is not None and narrowed.after["subjects"] == [s.to_api() for s in two]
    duplicated = binding([NODES.to_api(), NODES.to_api()])
    assert plan_binding(duplicated, NS, NAME, [NODES], "present").action == "updated"


def test_binding_to_another_role_is_recreated() -> None:
    old = binding(ref={"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"})
    plan = plan_binding(old, NS, NAME, [NODES], "present")
    assert plan.action == "recreated" and plan.changed
    assert "roleRef ClusterRole 'view'" in plan.reason and "immutable" in plan.reason
    assert plan.after is not None and plan.after["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": NAME,
    }
    assert "uid" not in plan.after["metadata"]
    assert plan.summary().startswith(f"recreated RoleBinding default/{NAME}: its roleRef ClusterRole 'view'")
    assert plan.diff()["before"]["roleRef"]["kind"] == "ClusterRole"
    assert plan.diff()["after"]["roleRef"]["kind"] == "Role"


def test_absent_plans() -> None:
    assert plan_role(None, NS, NAME, "absent").action == "absent"
    assert plan_binding(None, NS, NAME, [NODES], "absent").changed is False
    deleted = plan_role(role(), NS, NAME, "absent")
    assert deleted.action == "deleted" and deleted.after is None
    assert deleted.result()["exists"] is False and deleted.result()["rules"] == []
    assert deleted.diff()["after"] == {}
    with pytest.raises(DiscoveryAccessError) as info:
        plan_binding(binding(labels={MANAGED_BY: "helm"}), NS, NAME, [NODES], "absent")
    assert str(info.value) == (
        f"RoleBinding default/{NAME} is not managed by kubeha.apiserver ({MANAGED_BY}=helm), so it is not deleted; "
        "delete it yourself if it is no longer needed. Nothing was changed"
    )


def test_unchanged_plan_keeps_what_was_read() -> None:
    current = role()
    plan = plan_role(copy.deepcopy(current), NS, NAME, "present")
    assert plan.unchanged().after == current
    assert plan_role(None, NS, NAME, "present").unchanged().action == "absent"
