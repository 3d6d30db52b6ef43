# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the kubeha.apiserver collection: this is NOT a public API. It backs the
# kubeha.apiserver.cluster_endpoint module and may change in any release without notice.

"""``apiServer.certSANs`` of the ClusterConfiguration kubeadm keeps in ``kube-system/kubeadm-config``: read, plan,
edit whole lines in place with the one in-place editor (``_yaml_in_place``; the rest of the text byte for byte),
verified by parsing again. Pure logic."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.kubeha.apiserver.plugins.module_utils._cluster_endpoint_input import (
    ClusterEndpointError,
    Target,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._san import san_key
from ansible_collections.kubeha.apiserver.plugins.module_utils._yaml_in_place import (
    EditMismatchError,
    EditNotValidError,
    ListStyle,
    check_kind,
    compose_mapping,
    load,
    reported_as,
    set_block_list,
    verified,
)

KUBEADM_API_GROUP = "kubeadm.k8s.io"


def parse_cluster_configuration(text: Any, what: str = "ClusterConfiguration") -> dict[str, Any]:
    """The kubeadm ClusterConfiguration in ``text``, checked for the fields this module reads."""
    with reported_as(ClusterEndpointError):
        compose_mapping(text, what)
        config = load(text)
        check_kind(config, "ClusterConfiguration", KUBEADM_API_GROUP, what)
    api_server = config.get("apiServer")
    if api_server is not None and not isinstance(api_server, dict):
        raise ClusterEndpointError(f"{what}: apiServer is {api_server!r}, not a mapping")
    sans = (api_server or {}).get("certSANs")
    if sans is not None and not isinstance(sans, list):
        raise ClusterEndpointError(f"{what}: apiServer.certSANs is {sans!r}, not a list")
    return config


def current_sans(config: Mapping[str, Any]) -> list[Any]:
    return list((config.get("apiServer") or {}).get("certSANs") or [])


def plan_sans(existing: list[Any], sans: list[str], state: str) -> tuple[list[Any], list[str], list[Any]]:
    """``(new list, added, removed)``: existing entries keep their spelling and order (pure)."""
    have = {san_key(entry) for entry in existing}
    if state == "present":
        added = [san for san in sans if san_key(san) not in have]
        return existing + added, added, []
    unwanted = {san_key(san) for san in sans}
    removed = [entry for entry in existing if san_key(entry) in unwanted]
    return [entry for entry in existing if san_key(entry) not in unwanted], [], removed


# As kubeadm writes it: an empty list leaves the key out (``apiServer: {}`` when nothing else is left), an inline
# list is not its layout, and apiServer sorts first among the keys.
KUBEADM_STYLE = ListStyle(empty=None, inline=False, parent_first=True)


def render_sans(text: str, config: Mapping[str, Any], new_sans: list[Any], what: str = "ClusterConfiguration") -> str:
    """``text`` with ``apiServer.certSANs`` equal to ``new_sans`` (the key removed when empty), verified.

    Whole lines are added and removed: additions go after the last entry (in its indentation) or into a new
    ``certSANs:`` block, the first key of ``apiServer`` as kubeadm sorts them; the rest stays byte for byte.
    """
    if list(new_sans) == current_sans(config):
        return text
    with reported_as(ClusterEndpointError):
        new_text = set_block_list(text, "apiServer", "certSANs", list(new_sans), KUBEADM_STYLE, what)
    expected = copy.deepcopy(dict(config))
    api_server = dict(expected.get("apiServer") or {})
    if new_sans:
        api_server["certSANs"] = list(new_sans)
    else:
        api_server.pop("certSANs", None)
    if new_sans or expected.get("apiServer") is not None:
        expected["apiServer"] = api_server
    try:
        return verified(new_text, expected)
    except EditNotValidError as exc:
        raise ClusterEndpointError(f"{what}: editing apiServer.certSANs in place produced invalid YAML: {exc}") from exc
    except EditMismatchError as exc:
        raise ClusterEndpointError(
            f"{what}: editing apiServer.certSANs in place did not give the intended configuration; the text is laid "
            "out in a way this module does not handle: set the value by hand"
        ) from exc


@dataclass(frozen=True)
class SansPlan:
    """What ``apiServer.certSANs`` is and is to be; ``skipped`` when the cluster has no kubeadm-config."""

    target: Target
    before: list[Any] = field(default_factory=list)
    after: list[Any] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[Any] = field(default_factory=list)
    text_before: str = ""
    text_after: str = ""
    control_plane_endpoint: str | None = None
    skipped: bool = False
    message: str = ""

    @property
    def changed(self) -> bool:
        return self.text_before != self.text_after

    def result(self) -> dict[str, Any]:
        return {
            "object": self.target.object,
            "key": self.target.key,
            "changed": self.changed,
            "skipped": self.skipped,
            "before": [str(v) for v in self.before],
            "after": [str(v) for v in self.after],
            "added": list(self.added),
            "removed": [str(v) for v in self.removed],
            "control_plane_endpoint": self.control_plane_endpoint,
            "message": self.message,
        }

    def diff(self) -> dict[str, Any]:
        header = self.target.where
        return {
            "before": self.text_before,
            "after": self.text_after,
            "before_header": header,
            "after_header": header,
        }


def plan_kubeadm_config(obj: Mapping[str, Any] | None, target: Target, sans: list[str], state: str) -> SansPlan:
    """The plan for kubeadm-config (pure); ``obj`` is ``None`` when the ConfigMap does not exist."""
    if obj is None:
        return SansPlan(target, skipped=True, message=_no_kubeadm_config(target, "does not exist"))
    data = obj.get("data") or {}
    if target.key not in data:
        return SansPlan(target, skipped=True, message=_no_kubeadm_config(target, f"has no key {target.key}"))
    text = data[target.key]
    config = parse_cluster_configuration(text, target.where)
    endpoint = config.get("controlPlaneEndpoint")
    endpoint = None if endpoint is None else str(endpoint)
    existing = current_sans(config)
    new_sans, added, removed = plan_sans(existing, sans, state)
    new_text = render_sans(text, config, new_sans, target.where) if (added or removed) else text
    return SansPlan(target, existing, new_sans, added, removed, text, new_text, endpoint)


def _no_kubeadm_config(target: Target, why: str) -> str:
    return (
        f"ConfigMap {target.object} {why}: the cluster was not set up with kubeadm (or its configuration was not "
        "uploaded), so its certSANs were not checked; add the SANs to the apiserver certificates by the means that "
        "made them"
    )
