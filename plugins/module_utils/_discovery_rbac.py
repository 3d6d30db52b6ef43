# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the kubeha.apiserver collection: this is NOT a public API. It backs the
# kubeha.apiserver.discovery_access module and may change in any release without notice.

"""The Role and the RoleBinding of the discovery access: the objects, the fields this module owns, the plans (pure).

Only the owned fields are compared: the rules, the roleRef, the subjects and the label ``app.kubernetes.io/managed-by``.
A RoleBinding's roleRef cannot be changed in Kubernetes, so a binding that refers to another role is planned to be
deleted and created again (``RECREATED``).
"""

from __future__ import annotations

import copy
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.kubeha.apiserver.plugins.module_utils._discovery_subjects import (
    RBAC_GROUP,
    DiscoveryAccessError,
    Subject,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._kubeapi import object_path

RBAC_API = f"/apis/{RBAC_GROUP}/v1"
API_VERSION = f"{RBAC_GROUP}/v1"
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "kubeha.apiserver"
RULES = (
    {
        "apiGroups": ["discovery.k8s.io"],
        "resources": ["endpointslices"],
        "resourceNames": ["kubernetes"],
        "verbs": ["get"],
    },
)
RULE_FIELDS = ("apiGroups", "resources", "resourceNames", "nonResourceURLs", "verbs")
ROLE, BINDING = "Role", "RoleBinding"
RESOURCES = {ROLE: "roles", BINDING: "rolebindings"}

# Actions, as the result reports them (in check mode: what would be done).
CREATED, UPDATED, RECREATED, DELETED, UNCHANGED, ABSENT = (
    "created",
    "updated",
    "recreated",
    "deleted",
    "unchanged",
    "absent",
)


def collection_path(namespace: str, kind: str) -> str:
    return f"{RBAC_API}/namespaces/{urllib.parse.quote(namespace, safe='')}/{RESOURCES[kind]}"


def rbac_path(namespace: str, kind: str, name: str) -> str:
    return object_path(RBAC_API, namespace, RESOURCES[kind], name)


def role_ref(name: str) -> dict[str, str]:
    return {"apiGroup": RBAC_GROUP, "kind": ROLE, "name": name}


def desired_object(kind: str, namespace: str, name: str, subjects: list[Subject]) -> dict[str, Any]:
    """The whole object to create."""
    obj: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace, "labels": {MANAGED_BY: MANAGER}},
    }
    if kind == ROLE:
        obj["rules"] = copy.deepcopy(list(RULES))
    else:
        obj["roleRef"] = role_ref(name)
        obj["subjects"] = [s.to_api() for s in subjects]
    return obj


