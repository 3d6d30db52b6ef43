# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to the kubeha.apiserver collection: not a public API, may change without notice.
"""The data path: what carries VIP:port to the ready apiservers, one interface with one backend per mode.

The guard decides (health, weights, which backends went down); a data path only carries the decision out:
``plumbing()`` sets up what it needs (the VIP interface and its own kernel parts), ``plan(desired)`` lists the
actions that would make it match (reading, never writing: check mode calls it too), ``apply(actions)`` does
them, ``snapshot()`` shows it, ``forget(pairs)`` and ``remove(pairs)`` take down what it carries for VIPs or
ports no longer configured, or everything it set up. The closers of connections to a failed backend (``ss -K``
for the node's own sockets, ``conntrack -D`` for the kernel's entries) are shared by the kernel data paths.
"""

from __future__ import annotations

import ipaddress
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_config import GuardConfig
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_hooks import Hooks
from ansible_collections.kubeha.apiserver.plugins.module_utils._node_plumbing import command_error, ensure_interface
from ansible_collections.kubeha.apiserver.plugins.module_utils._proxy import Backend


@dataclass(frozen=True)
class Desired:
    """What the data path must carry: every backend (haproxy keeps them all, with its own checks) and the weights
    the guard decided from their health (0: no new connections)."""

    vips: tuple[str, ...]
    port: int
    backends: tuple[Backend, ...]
    weights: Mapping[Backend, int]
    local_addresses: tuple[str, ...]
    prefer_local: bool


class Action(Protocol):
    """One step of a plan; ``describe()`` is the line the log, the module's result and check mode show."""

    def describe(self) -> str: ...


@dataclass(frozen=True)
class Closed:
    """What closing a failed backend's connections did: the node's own sockets reset, of the connections seen."""

    sockets: int
    connections: int
    failure: str | None = None


class DataPath(ABC):
    """One mode's data path on this node. Made by ``make_data_path``; the guard calls it under its lock."""

    mode: ClassVar[str]
    label: ClassVar[str]  # "applying <label>" names it in errors and logs
    # Whether a failed plan or apply is retried at once after ``reset()`` (a kernel socket that failed under load).
    retry_after_reset: ClassVar[bool] = False
    handle: ClassVar[str] = "handle"  # what reset() renews, as the retry's log line names it
    # Whether the fast check (every 250 ms) also plans the last decision again, so that a data path someone else
    # flushed is restored within one fast-check interval instead of one round.
    verify_each_fast_check: ClassVar[bool] = False

    def __init__(self, cfg: GuardConfig, hooks: Hooks) -> None:
        self.cfg = cfg
        self.hooks = hooks
        self.refused = 0  # changes the data path's own checks refused (haproxy's configuration check)

    def reconfigure(self, cfg: GuardConfig) -> None:
        self.cfg = cfg

    def plumbing(self) -> list[str]:
        """Idempotently set up the interface holding the VIPs (and, in a subclass, the mode's own parts); what
        changed. ``GuardError`` names what failed."""
        return ensure_interface(self.cfg.interface, self.cfg.vips, self.hooks.runner)

    @abstractmethod
    def plan(self, desired: Desired) -> list[Action]:
        """The actions that make the data path carry ``desired``; [] when it already does. Changes nothing."""

    @abstractmethod
    def apply(self, actions: Sequence[Action]) -> None:
        """Carry out ``actions``; ``GuardError`` (or the kernel's own exception) when one fails."""

    @abstractmethod
    def snapshot(self) -> dict[str, Any]:
        """The data path as it is now, comparable from one call to the next (no counters)."""

    def forget(self, pairs: Iterable[tuple[str, int]]) -> list[str]:
        """Stop carrying the (VIP, port) pairs the configuration no longer has; what was removed."""
        return []

    @abstractmethod
    def remove(self, pairs: Iterable[tuple[str, int]]) -> list[str]:
        """Remove everything this mode set up for ``pairs`` (the interface is the caller's); what was removed."""

    def pending(self) -> bool:
        """Whether a step that failed waits for its retry (the data path has not recovered yet)."""
        return False

    def went_down(self, backend: Backend, refused: bool) -> None:
        """Told at once when ``backend`` went down (``refused``: its connect was refused, the apiserver died)."""
        return None

    def close_connections(self, backend: Backend) -> Closed | None:
        """Close what still goes to ``backend``, once new connections avoid it; None when the mode has nothing to
        close (haproxy shuts its own sessions in ``went_down``)."""
        return None

    def reset(self) -> None:
        """Drop kernel handles after an error; the next call makes new ones."""
        return None

    def close(self) -> None:
        """Release what the data path holds open (sockets); the data path itself stays."""
        return None


