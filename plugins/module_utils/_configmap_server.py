# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the kubeha.apiserver collection: this is NOT a public API. It backs the
# kubeha.apiserver.cluster_endpoint and kubeconfig_server modules and may change in any release without notice.

"""The ``server`` of a kubeconfig text, read and replaced in place; and of the kubeconfigs kept in ConfigMaps.

``kubeconfig_server`` / ``set_server`` work on any kubeconfig text (``_kubeconfig_server`` edits files with them);
``plan_server`` / ``apply_server`` handle a ConfigMap whose key is a kubeconfig (cluster-info, kube-proxy), the
server it had first being kept in the annotation ``ANNOTATION`` so that ``absent`` puts it back exactly. The edit is
the one in-place editor's ``replace_scalar`` (``_yaml_in_place``). Pure logic.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ansible_collections.kubeha.apiserver.plugins.module_utils._cluster_endpoint_input import (
    ClusterEndpointError,
    Target,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._kubeapi import import_yaml
from ansible_collections.kubeha.apiserver.plugins.module_utils._kubeconfig import KubeconfigError, select
from ansible_collections.kubeha.apiserver.plugins.module_utils._yaml_in_place import (
    YamlEditError,
    compose_mapping,
    load,
    member,
    replace_scalar,
    reported_as,
)

ANNOTATION = "kubeha.apiserver/original-server"


def _server_node(text: Any, what: str) -> tuple[Any, int]:
    """The scalar node of the server of the kubeconfig's cluster, and that cluster's index in ``clusters``.

    The cluster is the one ``_kubeconfig.select`` picks: the current context's (kube-proxy's kubeconfig), else
    the only one (cluster-info, whose current-context is empty, as kubeadm's discovery reads it).
    """
    yaml = import_yaml()
    with reported_as(ClusterEndpointError):
        root = compose_mapping(text, what)
    clusters = member(root, "clusters")
    if clusters is None or not isinstance(clusters[1], yaml.SequenceNode) or not clusters[1].value:
        raise ClusterEndpointError(f"{what} has no clusters")
    # The selection reads the parsed document; the index finds the same entry among the nodes, to edit in place.
    try:
        doc = load(text)
    except yaml.YAMLError as exc:
        raise ClusterEndpointError(f"{what} is not valid YAML: {exc}") from exc
    try:
        index = select(doc, what, require_user=False, allow_no_context=True).cluster_index
    except KubeconfigError as exc:
        raise ClusterEndpointError(str(exc)) from exc
    if index >= len(clusters[1].value):  # a second top-level clusters key: the parse and the nodes disagree
        raise ClusterEndpointError(f"{what}: clusters is not laid out in a way this module can edit")
    entry = clusters[1].value[index]
    cluster = member(entry, "cluster")
    server = member(cluster[1], "server") if cluster else None
    if server is None:
        raise ClusterEndpointError(f"{what}: clusters[{index}].cluster has no server")
    node = server[1]
    if (
        not isinstance(node, yaml.ScalarNode)
        or node.tag != "tag:yaml.org,2002:str"
        or node.style not in (None, "'", '"')
        or node.start_mark.line != node.end_mark.line
    ):
        raise ClusterEndpointError(
            f"{what}: clusters[{index}].cluster.server is not a one-line string, which this module cannot edit"
        )
    return node, index


def kubeconfig_server(text: Any, what: str = "the kubeconfig") -> str:
    """The server of the kubeconfig text (see ``_server_node`` for which cluster)."""
    node, _index = _server_node(text, what)
    return str(node.value)


def set_server(text: str, server: str, what: str = "the kubeconfig") -> str:
    """``text`` with only the characters of the server's value replaced; verified by parsing it again."""
    node, index = _server_node(text, what)
    if node.value == server:
        return text
    expected = load(text)
    expected["clusters"][index]["cluster"]["server"] = server
    try:
        return replace_scalar(text, node, server, expected)
    except YamlEditError as exc:
        raise ClusterEndpointError(
            f"{what}: setting clusters[{index}].cluster.server in place did not give the intended kubeconfig; it is "
            "laid out in a way this module does not handle"
        ) from exc


@dataclass(frozen=True)
class ServerPlan:
    """What a kubeconfig key's ``server`` is and is to be, with the annotation that remembers the original."""

    target: Target
    before: str
    after: str
    original_before: str | None
    original_after: str | None
    text_before: str
    text_after: str
    message: str = ""
    warning: str = ""

    @property
    def changed(self) -> bool:
        return self.text_before != self.text_after or self.original_before != self.original_after

    def result(self) -> dict[str, Any]:
        return {
            "object": self.target.object,
            "key": self.target.key,
            "changed": self.changed,
            "skipped": False,
            "before": self.before,
            "after": self.after,
            "original_server": self.original_after,
            "message": self.message,
        }

    def diff(self) -> dict[str, Any]:
        header = f"{self.target.where} (and annotation {ANNOTATION})"
        return {
            "before": _annotated(self.text_before, self.original_before),
            "after": _annotated(self.text_after, self.original_after),
            "before_header": header,
            "after_header": header,
        }


def _annotated(text: str, original: str | None) -> str:
    head = f"# metadata.annotations[{ANNOTATION}]: {original}\n" if original is not None else ""
    return head + text + ("" if text.endswith(("\n", "\r")) else "\n")


def _data(obj: Mapping[str, Any], target: Target) -> str:
    data = obj.get("data") or {}
    if target.key not in data:
        keys = ", ".join(sorted(data)) or "none"
        raise ClusterEndpointError(f"ConfigMap {target.object} has no key {target.key!r} (keys: {keys})")
    return data[target.key]


def _annotations(obj: Mapping[str, Any]) -> dict[str, Any]:
    return dict((obj.get("metadata") or {}).get("annotations") or {})


def plan_server(obj: Mapping[str, Any], target: Target, server: str | None, state: str) -> ServerPlan:
    """The plan for one ConfigMap whose key is a kubeconfig (pure).

    ``present``: point the server at ``server``; the server found first is kept in the annotation
    (an existing annotation is kept: it already holds the original). ``absent``: put the annotated
    server back and drop the annotation; without the annotation nothing is changed.
    """
    text = _data(obj, target)
    what = target.where
    current = kubeconfig_server(text, what)
    original = _annotations(obj).get(ANNOTATION)
    if original is not None and not isinstance(original, str):
        raise ClusterEndpointError(f"ConfigMap {target.object}: annotation {ANNOTATION} is not a string")
    if state == "present":
        if server is None:
            raise ClusterEndpointError("server is required with state=present")
        if original is None and current == server:
            warning = (
                f"{what} already points at {server} but has no {ANNOTATION} annotation: the server it had before "
                "is unknown, so state=absent will leave it as it is"
            )
            return ServerPlan(target, current, current, None, None, text, text, warning=warning)
        keep = original if original is not None else current
        new_text = set_server(text, server, what)
        return ServerPlan(target, current, server, original, keep, text, new_text)
    if original is None:
        message = f"no {ANNOTATION} annotation: nothing to restore"
        warning = ""
        if server is not None and current == server:
            warning = f"{what} points at {server} but has no {ANNOTATION} annotation: it is left as it is"
        return ServerPlan(target, current, current, None, None, text, text, message=message, warning=warning)
    new_text = set_server(text, original, what)
    return ServerPlan(target, current, original, original, None, text, new_text)


def apply_server(obj: dict[str, Any], plan: ServerPlan) -> dict[str, Any]:
    """``obj`` (a ConfigMap) changed as ``plan`` says: its key's text and the annotation."""
    obj.setdefault("data", {})[plan.target.key] = plan.text_after
    metadata = obj.setdefault("metadata", {})
    annotations = dict(metadata.get("annotations") or {})
    if plan.original_after is None:
        annotations.pop(ANNOTATION, None)
    else:
        annotations[ANNOTATION] = plan.original_after
    if annotations:
        metadata["annotations"] = annotations
    else:
        metadata.pop("annotations", None)
    return obj
