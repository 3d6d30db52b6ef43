# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the kubeha.apiserver collection: this is NOT a public API. It backs the
# kubeha.apiserver.discovery_access module and may change in any release without notice.

"""The guard's discovery access: a Role and a RoleBinding, validated, planned (pure), then applied.

Every node's guard reads the EndpointSlice ``kubernetes`` (the one the apiservers keep for the ``default/kubernetes``
Service) with the kubelet's client certificate (user ``system:node:<name>``, group ``system:nodes``), which the Node
authorizer and the default RBAC roles do not allow. The Role grants exactly ``get`` of that one object
(``resourceNames``; a ``list``, which RBAC cannot narrow to it, is not granted), and the RoleBinding of the same name
grants it to the nodes' group. Subjects that would give it to everyone (``system:authenticated``,
``system:unauthenticated``, ``system:anonymous``, every service account) are refused.

Only the fields this module owns are compared: the rules, the roleRef, the subjects and the label
``app.kubernetes.io/managed-by``. A RoleBinding's roleRef cannot be changed in Kubernetes, so a binding
that refers to another role is deleted (with preconditions on its uid and resourceVersion) and created
again. Everything except ``run`` and the small write helpers is pure logic.
"""

from __future__ import annotations

import copy
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.kubeha.apiserver.plugins.module_utils._kubeapi import (
    KubeAPIError,
    object_path,
    update_with_retry,
)

RBAC_GROUP = "rbac.authorization.k8s.io"
RBAC_API = f"/apis/{RBAC_GROUP}/v1"
API_VERSION = f"{RBAC_GROUP}/v1"
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "kubeha.apiserver"
DEFAULT_NAME = "kubeha-apiserver:discovery"
DEFAULT_NAMESPACE = "default"
DEFAULT_SUBJECTS = ({"kind": "Group", "name": "system:nodes"},)
RULES = (
    {
        "apiGroups": ["discovery.k8s.io"],
        "resources": ["endpointslices"],
        "resourceNames": ["kubernetes"],
        "verbs": ["get"],
    },
)
# Subjects that stand for everyone (or every workload): the grant is the nodes', never theirs.
BROAD_SUBJECTS = {
    ("Group", "system:authenticated"),
    ("Group", "system:unauthenticated"),
    ("User", "system:anonymous"),
    ("Group", "system:serviceaccounts"),
}
RULE_FIELDS = ("apiGroups", "resources", "resourceNames", "nonResourceURLs", "verbs")
SUBJECT_KINDS = ("User", "Group", "ServiceAccount")
STATES = ("present", "absent")
ROLE, BINDING = "Role", "RoleBinding"
RESOURCES = {ROLE: "roles", BINDING: "rolebindings"}

# What the apiserver accepts (k8s.io/apimachinery validation): a namespace is a DNS-1123 label, a service
# account name a DNS-1123 subdomain, an RBAC object name any path segment.
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")

# Actions, as the result reports them (in check mode: what would be done).
CREATED, UPDATED, RECREATED, DELETED, UNCHANGED, ABSENT = (
    "created",
    "updated",
    "recreated",
    "deleted",
    "unchanged",
    "absent",
)


class DiscoveryAccessError(Exception):
    """The one error of this domain; its message is meant for the user as is."""