def _strings(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def clean_rules(rules: Any) -> list[dict[str, list[str]]]:
    """The rules with only their non-empty fields, in their order (for display)."""
    result = []
    for rule in rules if isinstance(rules, list) else []:
        rule = rule if isinstance(rule, Mapping) else {}
        result.append({f: _strings(rule.get(f)) for f in RULE_FIELDS if _strings(rule.get(f))})
    return result


def _rule_key(rules: Any) -> list[tuple[tuple[str, ...], ...]]:
    """Rules compared as sets: the order of rules and of each field's values carries no meaning."""
    return sorted(tuple(tuple(sorted(set(rule.get(f, [])))) for f in RULE_FIELDS) for rule in clean_rules(rules))


def rules_match(rules: Any) -> bool:
    return _rule_key(rules) == _rule_key(list(RULES))


def subjects_of(binding: Mapping[str, Any]) -> list[Subject]:
    """The subjects of an existing RoleBinding, read as the RBAC authorizer reads them."""
    namespace = str((binding.get("metadata") or {}).get("namespace") or "")
    result = []
    for entry in binding.get("subjects") or []:
        if not isinstance(entry, Mapping):
            continue
        kind, name = str(entry.get("kind") or ""), str(entry.get("name") or "")
        subject_ns = str(entry.get("namespace") or "") if kind == "ServiceAccount" else ""
        result.append(Subject(kind, name, subject_ns or (namespace if kind == "ServiceAccount" else "")))
    return result


def role_ref_of(binding: Mapping[str, Any]) -> dict[str, str]:
    ref = binding.get("roleRef") or {}
    return {k: str(ref.get(k) or "") for k in ("apiGroup", "kind", "name")}


def _label(obj: Mapping[str, Any]) -> str | None:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    value = labels.get(MANAGED_BY)
    return None if value is None else str(value)


def managed_fields(obj: Mapping[str, Any] | None) -> dict[str, Any]:
    """What this module owns of the object, for the diff and the result; ``{}`` when it does not exist."""
    if obj is None:
        return {}
    label = _label(obj)
    view: dict[str, Any] = {"metadata": {"labels": {MANAGED_BY: label} if label is not None else {}}}
    if obj.get("kind") == BINDING or "roleRef" in obj:
        view["roleRef"] = role_ref_of(obj)
        view["subjects"] = [
            {k: v for k, v in entry.items() if k in ("kind", "apiGroup", "name", "namespace")}
            for entry in obj.get("subjects") or []
            if isinstance(entry, Mapping)
        ]
    else:
        view["rules"] = clean_rules(obj.get("rules"))
    return view


# --------------------------------------------------------------------------------------------------
# Planning (pure)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectPlan:
    """What to do with one object; ``current`` is the object as read (``None`` when missing)."""

    kind: str
    namespace: str
    name: str
    action: str
    current: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)
    after: dict[str, Any] | None = None
    reason: str = ""
    adopted_from: str | None = None

    @property
    def changed(self) -> bool:
        return self.action not in (UNCHANGED, ABSENT)

    @property
    def object(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    @property
    def adopted(self) -> bool:
        return self.current is not None and self.after is not None and _label(self.current) != MANAGER

    def summary(self) -> str:
        return f"{self.action} {self.object}" + (f": {self.reason}" if self.reason else "")

    def result(self) -> dict[str, Any]:
        view = managed_fields(self.after)
        entry: dict[str, Any] = {
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
            "action": self.action,
            "changed": self.changed,
            "exists": self.after is not None,
            "reason": self.reason,
        }
        if self.kind == ROLE:
            entry["rules"] = view.get("rules", [])
        else:
            entry["role_ref"] = view.get("roleRef", {})
            entry["subjects"] = view.get("subjects", [])
        return entry

    def diff(self) -> dict[str, Any]:
        header = self.object + " (managed fields)"
        return {
            "before": managed_fields(self.current),
            "after": managed_fields(self.after),
            "before_header": header,
            "after_header": header,
        }

    def unchanged(self) -> ObjectPlan:
        """This plan as it stands when nothing was written for it."""
        action = UNCHANGED if self.current is not None else ABSENT
        return ObjectPlan(self.kind, self.namespace, self.name, action, self.current, _copy(self.current))


def _copy(obj: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if obj is None else copy.deepcopy(dict(obj))


def _with_label(obj: Mapping[str, Any]) -> dict[str, Any]:
    new = copy.deepcopy(dict(obj))
    metadata = new.setdefault("metadata", {})
    labels = metadata.get("labels") or {}
    labels[MANAGED_BY] = MANAGER
    metadata["labels"] = labels
    return new


def _absent_plan(kind: str, namespace: str, name: str, current: Mapping[str, Any] | None) -> ObjectPlan:
    if current is None:
        return ObjectPlan(kind, namespace, name, ABSENT)
    label = _label(current)
    if label != MANAGER:
        found = f"{MANAGED_BY}={label}" if label is not None else f"no {MANAGED_BY} label"
        raise DiscoveryAccessError(
            f"{kind} {namespace}/{name} is not managed by {MANAGER} ({found}), so it is not deleted; "
            "delete it yourself if it is no longer needed. Nothing was changed"
        )
    return ObjectPlan(kind, namespace, name, DELETED, current, None)


def plan_role(current: Mapping[str, Any] | None, namespace: str, name: str, state: str) -> ObjectPlan:
    """Create the Role, give it exactly the rules and the label, or delete it."""
    if state == "absent":
        return _absent_plan(ROLE, namespace, name, current)
    if current is None:
        return ObjectPlan(ROLE, namespace, name, CREATED, None, desired_object(ROLE, namespace, name, []))
    after = _with_label(current)
    after["rules"] = copy.deepcopy(list(RULES))
    if rules_match(current.get("rules")) and _label(current) == MANAGER:
        return ObjectPlan(ROLE, namespace, name, UNCHANGED, current, _copy(current))
    return ObjectPlan(ROLE, namespace, name, UPDATED, current, after, adopted_from=_label(current))


def plan_binding(
    current: Mapping[str, Any] | None, namespace: str, name: str, subjects: list[Subject], state: str
) -> ObjectPlan:
    """Create the RoleBinding, set its subjects and label, recreate it for another roleRef, or delete it."""
    if state == "absent":
        return _absent_plan(BINDING, namespace, name, current)
    desired = desired_object(BINDING, namespace, name, subjects)
    if current is None:
        return ObjectPlan(BINDING, namespace, name, CREATED, None, desired)
    ref = role_ref_of(current)
    if ref != role_ref(name):
        reason = (
            f"its roleRef {ref['kind']} {ref['name']!r} (apiGroup {ref['apiGroup']!r}) cannot be changed in place "
            f"(roleRef is immutable), so it was deleted and created again with Role {name!r}"
        )
        return ObjectPlan(BINDING, namespace, name, RECREATED, current, desired, reason, _label(current))
    after = _with_label(current)
    after["subjects"] = [s.to_api() for s in subjects]
    existing = subjects_of(current)
    # Compared as sets (their order carries no meaning), but duplicates are written out once.
    if sorted(existing) == sorted(subjects) and _label(current) == MANAGER:
        return ObjectPlan(BINDING, namespace, name, UNCHANGED, current, _copy(current))
    return ObjectPlan(BINDING, namespace, name, UPDATED, current, after, adopted_from=_label(current))


def adoption_warning(plan: ObjectPlan) -> str | None:
    if not plan.adopted:
        return None
    previous = f"{MANAGED_BY}={plan.adopted_from}" if plan.adopted_from is not None else f"no {MANAGED_BY} label"
    return (
        f"{plan.object} existed with {previous}; it is now labelled {MANAGED_BY}={MANAGER} and managed by this module"
    )