# --------------------------------------------------------------------------------------------------
# Closing the connections of a failed backend (the kernel data paths)
# --------------------------------------------------------------------------------------------------


class Connection(Protocol):
    """A TCP connection through a VIP: client -> VIP:port, forwarded to a backend."""

    client: str
    client_port: int
    vip: str
    vip_port: int


def _ss_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address  # without brackets ss reads "fd00::1" as "fd00:" port 1


def socket_kill_commands(connections: Iterable[Connection], local_addresses: Iterable[str]) -> list[list[str]]:
    """``ss -K`` commands destroying the node's own client sockets of ``connections``.

    The client then gets an error at once (ECONNABORTED) and reconnects, instead of waiting ~45 s for its
    HTTP/2 pings to time out. Needs CONFIG_INET_DIAG_DESTROY (Debian kernels have it) and CAP_NET_ADMIN.
    """
    local = {str(ipaddress.ip_address(a)) for a in local_addresses}
    commands: list[list[str]] = []
    for c in connections:
        if c.client not in local:
            continue
        argv = ["ss", "-K", "-t", "-n", "state", "all"]
        argv += ["src", _ss_host(c.client), "sport", "=", f":{c.client_port}"]
        argv += ["dst", _ss_host(c.vip), "dport", "=", f":{c.vip_port}"]
        if argv not in commands:
            commands.append(argv)
    return commands


def conntrack_commands(backend: Backend, vips: Iterable[str], port: int, operation: str = "-D") -> list[list[str]]:
    """``conntrack`` commands for the entries of connections from the VIPs to ``backend``: ``-D`` deletes them,
    ``-L`` lists them.

    With IPVS NAT and ``net.ipv4.vs.conntrack=1``, as with an nftables DNAT, an entry's reply source is the
    backend.
    """
    commands = []
    for vip in vips:
        if ipaddress.ip_address(vip).version != backend.version:
            continue
        family = "ipv4" if backend.version == 4 else "ipv6"
        orig = ["--orig-dst", str(ipaddress.ip_address(vip)), "--orig-port-dst", str(port)]
        reply = ["--reply-src", backend.address, "--reply-port-src", str(backend.port)]
        commands.append(["conntrack", operation, "-f", family, "-p", "tcp", *orig, *reply])
    return commands


def close_with_commands(hooks: Hooks, cfg: GuardConfig, backend: Backend, connections: Sequence[Connection]) -> Closed:
    """Reset the node's own sockets among ``connections`` and delete the backend's conntrack entries."""
    local = {*cfg.vips, *cfg.local_addresses, "127.0.0.1", "::1"}
    kills = socket_kill_commands(connections, local)
    failures = []
    for argv in kills:
        rc, _out, err = hooks.runner(argv)
        if rc != 0:
            failures.append(command_error(argv, rc, err))
    for argv in conntrack_commands(backend, cfg.vips, cfg.port):
        rc, _out, err = hooks.runner(argv)
        if rc != 0 and "0 flow entries" not in err:
            failures.append(command_error(argv, rc, err))
    return Closed(len(kills), len(connections), failures[0] if failures else None)