class AfterChangeError(DiscoveryAccessError):
    """Something failed after an object was already changed; ``outcome`` says which."""

    def __init__(self, message: str, outcome: Outcome) -> None:
        super().__init__(message)
        self.outcome = outcome


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def validate_namespace(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise DiscoveryAccessError(f"namespace must be a non-empty string, not {value!r}")
    if len(value) > 63 or not _DNS_LABEL.fullmatch(value):
        raise DiscoveryAccessError(
            f"namespace {value!r} is not a valid namespace name (lower case letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters)"
        )
    return value


def validate_name(value: Any) -> str:
    """The Role and RoleBinding name: what the apiserver accepts for RBAC objects (a path segment)."""
    if not isinstance(value, str) or not value:
        raise DiscoveryAccessError(f"name must be a non-empty string, not {value!r}")
    if value in (".", "..") or "/" in value or "%" in value:
        raise DiscoveryAccessError(
            f"name {value!r} is not a valid Role name: it may not be '.' or '..' or hold '/' or '%'"
        )
    if value != value.strip() or len(value) > 253:
        raise DiscoveryAccessError(
            f"name {value!r} is not a valid Role name: no surrounding spaces, at most 253 characters"
        )
    return value


@dataclass(frozen=True, order=True)
class Subject:
    """A RoleBinding subject; ``namespace`` is set for a ServiceAccount only."""

    kind: str
    name: str
    namespace: str = ""

    @property
    def api_group(self) -> str:
        return "" if self.kind == "ServiceAccount" else RBAC_GROUP

    def to_api(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"kind": self.kind, "apiGroup": self.api_group, "name": self.name}
        if self.namespace:
            entry["namespace"] = self.namespace
        return entry

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"


def normalize_subjects(values: Any, namespace: str) -> list[Subject]:
    """The subjects, validated, in order and without duplicates.

    A ServiceAccount without a namespace is in the RoleBinding's ``namespace`` (as the RBAC authorizer
    reads it), and is written so. ``namespace`` is refused for a User or Group, where it means nothing.
    """
    if isinstance(values, (str, Mapping)) or not isinstance(values, Iterable):
        raise DiscoveryAccessError(f"subjects must be a list of {{kind, name, namespace}} mappings, not {values!r}")
    result: list[Subject] = []
    for index, value in enumerate(values):
        where = f"subjects[{index}]"
        if not isinstance(value, Mapping):
            raise DiscoveryAccessError(f"{where} must be a mapping with kind and name, not {value!r}")
        unknown = sorted(str(k) for k in value if k not in ("kind", "name", "namespace"))
        if unknown:
            raise DiscoveryAccessError(f"{where} has unknown keys {', '.join(unknown)} (known: kind, name, namespace)")
        kind = value.get("kind")
        if kind not in SUBJECT_KINDS:
            raise DiscoveryAccessError(f"{where}.kind {kind!r} is not one of {', '.join(SUBJECT_KINDS)}")
        name = value.get("name")
        if not isinstance(name, str) or not name.strip():
            raise DiscoveryAccessError(f"{where} ({kind}) has no name")
        if name != name.strip():
            raise DiscoveryAccessError(f"{where}.name {name!r} has leading or trailing spaces")
        subject_ns = value.get("namespace") or ""
        if not isinstance(subject_ns, str):
            raise DiscoveryAccessError(f"{where}.namespace must be a string, not {subject_ns!r}")
        if kind == "ServiceAccount":
            if len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name):
                raise DiscoveryAccessError(f"{where}.name {name!r} is not a valid ServiceAccount name")
            try:
                subject_ns = validate_namespace(subject_ns or namespace)
            except DiscoveryAccessError as exc:
                raise DiscoveryAccessError(f"{where}: {exc}") from exc
        elif subject_ns:
            raise DiscoveryAccessError(
                f"{where}: namespace is only meaningful for a ServiceAccount, not for {kind} {name!r}"
            )
        if (kind, name) in BROAD_SUBJECTS or (kind == "Group" and name.startswith("system:serviceaccounts:")):
            raise DiscoveryAccessError(
                f"{where} {kind} {name!r} stands for more than the nodes (everyone, or every workload): the "
                "discovery grant is for the nodes' identity (system:nodes) or a dedicated one"
            )
        subject = Subject(kind, name, subject_ns)
        if subject not in result:
            result.append(subject)
    if not result:
        raise DiscoveryAccessError("subjects is empty: give at least one subject, or use state=absent")
    return result


