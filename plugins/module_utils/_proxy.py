# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the kubeha.apiserver collection: this is NOT a public API. It backs the node-side guard
# (module_utils/_guard_daemon.py) and the kubeha.apiserver.apiserver_proxy module, and may change in any
# release without notice.

"""Deciding which kube-apiservers a node may use: backends, hysteresis and weights.

``HealthTracker`` turns probe results (``_probe``) into up/down states with rise/fall hysteresis, except that a
refused connection takes a backend down at once: nothing listens there any more. ``decide`` turns the states into
weights per address family, and ``desired_service`` into the IPVS virtual server of ``_ipvs_model``; haproxy's
equivalent is ``_haproxy_config``.

Only the standard library is used, and nothing here imports ``ansible``: the guard runs these files on nodes as
plain Python.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ansible_collections.kubeha.apiserver.plugins.module_utils._endpoint import (
    EndpointError,
    format_endpoint,
    split_endpoint,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._ipvs_model import RealServer, Service

UP = "up"
DOWN = "down"
UNKNOWN = "unknown"
STATES = (UP, DOWN, UNKNOWN)

LOCAL_WEIGHT = 2  # a master's own apiserver, with prefer_local: above the others' weight 1


class ProxyError(Exception):
    """The one error of this domain; its message is meant for the user as is."""


# --------------------------------------------------------------------------------------------------
# Backends and probe results
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    """One kube-apiserver endpoint; the address is canonical (``fd00::0011`` -> ``fd00::11``)."""

    address: str
    port: int

    def __post_init__(self) -> None:
        try:
            canonical = str(ipaddress.ip_address(self.address))
        except ValueError as exc:
            raise ProxyError(f"backend address {self.address!r} is not an IPv4 or IPv6 address") from exc
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise ProxyError(f"backend port {self.port!r} of {self.address} is not a port number 1..65535")
        object.__setattr__(self, "address", canonical)

    @property
    def endpoint(self) -> str:
        """``10.0.0.11:6443`` or ``[fd00::11]:6443``."""
        return format_endpoint(self.address, self.port)

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.address).version

    def sort_key(self) -> tuple[int, int, int]:
        ip = ipaddress.ip_address(self.address)
        return (ip.version, int(ip), self.port)

    def __str__(self) -> str:
        return self.endpoint


def sort_backends(backends: Iterable[Backend]) -> list[Backend]:
    """IPv4 first, then numerically: the order of every listing and rendering."""
    return sorted(set(backends), key=Backend.sort_key)


def parse_endpoint(text: str) -> Backend:
    """``10.0.0.11:6443`` or ``[fd00::11]:6443`` as a ``Backend``; ``ProxyError`` naming the text otherwise."""
    try:
        return Backend(*split_endpoint(text))
    except EndpointError as exc:
        raise ProxyError(str(exc)) from None


@dataclass(frozen=True)
class ProbeResult:
    """One probe of one backend.

    ``refused``: a refused TCP connect, the apiserver process is gone. ``unanswered``: a TCP connect that got
    no answer at all within its timeout (no SYN-ACK, no reset). ``unreachable``: the guard's verdict after
    ``fall`` unanswered connects in a row, the host is gone or black-holed. A busy apiserver never causes
    the last two: the kernel completes the handshake whatever the process is doing.
    """

    backend: Backend
    ok: bool
    latency_s: float
    error: str = ""
    refused: bool = False
    unanswered: bool = False
    unreachable: bool = False


# --------------------------------------------------------------------------------------------------
# Health with hysteresis
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transition:
    """A backend changed state; ``reason`` completes ``backend 10.0.0.12:6443 up -> down: <reason>``."""

    backend: Backend
    old: str
    new: str
    reason: str

    def describe(self) -> str:
        return f"backend {self.backend} {self.old} -> {self.new}: {self.reason}"


class HealthTracker:
    """Per-backend up/down state with hysteresis.

    A backend never seen before is decided by its first probe (ok: up, failed: down). ``fall`` failures
    in a row take an up backend down, except a refused connection, which does at once; ``rise``
    successes in a row bring a down backend back. ``initial`` seeds states, e.g. from the last-good
    state file, so that a restart does not forget what was known.
    """

    def __init__(self, rise: int, fall: int, initial: Mapping[Backend, str] | None = None) -> None:
        self.rise = 1
        self.fall = 1
        self.reconfigure(rise, fall)
        self._state: dict[Backend, str] = {}
        self._successes: dict[Backend, int] = {}
        self._failures: dict[Backend, int] = {}
        for backend, state in (initial or {}).items():
            if state in (UP, DOWN):
                self._state[backend] = state

    def reconfigure(self, rise: int, fall: int) -> None:
        if isinstance(rise, bool) or not isinstance(rise, int) or rise < 1:
            raise ProxyError(f"rise {rise!r} is not a positive integer")
        if isinstance(fall, bool) or not isinstance(fall, int) or fall < 1:
            raise ProxyError(f"fall {fall!r} is not a positive integer")
        self.rise = rise
        self.fall = fall

    def state(self, backend: Backend) -> str:
        return self._state.get(backend, UNKNOWN)

    def health(self) -> dict[Backend, str]:
        return dict(self._state)

    def retain(self, backends: Iterable[Backend]) -> None:
        """Forget every backend not in ``backends`` (it left the set)."""
        keep = set(backends)
        for table in (self._state, self._successes, self._failures):
            for backend in [b for b in table if b not in keep]:
                del table[backend]

    def observe(self, results: Mapping[Backend, ProbeResult] | Iterable[ProbeResult]) -> list[Transition]:
        """Account for probe results; the transitions they cause, in backend order."""
        items = list(results.values()) if isinstance(results, Mapping) else list(results)
        transitions: list[Transition] = []
        for res in sorted(items, key=lambda r: r.backend.sort_key()):
            transition = self._observe_one(res)
            if transition is not None:
                transitions.append(transition)
        return transitions

    def _observe_one(self, res: ProbeResult) -> Transition | None:
        backend = res.backend
        old = self.state(backend)
        if res.ok:
            self._failures[backend] = 0
            self._successes[backend] = self._successes.get(backend, 0) + 1
            if old == UNKNOWN:
                return self._move(backend, old, UP, "ready")
            if old == DOWN and self._successes[backend] >= self.rise:
                return self._move(backend, old, UP, f"ready ({self._successes[backend]} successful probes in a row)")
            return None
        self._successes[backend] = 0
        self._failures[backend] = self._failures.get(backend, 0) + 1
        error = res.error or "probe failed"
        if old == UNKNOWN:
            return self._move(backend, old, DOWN, error)
        if old == UP and (res.refused or res.unreachable or self._failures[backend] >= self.fall):
            at_once = res.refused or res.unreachable
            reason = error if at_once else f"{error} ({self._failures[backend]} failed probes in a row)"
            return self._move(backend, old, DOWN, reason)
        return None

    def _move(self, backend: Backend, old: str, new: str, reason: str) -> Transition:
        self._state[backend] = new
        self._successes[backend] = 0
        self._failures[backend] = 0
        return Transition(backend, old, new, reason)


# --------------------------------------------------------------------------------------------------
# Weights and the IPVS virtual server
# --------------------------------------------------------------------------------------------------


def canonical_addresses(addresses: Iterable[str]) -> set[str]:
    """The addresses in canonical form; what is not an address is left out."""
    result = set()
    for address in addresses:
        try:
            result.add(str(ipaddress.ip_address(address)))
        except ValueError:
            continue
    return result


def has_local_backend(backends: Iterable[Backend], local_addresses: Iterable[str]) -> bool:
    local = canonical_addresses(local_addresses)
    return any(b.address in local for b in backends)


def scheduler_for(prefer_local: bool, has_local: bool) -> str:
    """``fo`` (weighted failover: new connections go to the highest-weight available server) on a master
    that prefers its own apiserver; ``rr`` everywhere else."""
    return "fo" if prefer_local and has_local else "rr"


def desired_weights(
    backends: Iterable[Backend],
    health: Mapping[Backend, str],
    local_addresses: Iterable[str],
    prefer_local: bool,
) -> tuple[dict[Backend, int], bool]:
    """The weight of each backend, and whether the set fails open.

    Up: 1 (the local apiserver 2 with ``prefer_local``); down or not yet known: 0. When no backend is
    up, all are kept at weight 1 (``fail_open``): a wrong verdict, e.g. a broken CA file, must not
    black-hole the node, and there is no better place to send a connection anyway.
    """
    targets = sort_backends(backends)
    local = canonical_addresses(local_addresses)
    up = [b for b in targets if health.get(b) == UP]
    if not up:
        return {b: 1 for b in targets}, bool(targets)
    weights = {}
    for backend in targets:
        if health.get(backend) != UP:
            weights[backend] = 0
        elif prefer_local and backend.address in local:
            weights[backend] = LOCAL_WEIGHT
        else:
            weights[backend] = 1
    return weights, False


def decide(
    backends: Iterable[Backend],
    health: Mapping[Backend, str],
    local_addresses: Iterable[str],
    prefer_local: bool,
) -> tuple[dict[Backend, int], set[int]]:
    """The weights of every backend, decided per address family, and the families (4, 6) that fail open.

    The one decision the guard's rounds and the module's check mode share.
    """
    backends = list(backends)
    local_addresses = tuple(local_addresses)
    weights: dict[Backend, int] = {}
    fail_open: set[int] = set()
    for version in (4, 6):
        family = [b for b in backends if b.version == version]
        if not family:
            continue
        family_weights, family_fail_open = desired_weights(family, health, local_addresses, prefer_local)
        weights.update(family_weights)
        if family_fail_open:
            fail_open.add(version)
    return weights, fail_open


def desired_service(vip: str, port: int, weights: Mapping[Backend, int], scheduler: str) -> Service:
    """The IPVS virtual server ``vip:port`` (TCP, NAT) with the backends of the VIP's address family."""
    version = ipaddress.ip_address(vip).version
    real_servers = tuple(
        RealServer(b.address, b.port, weight, "masquerade") for b, weight in weights.items() if b.version == version
    )
    return Service(address=vip, port=port, protocol="tcp", scheduler=scheduler, real_servers=real_servers)
