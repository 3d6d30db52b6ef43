# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the kubeha.apiserver collection: this is NOT a public API. It backs the collection's
# modules that restart kube-proxy (kubeproxy_exclude_cidr, cluster_endpoint) and may change in any release
# without notice.

"""A DaemonSet restarted the way ``kubectl rollout restart`` does it, when its pods run another ConfigMap than the
one there now, and the wait for its rollout (as ``kubectl rollout status`` decides).

The DaemonSet carries the digest of the ConfigMap it was last restarted for (``RESTARTED_FOR``), recorded before a
change and by the restart's own patch, so a run that changed the ConfigMap and died before the restart is completed
by the next run. Everything here works on any object with ``get`` and ``patch`` (a ``KubeClient``).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from ansible_collections.kubeha.apiserver.plugins.module_utils._files import restart_due
from ansible_collections.kubeha.apiserver.plugins.module_utils._kubeapi import (
    STRATEGIC_MERGE_PATCH,
    KubeAPIError,
    daemonset_path,
)

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
# On a DaemonSet: the digest of the ConfigMap data its pods were last restarted for. A run that changed the
# ConfigMap and died before the restart leaves it stale, and the next run restarts: the decision comes from this
# marker, not from "this run changed the ConfigMap".
RESTARTED_FOR = "kubeha.apiserver/restarted-for-configmap"


def rfc3339_now() -> str:
    """The current UTC time as ``2024-05-01T12:00:00Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def rollout_restart(
    client: Any, namespace: str, name: str, now: str | None = None, configmap: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """What ``kubectl rollout restart daemonset/<name>`` does: a new pod template annotation; with ``configmap``,
    the same patch records its digest as the configuration the pods now start with (``RESTARTED_FOR``).

    Returns the patched DaemonSet.
    """
    patch: dict[str, Any] = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: now or rfc3339_now()}}}}}
    if configmap is not None:
        patch["metadata"] = {"annotations": {RESTARTED_FOR: configmap_digest(configmap)}}
    return client.patch(daemonset_path(namespace, name), patch, STRATEGIC_MERGE_PATCH)


def configmap_digest(configmap: Mapping[str, Any]) -> str:
    """A SHA-256 of a ConfigMap's data (and binaryData), independent of key order."""
    content = {"data": configmap.get("data") or {}, "binaryData": configmap.get("binaryData") or {}}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def restarted_for(daemonset: Mapping[str, Any]) -> str | None:
    """The digest of the ConfigMap the DaemonSet's pods were last restarted for, or None (never recorded)."""
    return ((daemonset.get("metadata") or {}).get("annotations") or {}).get(RESTARTED_FOR)


def record_running_configuration(
    client: Any, namespace: str, name: str, daemonset: Mapping[str, Any], configmap: Mapping[str, Any]
) -> dict[str, Any]:
    """Before a change of ``configmap``: a DaemonSet with no marker gets the digest of what its pods run now (the
    ConfigMap as it is), so a run that dies after the change leaves a marker that says a restart is due. The
    DaemonSet as it is (or as patched)."""
    if restarted_for(daemonset) is not None:
        return dict(daemonset)
    patch = {"metadata": {"annotations": {RESTARTED_FOR: configmap_digest(configmap)}}}
    try:
        return client.patch(daemonset_path(namespace, name), patch, STRATEGIC_MERGE_PATCH)
    except KubeAPIError as exc:
        raise KubeAPIError(
            f"recording on DaemonSet {namespace}/{name} which configuration its pods run: {exc}; nothing was changed",
            exc.status,
        ) from exc


def daemonset_restart_due(daemonset: Mapping[str, Any], before: Mapping[str, Any], after: Mapping[str, Any]) -> bool:
    """Whether the DaemonSet's pods run another ConfigMap than ``after``: by its marker, or without one by ``before``
    (the ConfigMap as the run found it, which the pods are taken to run)."""
    return restart_due(restarted_for(daemonset), configmap_digest(before), configmap_digest(after))


def update_strategy(daemonset: Mapping[str, Any]) -> str:
    """``RollingUpdate`` (the default) or ``OnDelete``."""
    return str(((daemonset.get("spec") or {}).get("updateStrategy") or {}).get("type") or "RollingUpdate")


def daemonset_progress(daemonset: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether the DaemonSet's rollout is complete, and a phrase describing where it stands."""
    generation = int((daemonset.get("metadata") or {}).get("generation") or 0)
    status = daemonset.get("status") or {}
    observed = int(status.get("observedGeneration") or 0)
    desired = int(status.get("desiredNumberScheduled") or 0)
    updated = int(status.get("updatedNumberScheduled") or 0)
    available = int(status.get("numberAvailable") or 0)
    if observed < generation:
        return False, f"generation {generation} not yet observed by the controller (observed {observed})"
    done = updated == desired and available == desired
    return done, f"{updated} of {desired} pods updated, {available} available"


def wait_daemonset_rollout(
    client: Any,
    namespace: str,
    name: str,
    timeout: float,
    interval: float = 2.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Poll until the DaemonSet has rolled out (as ``kubectl rollout status`` decides); the last object.

    An ``OnDelete`` DaemonSet is refused at once: its pods are never replaced by a template change.
    """
    path = daemonset_path(namespace, name)
    deadline = clock() + timeout
    while True:
        daemonset = client.get(path)
        if update_strategy(daemonset) == "OnDelete":
            raise KubeAPIError(
                f"DaemonSet {namespace}/{name} uses the OnDelete update strategy: its pods are not replaced "
                "by a rollout restart; delete them to restart them"
            )
        done, progress = daemonset_progress(daemonset)
        if done:
            return daemonset
        remaining = deadline - clock()
        if remaining <= 0:
            raise KubeAPIError(f"timed out after {timeout:g}s waiting for DaemonSet {namespace}/{name}: {progress}")
        sleep(min(interval, remaining))