# --------------------------------------------------------------------------------------------------
# The objects and their managed fields (pure)
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# The module's whole run
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    role: ObjectPlan
    binding: ObjectPlan
    warnings: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.role.changed or self.binding.changed

    @property
    def diff(self) -> list[dict[str, Any]]:
        return [self.role.diff(), self.binding.diff()]

    def result(self) -> dict[str, Any]:
        """The module's return values (without ``diff`` and ``warnings``)."""
        plans = (self.role, self.binding)
        return {
            "changed": self.changed,
            "role": self.role.result(),
            "role_binding": self.binding.result(),
            "actions": [plan.summary() for plan in plans if plan.changed],
        }


@dataclass(frozen=True)
class Request:
    """The validated parameters."""

    namespace: str
    name: str
    subjects: list[Subject]
    state: str
    kubeconfig: str = ""


def validate(params: Mapping[str, Any]) -> Request:
    state = params.get("state") or "present"
    if state not in STATES:
        raise DiscoveryAccessError(f"state {state!r} is not one of {', '.join(STATES)}")
    namespace = validate_namespace(params.get("namespace") or DEFAULT_NAMESPACE)
    name = validate_name(params.get("name") or DEFAULT_NAME)
    raw = params.get("subjects")
    subjects = normalize_subjects([dict(s) for s in DEFAULT_SUBJECTS] if raw is None else raw, namespace)
    return Request(namespace, name, subjects, state, str(params.get("kubeconfig") or ""))


def _read(client: Any, path: str) -> dict[str, Any] | None:
    try:
        return client.get(path)
    except KubeAPIError as exc:
        if exc.status == 404:
            return None
        raise


def _hint(exc: KubeAPIError, request: Request) -> KubeAPIError:
    """A 403 with what the kubeconfig's user needs; any other error as it is."""
    if exc.status != 403:
        return exc
    source = f"the user of {request.kubeconfig}" if request.kubeconfig else "the user"
    return KubeAPIError(
        f"{exc} ({source} needs get, create, update and delete on roles and rolebindings of {RBAC_GROUP} in "
        f"namespace {request.namespace}, and itself get, list and watch on endpointslices there or the escalate "
        "and bind verbs, as cluster-admin has; /etc/kubernetes/admin.conf has them on a kubeadm cluster)",
        403,
    )


def run(params: Mapping[str, Any], client_factory: Callable[[], Any], check_mode: bool) -> Outcome:
    """Validate, read both objects, plan both, then write (unless ``check_mode``).

    Nothing is written unless both objects could be read and planned. ``present`` writes the Role first and
    the RoleBinding second; ``absent`` deletes the RoleBinding first, so no binding is ever left pointing
    at a missing Role. ``client_factory()`` returns an object with ``get``, ``post``, ``put`` and
    ``delete`` (a ``KubeClient``); ``close()`` is called on it at the end when it has one. All input is
    validated before it is called.
    """
    request = validate(params)
    client = client_factory()
    try:
        try:
            role = plan_role(
                _read(client, rbac_path(request.namespace, ROLE, request.name)),
                request.namespace,
                request.name,
                request.state,
            )
            binding = plan_binding(
                _read(client, rbac_path(request.namespace, BINDING, request.name)),
                request.namespace,
                request.name,
                request.subjects,
                request.state,
            )
            if role.action == CREATED or binding.action == CREATED:
                _namespace_exists(client, request.namespace)
        except KubeAPIError as exc:
            raise _hint(exc, request) from exc
        warnings = [w for w in (adoption_warning(role), adoption_warning(binding)) if w]
        if check_mode:
            return Outcome(role, binding, warnings)

        done: dict[str, ObjectPlan] = {}

        def outcome() -> Outcome:
            return Outcome(done.get(ROLE) or role.unchanged(), done.get(BINDING) or binding.unchanged(), warnings)

        order = (role, binding) if request.state == "present" else (binding, role)
        for plan in order:
            if not plan.changed:
                done[plan.kind] = plan
                continue
            try:
                done[plan.kind] = _apply(client, plan, request)
            except (KubeAPIError, DiscoveryAccessError) as exc:
                error = _hint(exc, request) if isinstance(exc, KubeAPIError) else exc
                raise AfterChangeError(_after_change(f"{plan.object}: {error}", done), outcome()) from exc
        return outcome()
    finally:
        close = getattr(client, "close", None)
        if callable(close):
            close()


