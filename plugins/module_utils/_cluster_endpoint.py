# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the kubeha.apiserver collection: this is NOT a public API. It backs the
# kubeha.apiserver.cluster_endpoint module and may change in any release without notice.

"""The cluster-side objects that name the apiserver endpoint: the module's whole run.

Three ConfigMaps are handled, each by its own file:

- ``kube-public/cluster-info``, key ``kubeconfig``: the ``server`` of its cluster (kubeadm's discovery),
  ``_configmap_server``; its bootstrap-token signatures, ``_bootstrap_signatures``;
- ``kube-system/kube-proxy``, key ``kubeconfig.conf``: the same ``server``, and kube-proxy's DaemonSet restarted
  when its pods run another ConfigMap (``_daemonset_restart``);
- ``kube-system/kubeadm-config``, key ``ClusterConfiguration``: entries of ``apiServer.certSANs``,
  ``_kubeadm_cert_sans``.

The targets and the validation of the parameters are in ``_cluster_endpoint_input``. ``run`` reads every target,
plans them all, then writes the changed ones.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ansible_collections.kubeha.apiserver.plugins.module_utils._bootstrap_signatures import wait_signed
from ansible_collections.kubeha.apiserver.plugins.module_utils._cluster_endpoint_input import (
    CLUSTER_INFO,
    KUBE_PROXY,
    KUBEADM_CONFIG,
    STATES,
    TARGET_SPECS,
    ClusterEndpointError,
    Target,
    normalize_sans,
    normalize_server,
    normalize_targets,
    server_host,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._configmap_server import (
    ServerPlan,
    apply_server,
    plan_server,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._daemonset_restart import (
    daemonset_restart_due,
    record_running_configuration,
    restarted_for,
    rollout_restart,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._kubeadm_cert_sans import SansPlan, plan_kubeadm_config
from ansible_collections.kubeha.apiserver.plugins.module_utils._kubeapi import (
    KubeAPIError,
    daemonset_path,
    update_with_retry,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._san import san_key


class AfterChangeError(ClusterEndpointError):
    """Something failed after objects were already changed; ``outcome`` says which."""

    def __init__(self, message: str, outcome: Outcome) -> None:
        super().__init__(message)
        self.outcome = outcome


@dataclass(frozen=True)
class Outcome:
    server: str | None
    objects: dict[str, dict[str, Any]]
    diff: list[dict[str, Any]]
    signed_tokens: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    kube_proxy_restarted: bool = False

    @property
    def changed(self) -> bool:
        return self.kube_proxy_restarted or any(obj["changed"] for obj in self.objects.values())

    def result(self) -> dict[str, Any]:
        """The module's return values (without ``diff`` and ``warnings``)."""
        return {
            "changed": self.changed,
            "server": self.server,
            "objects": copy.deepcopy(self.objects),
            "changed_objects": [obj["object"] for obj in self.objects.values() if obj["changed"]],
            "signed_tokens": list(self.signed_tokens),
            "kube_proxy_restarted": self.kube_proxy_restarted,
        }


def _plan(
    target: Target, obj: Mapping[str, Any] | None, server: str | None, sans: list[str], state: str
) -> ServerPlan | SansPlan:
    if target.name == KUBEADM_CONFIG:
        return plan_kubeadm_config(obj, target, sans, state)
    if obj is None:
        raise ClusterEndpointError(f"ConfigMap {target.object} was not found")
    return plan_server(obj, target, server, state)


def _apply(obj: dict[str, Any], plan: ServerPlan | SansPlan) -> dict[str, Any]:
    if isinstance(plan, ServerPlan):
        return apply_server(obj, plan)
    obj.setdefault("data", {})[plan.target.key] = plan.text_after
    return obj


def _missing(target: Target) -> ClusterEndpointError:
    hints = {
        CLUSTER_INFO: "the cluster has no kubeadm discovery information (kubeadm init phase bootstrap-token "
        "creates it)",
        KUBE_PROXY: "kube-proxy is not managed by kubeadm here: point its own kubeconfig at the endpoint",
    }
    return ClusterEndpointError(
        f"ConfigMap {target.object} was not found: {hints.get(target.name, '')}; leave {target.name} out of "
        "targets to go on without it. Nothing was changed"
    )


