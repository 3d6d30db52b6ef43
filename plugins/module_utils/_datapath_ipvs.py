# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to the kubeha.apiserver collection: not a public API, may change without notice.
"""The IPVS data path: one IPVS virtual server per VIP (TCP, NAT), its real servers the backends with their weights.

Plumbing: the ip_vs modules (and ``ip_vs_fo`` where a master prefers its own apiserver), the IPVS sysctls, the
VIP interface and an nftables masquerade of VIP-sourced traffic. A failed backend's connections are found in
/proc/net/ip_vs_conn and closed (``ss -K``, ``conntrack -D``). pyroute2 is imported by ``_ipvs``'s adapter when
IPVS is first used.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ansible_collections.kubeha.apiserver.plugins.module_utils._datapath import (
    Action,
    Closed,
    DataPath,
    Desired,
    close_with_commands,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_config import LOG, GuardError
from ansible_collections.kubeha.apiserver.plugins.module_utils._ipvs import load_kernel_modules
from ansible_collections.kubeha.apiserver.plugins.module_utils._ipvs_model import IPVSError, plan, to_dict
from ansible_collections.kubeha.apiserver.plugins.module_utils._kernel import ipvs_loaded
from ansible_collections.kubeha.apiserver.plugins.module_utils._node_plumbing import ensure_sysctls, run_checked
from ansible_collections.kubeha.apiserver.plugins.module_utils._proxy import (
    Backend,
    desired_service,
    has_local_backend,
    scheduler_for,
)

NFT_TABLE = "kubeha_apiserver"
# Set while the guard runs in IPVS mode.
# - conntrack=1: IPVS-forwarded connections get conntrack entries, which the nftables masquerade of
#   VIP-sourced traffic needs.
# - expire_nodest_conn=1: connections to a real server that was removed (a master left the set) are
#   dropped at their next packet, so clients learn at once instead of retransmitting into nothing.
# - expire_quiescent_template=1: persistence templates of a weight-0 server expire (harmless without
#   persistence; right if someone turns it on).
# net.ipv4.vs.conn_reuse_mode is left at the kernel default (1) on purpose: it reschedules a new
# connection that reuses the source port of an old one, instead of sending it to the old connection's
# real server, which after a failover may be the dead one. Since Linux 5.9 it no longer costs the 1 s SYN
# drop it used to with conntrack=1; mode 0 would trade that for connections pinned to a dead backend.
IPVS_SYSCTLS = {
    "net.ipv4.vs.conntrack": "1",
    "net.ipv4.vs.expire_nodest_conn": "1",
    "net.ipv4.vs.expire_quiescent_template": "1",
}
CLOSED_STATES = frozenset({"TIME_WAIT", "CLOSE", "CLOSE_WAIT", "LAST_ACK"})


def nft_ruleset(vips: Iterable[str]) -> str:
    """The whole table, replaced in one transaction (the ``table; delete table; table {...}`` idiom).

    Node-originated traffic to a VIP on the dummy interface leaves with the VIP as its source address;
    without this masquerade the backends' replies never come back. Loopback is left out: a master's own
    apiserver answers the VIP locally.
    """
    rules = []
    for vip in sorted(vips, key=lambda v: (ipaddress.ip_address(v).version, int(ipaddress.ip_address(v)))):
        family = "ip" if ipaddress.ip_address(vip).version == 4 else "ip6"
        rules.append(f'\t\t{family} saddr {vip} oifname != "lo" masquerade')
    return "\n".join(
        [
            f"table inet {NFT_TABLE}",
            f"delete table inet {NFT_TABLE}",
            f"table inet {NFT_TABLE} {{",
            "\tchain postrouting {",
            "\t\ttype nat hook postrouting priority srcnat; policy accept;",
            *rules,
            "\t}",
            "}",
            "",
        ]
    )


@dataclass(frozen=True)
class IPVSConnection:
    """One line of /proc/net/ip_vs_conn: client -> virtual address -> destination (real server)."""

    protocol: str
    client: str
    client_port: int
    vip: str
    vip_port: int
    dest: str
    dest_port: int
    state: str
    expires_s: int


def _conn_address(text: str) -> str:
    """IPv4 as 8 hex digits in host order (``0A00000B``), IPv6 in full colon form (``%pI6``)."""
    if ":" in text:
        return str(ipaddress.IPv6Address(text))
    if len(text) != 8:
        raise ValueError(f"bad IPv4 field {text!r}")
    return str(ipaddress.IPv4Address(int(text, 16)))


def parse_ip_vs_conn(text: str) -> list[IPVSConnection]:
    """Parse /proc/net/ip_vs_conn (net/netfilter/ipvs/ip_vs_conn.c, ``ip_vs_conn_seq_show``).

    ``Pro FromIP FPrt ToIP TPrt DestIP DPrt State Expires [PEName PEData]``; ports are 4 hex digits. The
    header and lines that do not parse are skipped.
    """
    connections = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 9 or fields[0] == "Pro":
            continue
        try:
            connections.append(
                IPVSConnection(
                    protocol=fields[0],
                    client=_conn_address(fields[1]),
                    client_port=int(fields[2], 16),
                    vip=_conn_address(fields[3]),
                    vip_port=int(fields[4], 16),
                    dest=_conn_address(fields[5]),
                    dest_port=int(fields[6], 16),
                    state=fields[7],
                    expires_s=int(fields[8]),
                )
            )
        except ValueError:
            continue
    return connections


def connections_to(
    connections: Iterable[IPVSConnection], backend: Backend, services: Iterable[tuple[str, int]]
) -> list[IPVSConnection]:
    """The live TCP connections through one of ``services`` (vip, port) to ``backend``."""
    wanted = {(str(ipaddress.ip_address(v)), p) for v, p in services}
    return [
        c
        for c in connections
        if c.protocol == "TCP"
        and (c.dest, c.dest_port) == (backend.address, backend.port)
        and (c.vip, c.vip_port) in wanted
        and c.state not in CLOSED_STATES
    ]


class IPVSDataPath(DataPath):
    """The VIPs' IPVS services, through one netlink adapter per thread.

    pyroute2 0.9 sockets fail with ECONNRESET when two threads (the probe round and the fast check) take turns on
    one, which cost a retry at every takedown: each thread has its own, made on first use.
    """

    mode = "ipvs"
    label = "IPVS"
    retry_after_reset = True
    handle = "netlink socket"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._local = threading.local()
        self._adapters: list[Any] = []
        self._adapters_lock = threading.Lock()

    def plumbing(self) -> list[str]:
        """The ip_vs modules and sysctls, the VIP interface, and the masquerade of VIP-sourced traffic."""
        paths, changes = self.hooks.paths, []
        for scheduler in ["rr", "fo"] if self.cfg.prefer_local else ["rr"]:
            try:
                loaded = load_kernel_modules(
                    scheduler,
                    self.hooks.runner,
                    proc_root=paths.proc_root,
                    sys_root=paths.sys_root,
                    modules_root=paths.modules_root,
                )
            except IPVSError as exc:
                raise GuardError(str(exc)) from exc
            changes += [f"loaded kernel module {name}" for name in loaded]
        changes += ensure_sysctls(IPVS_SYSCTLS, paths.proc_sys)
        changes += super().plumbing()
        run_checked(self.hooks.runner, ["nft", "-f", "-"], nft_ruleset(self.cfg.vips))
        return changes

    def _adapter(self) -> Any:
        """This thread's IPVS adapter (made on first use)."""
        adapter = getattr(self._local, "adapter", None)
        if adapter is None:
            adapter = self._local.adapter = self.hooks.ipvs_factory()
            with self._adapters_lock:
                self._adapters.append(adapter)
        return adapter

    def reset(self) -> None:
        """Close this thread's adapter; the next use makes a new one."""
        adapter = getattr(self._local, "adapter", None)
        if adapter is not None:
            self._local.adapter = None
            with self._adapters_lock:
                self._adapters.remove(adapter)
            with contextlib.suppress(Exception):  # a broken netlink socket must not stop the guard
                adapter.close()

    def plan(self, desired: Desired) -> list[Action]:
        adapter = self._adapter()
        actions: list[Action] = []
        for vip in desired.vips:
            version = ipaddress.ip_address(vip).version
            family = {b: w for b, w in desired.weights.items() if b.version == version}
            scheduler = scheduler_for(desired.prefer_local, has_local_backend(family, desired.local_addresses))
            service = desired_service(vip, desired.port, family, scheduler)
            current = adapter.get(service.address, service.port, service.protocol)
            actions += plan(current, service, purge_real_servers=True)
        return actions

    def apply(self, actions: Sequence[Action]) -> None:
        self._adapter().apply(actions)
        by_service: dict[str, list[str]] = {}
        for action in actions:
            by_service.setdefault(action.service.label, []).append(action.describe())  # type: ignore[attr-defined]
        for label, lines in by_service.items():
            LOG.info("IPVS %s: %s", label, "; ".join(lines))

    def snapshot(self) -> dict[str, Any]:
        adapter = self._adapter()
        shot = {}
        for vip in self.cfg.vips:
            service = adapter.get(vip, self.cfg.port, "tcp")
            shot[vip] = to_dict(service, stats=False) if service is not None else None
        return shot

    def forget(self, pairs: Iterable[tuple[str, int]]) -> list[str]:
        """Delete the IPVS services of (VIP, port) pairs no longer configured (VIP or port changed)."""
        pairs = sorted(set(pairs))
        if not pairs or not ipvs_loaded(self.hooks.paths.proc_root):
            return []
        adapter, removed = self._adapter(), []
        for vip, port in pairs:
            actions = plan(adapter.get(vip, port, "tcp"), None, purge_real_servers=True)
            if actions:
                adapter.apply(actions)
                removed.append("; ".join(a.describe() for a in actions))
        return removed

    def remove(self, pairs: Iterable[tuple[str, int]]) -> list[str]:
        """The VIPs' IPVS services and the masquerade table; sysctls and kernel modules are left."""
        removed = self.forget(pairs)
        if self.hooks.runner(["nft", "list", "table", "inet", NFT_TABLE])[0] == 0:
            run_checked(self.hooks.runner, ["nft", "delete", "table", "inet", NFT_TABLE])
            removed.append(f"nftables table inet {NFT_TABLE}")
        return removed

    def close_connections(self, backend: Backend) -> Closed:
        """Close what still goes to a failed backend: the node's own sockets and the conntrack entries."""
        path = os.path.join(self.hooks.paths.proc_root, "net", "ip_vs_conn")
        try:
            with open(path, encoding="ascii", errors="replace") as handle:
                text = handle.read()
        except OSError as exc:
            raise GuardError(f"cannot read {path}: {exc.strerror or exc}") from exc
        services = [(v, self.cfg.port) for v in self.cfg.vips]
        connections = connections_to(parse_ip_vs_conn(text), backend, services)
        return close_with_commands(self.hooks, self.cfg, backend, connections)

    def close(self) -> None:
        with self._adapters_lock:
            adapters, self._adapters = self._adapters, []
        for adapter in adapters:
            with contextlib.suppress(Exception):
                adapter.close()
