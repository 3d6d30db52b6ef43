# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the kubeha.apiserver collection: this is NOT a public API. It backs the
# kubeha.apiserver.discovery_access module and may change in any release without notice.

"""The guard's discovery access: a Role and a RoleBinding, validated, planned, then applied (the module's whole run).

Every node's guard reads the EndpointSlice ``kubernetes`` (the one the apiservers keep for the ``default/kubernetes``
Service) with the kubelet's client certificate (user ``system:node:<name>``, group ``system:nodes``), which the Node
authorizer and the default RBAC roles do not allow. The Role grants exactly ``get`` of that one object
(``resourceNames``; a ``list``, which RBAC cannot narrow to it, is not granted), and the RoleBinding of the same name
grants it to the nodes' group.

The parts: ``_discovery_subjects`` validates the input, ``_discovery_rbac`` holds the objects and plans them
(pure); this file reads, plans both objects, then writes them (``run`` and the small write helpers).
"""

from __future__ import annotations

import copy
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.kubeha.apiserver.plugins.module_utils._discovery_rbac import (
    BINDING,
    CREATED,
    DELETED,
    RECREATED,
    ROLE,
    UNCHANGED,
    UPDATED,
    ObjectPlan,
    adoption_warning,
    collection_path,
    plan_binding,
    plan_role,
    rbac_path,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._discovery_subjects import (
    DEFAULT_NAME,
    DEFAULT_NAMESPACE,
    DEFAULT_SUBJECTS,
    RBAC_GROUP,
    DiscoveryAccessError,
    Subject,
    normalize_subjects,
    validate_name,
    validate_namespace,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._kubeapi import KubeAPIError, update_with_retry

STATES = ("present", "absent")


class AfterChangeError(DiscoveryAccessError):
    """Something failed after an object was already changed; ``outcome`` says which."""

    def __init__(self, message: str, outcome: Outcome) -> None:
        super().__init__(message)
        self.outcome = outcome


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
