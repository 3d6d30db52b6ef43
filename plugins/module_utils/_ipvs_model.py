# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the kubeha.apiserver collection: this is NOT a public API. It backs the
# kubeha.apiserver.ipvs_service module and the guard's IPVS data path, and may change in any release without notice.

"""IPVS virtual servers as values: the model, validation, the pure planner and its presentation.

No kernel and no pyroute2 here: ``plan(current, desired)`` lists the operations, ``simulate`` predicts their
result (check mode), ``to_dict`` / ``diff`` show a service. The kernel side (netlink parsing, the kernel modules,
the pyroute2 adapter and the module's whole run) is ``_ipvs``.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ansible_collections.kubeha.apiserver.plugins.module_utils._endpoint import format_endpoint

PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos")

# include/uapi/linux/ip_vs.h: IP_VS_CONN_F_MASQ=0, IP_VS_CONN_F_LOCALNODE=1,
# IP_VS_CONN_F_TUNNEL=2, IP_VS_CONN_F_DROUTE=3, IP_VS_CONN_F_FWD_MASK=0x7.
FORWARDING_METHODS = {"masquerade": 0, "tunnel": 2, "direct": 3}
FORWARDING_LOCAL = "local"  # only ever read back (old kernels), never requested

MAX_WEIGHT = 65535
MAX_PERSISTENCE_TIMEOUT = 2**32 - 1

ACTION_KINDS = ("add_service", "edit_service", "delete_service", "add_dest", "set_dest", "del_dest")


class IPVSError(Exception):
    """The one error of this domain; its message is meant for the user as is."""


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


def _canonical_address(address: str) -> str:
    """Normalise a valid IP address (``fd00::0001`` -> ``fd00::1``); leave anything else untouched."""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address


def _endpoint_sort_key(address: str, port: int) -> tuple[int, int, str, int]:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return (99, 0, address, port)
    return (ip.version, int(ip), "", port)


@dataclass(frozen=True)
class RealServer:
    """One IPVS destination. Connection counters are read back only and never compared."""

    address: str
    port: int
    weight: int = 1
    forwarding: str = "masquerade"
    active_connections: int = field(default=0, compare=False)
    inactive_connections: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "address", _canonical_address(self.address))

    @property
    def key(self) -> tuple[str, int]:
        return (self.address, self.port)

    @property
    def endpoint(self) -> str:
        return format_endpoint(self.address, self.port)


@dataclass(frozen=True)
class Service:
    """One IPVS virtual server; ``real_servers`` is kept sorted so equality ignores listing order."""

    address: str
    port: int
    protocol: str = "tcp"
    scheduler: str = "rr"
    persistence_timeout: int | None = None
    real_servers: tuple[RealServer, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "address", _canonical_address(self.address))
        ordered = sorted(self.real_servers, key=lambda rs: _endpoint_sort_key(rs.address, rs.port))
        object.__setattr__(self, "real_servers", tuple(ordered))

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.address, self.port, self.protocol)

    @property
    def label(self) -> str:
        """``TCP 169.254.100.1:6443``: how the service is named in messages."""
        return f"{self.protocol.upper()} {format_endpoint(self.address, self.port)}"

    def bare(self) -> Service:
        """The same service without real servers (what service add/edit/delete act on)."""
        return replace(self, real_servers=())


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def _parse_address(value: Any, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if not isinstance(value, str) or not value:
        raise IPVSError(f"{what} {value!r} is not a valid IPv4 or IPv6 address: a non-empty string is required")
    try:
        ip = ipaddress.ip_address(value)
    except ValueError as exc:
        raise IPVSError(f"{what} {value!r} is not a valid IPv4 or IPv6 address") from exc
    if getattr(ip, "scope_id", None):
        raise IPVSError(f"{what} {value!r} carries an IPv6 zone index, which IPVS does not support")
    return ip


def _parse_int(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise IPVSError(f"{what} {value!r} is not an integer")
    if not low <= value <= high:
        raise IPVSError(f"{what} {value} is out of range {low}..{high}")
    return value


def desired_from_params(params: Mapping[str, Any]) -> Service:
    """Validate module parameters and build the desired ``Service``; raise ``IPVSError`` when invalid."""
    service_ip = _parse_address(params.get("address"), "address")
    port = _parse_int(params.get("port"), "port", 1, 65535)

    protocol = params.get("protocol")
    protocol = "tcp" if protocol is None else protocol
    if protocol not in PROTOCOLS:
        raise IPVSError(f"protocol {protocol!r} is not supported: use one of {', '.join(PROTOCOLS)}")

    scheduler = params.get("scheduler")
    scheduler = "rr" if scheduler is None else scheduler
    if scheduler not in SCHEDULERS:
        raise IPVSError(f"scheduler {scheduler!r} is unknown: use one of {', '.join(SCHEDULERS)}")

    persistence = params.get("persistence_timeout")
    if persistence is not None:
        if isinstance(persistence, bool) or not isinstance(persistence, int):
            raise IPVSError(f"persistence_timeout {persistence!r} is not an integer")
        if persistence < 0:
            raise IPVSError(f"persistence_timeout {persistence} is negative: give seconds, or 0 to disable")
        if persistence > MAX_PERSISTENCE_TIMEOUT:
            raise IPVSError(f"persistence_timeout {persistence} is too large (at most {MAX_PERSISTENCE_TIMEOUT})")
        persistence = persistence or None  # 0 means "not persistent", like omitting it

    forwarding = params.get("forwarding")
    forwarding = "masquerade" if forwarding is None else forwarding
    if forwarding not in FORWARDING_METHODS:
        raise IPVSError(f"forwarding {forwarding!r} is not supported: use one of {', '.join(FORWARDING_METHODS)}")

    real_servers: list[RealServer] = []
    seen: set[tuple[str, int]] = set()
    for index, item in enumerate(params.get("real_servers") or []):
        if not isinstance(item, Mapping):
            raise IPVSError(f"real_servers[{index}] {item!r} is not a dict with address, port and weight")
        rs_ip = _parse_address(item.get("address"), "real server address")
        if rs_ip.version != service_ip.version:
            raise IPVSError(
                f"real server {rs_ip} is IPv{rs_ip.version} but the service address {service_ip} is "
                f"IPv{service_ip.version}: real servers must be of the same address family as the service"
            )
        rs_port = _parse_int(item.get("port"), f"port of real server {rs_ip}", 1, 65535)
        endpoint = format_endpoint(str(rs_ip), rs_port)
        weight = item.get("weight")
        weight = _parse_int(1 if weight is None else weight, f"weight of real server {endpoint}", 0, MAX_WEIGHT)
        if (str(rs_ip), rs_port) in seen:
            raise IPVSError(f"real server {endpoint} is listed more than once")
        seen.add((str(rs_ip), rs_port))
        real_servers.append(RealServer(str(rs_ip), rs_port, weight, forwarding))

    return Service(
        address=str(service_ip),
        port=port,
        protocol=protocol,
        scheduler=scheduler,
        persistence_timeout=persistence,
        real_servers=tuple(real_servers),
    )


# --------------------------------------------------------------------------------------------------
# Planning (pure)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    """One kernel operation. ``service`` is always bare; ``real_server`` is set for *_dest kinds."""

    kind: str
    service: Service
    real_server: RealServer | None = None

    def __post_init__(self) -> None:
        if self.kind not in ACTION_KINDS:
            raise ValueError(f"unknown action kind {self.kind!r}")
        if self.kind.endswith("_dest") != (self.real_server is not None):
            raise ValueError(f"action {self.kind} needs a real server exactly when it acts on a destination")

    @property
    def dest(self) -> RealServer:
        """The real server of a *_dest action."""
        if self.real_server is None:
            raise ValueError(f"action {self.kind} has no real server")
        return self.real_server

    def describe(self) -> str:
        """What is (or would be) done, for the module's ``actions`` result."""
        svc = self.service
        settings = f"scheduler {svc.scheduler}, persistence {_persistence_text(svc.persistence_timeout)}"
        if self.kind == "add_service":
            return f"add service {svc.label} ({settings})"
        if self.kind == "edit_service":
            return f"edit service {svc.label} ({settings})"
        if self.kind == "delete_service":
            return f"delete service {svc.label}"
        rs = self.dest
        dest = f"weight {rs.weight}, {rs.forwarding}"
        if self.kind == "add_dest":
            return f"add real server {rs.endpoint} to {svc.label} ({dest})"
        if self.kind == "set_dest":
            return f"set real server {rs.endpoint} of {svc.label} ({dest})"
        return f"delete real server {rs.endpoint} from {svc.label}"

    def operation(self) -> str:
        """The same as a gerund phrase, used to name a failed operation."""
        svc = self.service
        if self.kind == "add_service":
            return f"adding {svc.label}"
        if self.kind == "edit_service":
            return f"changing {svc.label}"
        if self.kind == "delete_service":
            return f"deleting {svc.label}"
        rs = self.dest
        if self.kind == "add_dest":
            return f"adding real server {rs.endpoint} to {svc.label}"
        if self.kind == "set_dest":
            return f"changing real server {rs.endpoint} of {svc.label}"
        return f"deleting real server {rs.endpoint} from {svc.label}"