def run(
    params: Mapping[str, Any],
    client_factory: Callable[[], Any],
    check_mode: bool,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> Outcome:
    """Validate, read every target, plan them all, then write the changed ones (unless ``check_mode``).

    Nothing is written unless every target could be read and planned. ``client_factory()`` returns an
    object with ``get`` and ``put`` (a ``KubeClient``); ``close()`` is called on it at the end when it has
    one. All input is validated before it is called.
    """
    state = params.get("state") or "present"
    if state not in STATES:
        raise ClusterEndpointError(f"state {state!r} is not one of {', '.join(STATES)}")
    raw_server = params.get("server")
    server = normalize_server(raw_server) if raw_server is not None or state == "present" else None
    sans = normalize_sans(params.get("cert_sans"))
    targets = [TARGET_SPECS[name] for name in normalize_targets(params.get("targets"))]
    kubeadm_required = bool(params.get("kubeadm_config_required"))
    wait = bool(params.get("wait_signed"))
    restart_daemonset = params.get("restart_kube_proxy") or ""
    timeout = params.get("timeout")
    timeout = 120 if timeout is None else int(timeout)
    if timeout < 0:
        raise ClusterEndpointError(f"timeout must be 0 or more seconds, not {timeout}")

    client = client_factory()
    try:
        pods: dict[str, Any] = {}  # kube-proxy's DaemonSet, with restart_kube_proxy
        if restart_daemonset:
            try:
                pods = client.get(daemonset_path("kube-system", restart_daemonset))
            except KubeAPIError as exc:
                raise ClusterEndpointError(
                    f"cannot read DaemonSet kube-system/{restart_daemonset} (restart_kube_proxy): {exc}; nothing was "
                    "changed"
                ) from exc
        plans: dict[str, ServerPlan | SansPlan] = {}
        read: dict[str, dict[str, Any]] = {}
        for target in targets:
            try:
                obj = client.get(target.path)
            except KubeAPIError as exc:
                if exc.status != 404:
                    raise
                if target.name != KUBEADM_CONFIG:
                    raise _missing(target) from exc
                obj = None
            if obj is not None:
                read[target.name] = obj
            plan = _plan(target, obj, server, sans, state)
            if isinstance(plan, SansPlan) and plan.skipped and kubeadm_required:
                raise ClusterEndpointError(f"kubeadm_config_required is set, but {plan.message}; nothing was changed")
            plans[target.name] = plan

        warnings = _warnings(plans, server, state)
        written: dict[str, ServerPlan | SansPlan] = {}

        def outcome(signed: list[str] | None = None, restarted: bool = False) -> Outcome:
            shown = plans if check_mode else {n: written.get(n) or _unchanged(p) for n, p in plans.items()}
            objects = {name: plan.result() for name, plan in shown.items()}
            diff = [plan.diff() for plan in shown.values() if not (isinstance(plan, SansPlan) and plan.skipped)]
            return Outcome(server, objects, diff, signed or [], warnings, restarted)

        # kube-proxy reads kubeconfig.conf only when it starts: its DaemonSet is rolled when its pods run another
        # ConfigMap than the one there now (the marker on the DaemonSet, recorded before a change), so a run that
        # died between the change and the restart is completed by the next one.
        proxy_before = read.get(KUBE_PROXY)
        restart_due_now = bool(restart_daemonset and proxy_before is not None)
        if check_mode:
            if restart_due_now:
                proxy_after = _apply(copy.deepcopy(proxy_before), plans[KUBE_PROXY])
                return replace(outcome(), kube_proxy_restarted=daemonset_restart_due(pods, proxy_before, proxy_after))
            return outcome()
        if restart_due_now and plans[KUBE_PROXY].changed and restarted_for(pods) is None:
            pods = record_running_configuration(client, "kube-system", restart_daemonset, pods, proxy_before)
        for target in targets:
            if not plans[target.name].changed:
                continue
            seen: list[ServerPlan | SansPlan] = []
            try:
                update_with_retry(client, target.path, _mutator(target, server, sans, state, seen))
            except (KubeAPIError, ClusterEndpointError) as exc:
                raise AfterChangeError(_after_change(f"{target.where}: {exc}", written), outcome()) from exc
            if seen:
                written[target.name] = seen[-1]

        signed: list[str] = []
        info = written.get(CLUSTER_INFO) or plans.get(CLUSTER_INFO)
        if wait and isinstance(info, ServerPlan):
            try:
                signed = wait_signed(client, info.text_after, timeout, clock=clock, sleep=sleep)
            except (KubeAPIError, ClusterEndpointError) as exc:
                raise AfterChangeError(_after_change(str(exc), written), outcome()) from exc
            if not signed:
                warnings.append(
                    "no bootstrap token is marked for signing (usage-bootstrap-signing), so cluster-info carries no "
                    "signature to wait for; kubeadm join --discovery-token needs one"
                )
        restarted = False
        proxy_now = client.get(TARGET_SPECS[KUBE_PROXY].path) if restart_due_now else None
        if proxy_now is not None and daemonset_restart_due(pods, proxy_before, proxy_now):
            try:
                rollout_restart(client, "kube-system", restart_daemonset, configmap=proxy_now)
            except KubeAPIError as exc:
                raise AfterChangeError(
                    _after_change(f"restarting DaemonSet kube-system/{restart_daemonset}: {exc}", written),
                    outcome(signed),
                ) from exc
            restarted = True
        return outcome(signed, restarted)
    finally:
        close = getattr(client, "close", None)
        if callable(close):
            close()


def _mutator(
    target: Target, server: str | None, sans: list[str], state: str, seen: list[ServerPlan | SansPlan]
) -> Callable[[dict[str, Any]], dict[str, Any] | None]:
    """The ``mutate`` of ``update_with_retry``: plan again on the fresh object, note the plan in ``seen``."""

    def mutate(obj: dict[str, Any]) -> dict[str, Any] | None:
        plan = _plan(target, obj, server, sans, state)
        seen.append(plan)
        return _apply(obj, plan) if plan.changed else None

    return mutate


def _unchanged(plan: ServerPlan | SansPlan) -> ServerPlan | SansPlan:
    """The plan as it stands when nothing was written for it."""
    if isinstance(plan, ServerPlan):
        return dataclasses.replace(
            plan, after=plan.before, original_after=plan.original_before, text_after=plan.text_before
        )
    if plan.skipped:
        return plan
    return dataclasses.replace(plan, after=list(plan.before), added=[], removed=[], text_after=plan.text_before)


def _after_change(message: str, written: Mapping[str, ServerPlan | SansPlan]) -> str:
    changed = [plan.target.object for plan in written.values() if plan.changed]
    if not changed:
        return f"{message}; nothing was changed"
    return f"{message}; already changed: {', '.join(changed)}"


def _warnings(plans: Mapping[str, ServerPlan | SansPlan], server: str | None, state: str) -> list[str]:
    warnings = [plan.warning for plan in plans.values() if isinstance(plan, ServerPlan) and plan.warning]
    kubeadm = plans.get(KUBEADM_CONFIG)
    if isinstance(kubeadm, SansPlan) and kubeadm.skipped:
        warnings.append(kubeadm.message)
    elif isinstance(kubeadm, SansPlan) and state == "present" and server is not None:
        host = server_host(server)
        if san_key(host) not in {san_key(v) for v in kubeadm.after}:
            warnings.append(
                f"{host} is not in apiServer.certSANs of ConfigMap {kubeadm.target.object}: clients reaching the "
                f"apiservers through {server} verify that name, so add it to cert_sans and reissue the apiserver "
                "certificates"
            )
    return warnings
