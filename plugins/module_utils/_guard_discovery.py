# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to the kubeha.apiserver collection: not a public API, may change without notice.
"""Discovery of the masters from the ``kubernetes`` EndpointSlice, bounded by what the configuration allows."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ansible_collections.kubeha.apiserver.plugins.module_utils._endpoint import format_endpoint
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_config import (
    CROSS_FAMILY_MODES,
    GuardConfig,
    GuardError,
    read_bytes,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._kubeapi import (
    Credentials,
    KubeAPIError,
    KubeClient,
    load_kubeconfig,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._proxy import Backend, ProxyError, sort_backends

# A discovered backend leaves after this many answers in a row without it, one backend per answer: an empty or
# shrunken answer (a wrong RBAC change, an endpoint reconciler between leases) cannot empty the set at once.
DISCOVERY_MISSES = 3
DISCOVERY_TIMEOUT_S = 5.0
# The EndpointSlice the apiservers keep for the ``kubernetes`` Service, by name: a GET of exactly it is all the
# discovery grant allows (RBAC cannot narrow a list by label).
ENDPOINTSLICES_PATH = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/kubernetes"


def backends_from_endpointslices(doc: Mapping[str, Any]) -> frozenset[Backend]:
    """The ready endpoints of the ``kubernetes`` service's EndpointSlices, on their ``https`` port.

    ``conditions.ready`` unset counts as ready, as the API documents.
    """
    found = set()
    for item in doc.get("items") or []:
        if not isinstance(item, Mapping):
            continue
        ports = [p for p in item.get("ports") or [] if isinstance(p, Mapping) and isinstance(p.get("port"), int)]
        named = [p["port"] for p in ports if p.get("name") == "https"]
        if named:
            port = named[0]
        elif len(ports) == 1:
            port = ports[0]["port"]
        else:
            continue
        for endpoint in item.get("endpoints") or []:
            if not isinstance(endpoint, Mapping):
                continue
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            for address in endpoint.get("addresses") or []:
                try:
                    found.add(Backend(str(address), port))
                except ProxyError:
                    continue
    return frozenset(found)


def admit_discovered(found: Iterable[Backend], cfg: GuardConfig) -> tuple[frozenset[Backend], list[str]]:
    """The discovered backends the guard accepts, and why each other one is refused.

    Only addresses inside ``discovery.networks`` (the masters' networks), in a kernel mode only of a VIP's address
    family, and at most ``discovery.max_backends`` of them: an EndpointSlice answer, forged or wrong, cannot send a
    node's apiserver traffic elsewhere or grow its data path without bound.
    """
    networks = [ipaddress.ip_network(text) for text in cfg.discovery.networks]
    families = {ipaddress.ip_address(v).version for v in cfg.vips}
    admitted: list[Backend] = []
    refused: list[str] = []
    for backend in sort_backends(found):
        address = ipaddress.ip_address(backend.address)
        if cfg.mode not in CROSS_FAMILY_MODES and backend.version not in families:
            continue  # the kernel forwards a VIP only to its own address family: not an error, nothing to say
        if not any(address.version == net.version and address in net for net in networks):
            refused.append(f"{backend} is outside the masters' networks ({', '.join(cfg.discovery.networks)})")
        elif len(admitted) >= cfg.discovery.max_backends:
            refused.append(f"{backend} is beyond the {cfg.discovery.max_backends} discovered backends allowed")
        else:
            admitted.append(backend)
    return frozenset(admitted), refused


def backend_set(seeds: Iterable[Backend], discovered: Iterable[Backend]) -> tuple[Backend, ...]:
    """Seeds plus discovered backends: never fewer than the seeds (only a configuration change removes one)."""
    return tuple(sort_backends([*seeds, *discovered]))


def discovery_credentials(cfg: GuardConfig) -> Credentials:
    """From ``discovery.kubeconfig`` when set (needs PyYAML), else from the guard's own CA and client cert."""
    if cfg.discovery.kubeconfig:
        try:
            return load_kubeconfig(cfg.discovery.kubeconfig)
        except KubeAPIError as exc:
            raise GuardError(str(exc)) from exc
    return Credentials(
        server=f"https://{format_endpoint(cfg.vips[0], cfg.port)}",
        source="the guard configuration",
        ca_data=read_bytes(cfg.ca_file, "the CA file"),
        client_cert=read_bytes(cfg.client_cert_file, "the client certificate") if cfg.client_cert_file else None,
        client_key=read_bytes(cfg.client_key_file, "the client key") if cfg.client_key_file else None,
    )


def discover_backends(cfg: GuardConfig, servers: Sequence[Backend]) -> frozenset[Backend]:
    """Read the ``kubernetes`` EndpointSlice from the first of ``servers`` that answers.

    The apiservers are asked directly (their certificates carry their own addresses), not through the VIP,
    so discovery does not depend on the data path it maintains. Credentials are read at every call:
    kubelet rotates its client certificate.
    """
    credentials = discovery_credentials(cfg)
    errors = []
    for server in servers:
        try:
            with KubeClient(credentials, DISCOVERY_TIMEOUT_S, f"https://{server.endpoint}") as client:
                return backends_from_endpointslices({"items": [client.get(ENDPOINTSLICES_PATH)]})
        except KubeAPIError as exc:
            errors.append(f"{server}: {exc}")
    raise GuardError("discovery failed: " + ("; ".join(errors) or "no backend is up"))