def _persistence_text(timeout: int | None) -> str:
    return f"{timeout}s" if timeout else "off"


def _dest_matches(current: RealServer, desired: RealServer) -> bool:
    if current.weight != desired.weight:
        return False
    # Older kernels report a real server on a local address as LOCALNODE (1) whatever was asked:
    # that is the kernel's choice, not drift to correct.
    return current.forwarding in (desired.forwarding, FORWARDING_LOCAL)


def plan(current: Service | None, desired: Service | None, purge_real_servers: bool) -> list[Action]:
    """The kernel operations turning ``current`` into ``desired`` (``None``: the service must not exist).

    A service is edited in place and a destination's weight or forwarding is changed with ``set_dest``:
    deleting and re-adding either would cut live connections. Additions come before deletions so that
    the service keeps at least one real server while its set is being replaced.
    """
    if desired is None:
        return [] if current is None else [Action("delete_service", current.bare())]
    if current is None:
        bare = desired.bare()
        return [Action("add_service", bare)] + [Action("add_dest", bare, rs) for rs in desired.real_servers]
    if current.key != desired.key:
        raise IPVSError(f"cannot plan {desired.label} from the state of another service, {current.label}")

    bare = desired.bare()
    actions: list[Action] = []
    if (current.scheduler, current.persistence_timeout) != (desired.scheduler, desired.persistence_timeout):
        actions.append(Action("edit_service", bare))

    existing = {rs.key: rs for rs in current.real_servers}
    additions: list[Action] = []
    changes: list[Action] = []
    for rs in desired.real_servers:
        have = existing.get(rs.key)
        if have is None:
            additions.append(Action("add_dest", bare, rs))
        elif not _dest_matches(have, rs):
            changes.append(Action("set_dest", bare, rs))

    deletions: list[Action] = []
    if purge_real_servers:
        wanted = {rs.key for rs in desired.real_servers}
        deletions = [Action("del_dest", bare, rs) for rs in current.real_servers if rs.key not in wanted]
    return actions + additions + changes + deletions