def _namespace_exists(client: Any, namespace: str) -> None:
    try:
        client.get(f"/api/v1/namespaces/{urllib.parse.quote(namespace, safe='')}")
    except KubeAPIError as exc:
        if exc.status == 404:
            raise DiscoveryAccessError(f"namespace {namespace} does not exist; nothing was changed") from exc
        raise


def _preconditions(obj: Mapping[str, Any]) -> dict[str, Any]:
    """``DeleteOptions`` that delete exactly the object that was read, or fail with 409."""
    metadata = obj.get("metadata") or {}
    preconditions = {k: metadata[k] for k in ("uid", "resourceVersion") if metadata.get(k)}
    return {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": preconditions}


def _changed_meanwhile(exc: KubeAPIError) -> DiscoveryAccessError:
    return DiscoveryAccessError(f"it was changed by someone else after it was read ({exc}); run the task again")


def _apply(client: Any, plan: ObjectPlan, request: Request) -> ObjectPlan:
    """Carry out one changed plan; the plan as done (``after`` is what the apiserver answered)."""
    path = rbac_path(plan.namespace, plan.kind, plan.name)
    if plan.action == CREATED:
        created = _create(client, plan)
        return ObjectPlan(plan.kind, plan.namespace, plan.name, CREATED, None, created)
    if plan.action in (DELETED, RECREATED):
        try:
            client.delete(path, _preconditions(plan.current or {}))
        except KubeAPIError as exc:
            if exc.status == 409:
                raise _changed_meanwhile(exc) from exc
            if exc.status != 404:  # already gone: someone deleted it meanwhile
                raise
        if plan.action == DELETED:
            return plan
        created = _create(client, plan)
        return ObjectPlan(
            plan.kind, plan.namespace, plan.name, RECREATED, plan.current, created, plan.reason, plan.adopted_from
        )
    # UPDATED: from a fresh read, planned again (update_with_retry retries conflicts)
    seen: list[ObjectPlan] = []
    before, after = update_with_retry(client, path, _mutator(plan, request, seen))
    last = seen[-1] if seen else plan
    if last.action == UNCHANGED:
        return ObjectPlan(plan.kind, plan.namespace, plan.name, UNCHANGED, before, after)
    return ObjectPlan(plan.kind, plan.namespace, plan.name, UPDATED, before, after, adopted_from=last.adopted_from)


def _create(client: Any, plan: ObjectPlan) -> dict[str, Any]:
    if plan.after is None:
        raise DiscoveryAccessError("internal error: there is no object to create")
    try:
        return client.post(collection_path(plan.namespace, plan.kind), plan.after)
    except KubeAPIError as exc:
        if exc.status == 409:
            raise DiscoveryAccessError(f"it was created by someone else meanwhile ({exc}); run the task again") from exc
        raise


def _mutator(
    plan: ObjectPlan, request: Request, seen: list[ObjectPlan]
) -> Callable[[dict[str, Any]], dict[str, Any] | None]:
    """The ``mutate`` of ``update_with_retry``: plan again on the fresh object, note the plan in ``seen``."""

    def mutate(obj: dict[str, Any]) -> dict[str, Any] | None:
        if plan.kind == ROLE:
            fresh = plan_role(obj, request.namespace, request.name, request.state)
        else:
            fresh = plan_binding(obj, request.namespace, request.name, request.subjects, request.state)
        seen.append(fresh)
        if fresh.action == UNCHANGED:
            return None
        if fresh.action != UPDATED or fresh.after is None:
            raise DiscoveryAccessError(
                f"it was changed by someone else after it was read ({fresh.summary()} would be needed now); "
                "run the task again"
            )
        return copy.deepcopy(fresh.after)

    return mutate


def _after_change(message: str, done: Mapping[str, ObjectPlan]) -> str:
    changed = [plan.summary() for plan in done.values() if plan.changed]
    if not changed:
        return f"{message}; nothing was changed"
    return f"{message}; already done: {', '.join(changed)}"
