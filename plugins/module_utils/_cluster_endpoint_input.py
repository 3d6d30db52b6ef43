# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the kubeha.apiserver collection: this is NOT a public API. It backs the
# kubeha.apiserver.cluster_endpoint and kubeconfig_server modules and may change in any release without notice.

"""What cluster_endpoint is asked to do, and where: its error, its three targets, the validation of its parameters.

Pure logic. ``normalize_server`` is also the server check of ``kubeconfig_server``.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ansible_collections.kubeha.apiserver.plugins.module_utils._endpoint import EndpointError, parse_port
from ansible_collections.kubeha.apiserver.plugins.module_utils._kubeapi import object_path
from ansible_collections.kubeha.apiserver.plugins.module_utils._san import (
    SanError,
    dns_name_problem,
    parse_san,
    san_key,
)

STATES = ("present", "absent")
CLUSTER_INFO, KUBEADM_CONFIG, KUBE_PROXY = "cluster_info", "kubeadm_config", "kube_proxy"
TARGETS = (CLUSTER_INFO, KUBEADM_CONFIG, KUBE_PROXY)


class ClusterEndpointError(Exception):
    """The one error of this domain; its message is meant for the user as is."""


@dataclass(frozen=True)
class Target:
    """One ConfigMap key this module edits."""

    name: str
    namespace: str
    configmap: str
    key: str

    @property
    def object(self) -> str:
        return f"{self.namespace}/{self.configmap}"

    @property
    def where(self) -> str:
        return f"ConfigMap {self.object}, key {self.key}"

    @property
    def path(self) -> str:
        return object_path("/api/v1", self.namespace, "configmaps", self.configmap)


TARGET_SPECS = {
    CLUSTER_INFO: Target(CLUSTER_INFO, "kube-public", "cluster-info", "kubeconfig"),
    KUBEADM_CONFIG: Target(KUBEADM_CONFIG, "kube-system", "kubeadm-config", "ClusterConfiguration"),
    KUBE_PROXY: Target(KUBE_PROXY, "kube-system", "kube-proxy", "kubeconfig.conf"),
}


# --------------------------------------------------------------------------------------------------
# Validation of the input
# --------------------------------------------------------------------------------------------------


def normalize_server(value: Any) -> str:
    """``https://<host>[:<port>]`` with the host in canonical form; ``ClusterEndpointError`` naming the problem."""
    example = "such as https://169.254.100.1:6444 or https://[fd6b:6861::1]:6444"
    if not isinstance(value, str) or not value.strip():
        raise ClusterEndpointError(f"server must be an https:// URL {example}, not {value!r}")
    text = value.strip()
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError as exc:
        raise ClusterEndpointError(f"server {text!r} is not a valid URL: {exc}") from exc
    if parts.scheme.lower() != "https":
        raise ClusterEndpointError(f"server {text!r} is not an https:// URL {example}")
    netloc = parts.netloc
    if "@" in netloc:
        raise ClusterEndpointError(f"server {text!r} carries user information, which a kubeconfig server cannot have")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ClusterEndpointError(f"server {text!r} has a path, query or fragment: give only https://<host>:<port>")
    if netloc.startswith("["):
        end = netloc.find("]")
        literal, port_part = netloc[1:end], netloc[end + 1 :]
        if "%" in literal:
            raise ClusterEndpointError(f"server {text!r} carries an IPv6 zone index, which TLS clients cannot use")
        try:
            host = f"[{ipaddress.IPv6Address(literal)}]"
        except ValueError as exc:
            raise ClusterEndpointError(f"server {text!r}: [{literal}] is not a valid IPv6 address") from exc
    else:
        name, colon, port = netloc.rpartition(":")
        name, port_part = (name, colon + port) if colon else (netloc, "")
        if ":" in name:
            raise ClusterEndpointError(
                f"server {text!r}: an IPv6 address must be written in brackets, as in https://[fd6b:6861::1]:6444"
            )
        host = name.lower()
        if not host:
            raise ClusterEndpointError(f"server {text!r} has no host")
        try:
            host = str(ipaddress.IPv4Address(host))
        except ValueError as exc:
            if dns_name_problem(host, wildcard=False):
                raise ClusterEndpointError(
                    f"server {text!r}: {name!r} is neither an IPv4 address nor a valid DNS name"
                ) from exc
    if port_part:
        digits = port_part[1:] if port_part.startswith(":") else None
        try:
            return f"https://{host}:{parse_port(digits or '')}"
        except EndpointError:
            raise ClusterEndpointError(
                f"server {text!r} has an invalid port {port_part.lstrip(':')!r} (1-65535)"
            ) from None
    return f"https://{host}"


def server_host(server: str) -> str:
    """The host of a normalized server URL, without brackets."""
    netloc = urllib.parse.urlsplit(server).netloc
    if netloc.startswith("["):
        return netloc[1 : netloc.index("]")]
    return netloc.rpartition(":")[0] if ":" in netloc else netloc


def normalize_san(value: Any) -> str:
    """One certificate SAN: an IP address (canonical) or a DNS name, possibly a ``*.`` wildcard (lower case)."""
    if not isinstance(value, str) or not value.strip():
        raise ClusterEndpointError(f"cert_sans: {value!r} is not an IP address or a DNS name")
    text = value.strip()
    try:
        return parse_san(text, prefixes=False).value
    except SanError as exc:
        # "'10.0.0.0/8' is a network": the reason's subject is the value named before it.
        raise ClusterEndpointError(f"cert_sans: {text!r} {str(exc).removeprefix('it ')}") from None


def normalize_sans(values: Any) -> list[str]:
    """Canonical SANs in order, without duplicates (``[]`` for none)."""
    if values is None:
        return []
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise ClusterEndpointError(f"cert_sans must be a list of IP addresses and DNS names, not {values!r}")
    result: list[str] = []
    for value in values:
        san = normalize_san(value)
        if san_key(san) not in {san_key(s) for s in result}:
            result.append(san)
    return result


def normalize_targets(values: Any) -> list[str]:
    """The targets in the module's fixed order; unknown names are refused."""
    if values is None:
        return list(TARGETS)
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise ClusterEndpointError(f"targets must be a list of {', '.join(TARGETS)}, not {values!r}")
    wanted = [str(v) for v in values]
    unknown = [v for v in wanted if v not in TARGETS]
    if unknown:
        raise ClusterEndpointError(f"unknown target {unknown[0]!r}: targets are {', '.join(TARGETS)}")
    if not wanted:
        raise ClusterEndpointError(f"targets is empty: name at least one of {', '.join(TARGETS)}")
    return [t for t in TARGETS if t in wanted]