def simulate(current: Service | None, actions: Iterable[Action]) -> Service | None:
    """The state after ``actions``, computed without a kernel (check mode's prediction)."""
    state = current
    for action in actions:
        if action.kind == "add_service":
            state = action.service.bare()
            continue
        if action.kind == "delete_service":
            state = None
            continue
        if state is None:
            raise IPVSError(f"cannot {action.describe()}: the service does not exist")
        if action.kind == "edit_service":
            state = replace(action.service, real_servers=state.real_servers)
            continue
        rs = action.dest
        others = tuple(r for r in state.real_servers if r.key != rs.key)
        if action.kind == "add_dest":
            state = replace(state, real_servers=(*others, rs))
        elif action.kind == "set_dest":
            old = next((r for r in state.real_servers if r.key == rs.key), rs)
            kept = replace(rs, active_connections=old.active_connections, inactive_connections=old.inactive_connections)
            state = replace(state, real_servers=(*others, kept))
        else:  # del_dest
            state = replace(state, real_servers=others)
    return state


# --------------------------------------------------------------------------------------------------
# Presentation
# --------------------------------------------------------------------------------------------------


def to_dict(service: Service | None, stats: bool = True) -> dict[str, Any]:
    """Plain dict of a service for RETURN (``{}`` when it does not exist)."""
    if service is None:
        return {}
    real_servers = []
    for rs in service.real_servers:
        item: dict[str, Any] = {
            "address": rs.address,
            "port": rs.port,
            "weight": rs.weight,
            "forwarding": rs.forwarding,
        }
        if stats:
            item["active_connections"] = rs.active_connections
            item["inactive_connections"] = rs.inactive_connections
        real_servers.append(item)
    return {
        "address": service.address,
        "port": service.port,
        "protocol": service.protocol,
        "scheduler": service.scheduler,
        "persistence_timeout": service.persistence_timeout,
        "real_servers": real_servers,
    }


def diff(before: Service | None, after: Service | None) -> dict[str, dict[str, Any]]:
    """Ansible's ``{"before": ..., "after": ...}``, without the connection counters."""
    return {"before": to_dict(before, stats=False), "after": to_dict(after, stats=False)}
