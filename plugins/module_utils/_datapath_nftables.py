# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to the kubeha.apiserver collection: not a public API, may change without notice.
"""The nftables data path: the VIPs DNAT-ed to the ready backends by the kernel, in the collection's own table.

``_nftables`` renders and reads the table (``inet kubeha_apiserver_lb``: an output nat chain with one weighted
``numgen`` map per VIP and the masquerade of VIP-sourced traffic); every change replaces the whole table in one
``nft -f`` transaction. It never touches kube-proxy's tables, and kube-proxy (nftables mode included) never
touches it: the data path survives kube-proxy's start-up cleanup, which deletes every IPVS service.

Preferring the local apiserver is IPVS's ``fo`` scheduler (new connections to the highest weight): here the map
holds only the backends of the highest weight. A failed backend's connections are found in conntrack (its entries
from a VIP to that backend) and closed as in IPVS mode: the node's own sockets reset, the entries deleted. Table and
connections are read again at each fast check, so a flushed ruleset is restored within one interval.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ansible_collections.kubeha.apiserver.plugins.module_utils import _nftables
from ansible_collections.kubeha.apiserver.plugins.module_utils._datapath import (
    Action,
    Closed,
    DataPath,
    Desired,
    close_with_commands,
    conntrack_commands,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_config import LOG, GuardError
from ansible_collections.kubeha.apiserver.plugins.module_utils._node_plumbing import command_error
from ansible_collections.kubeha.apiserver.plugins.module_utils._proxy import Backend

TABLE = _nftables.DEFAULT_TABLE


def nft_weights(weights: Mapping[Backend, int], prefer_local: bool) -> dict[Backend, int]:
    """The weights the map holds: with ``prefer_local``, only the highest-weighted backends (the local apiserver while
    it is up, as IPVS's ``fo`` scheduler sends every new connection to it); else the weights as decided."""
    if not prefer_local or not weights:
        return dict(weights)
    top = max(weights.values())
    return {b: (w if w == top else 0) for b, w in weights.items()}


def desired_table(desired: Desired) -> dict[_nftables.ServiceKey, tuple[_nftables.Backend, ...]]:
    """One service per VIP, its backends those of the VIP's address family."""
    weights = nft_weights(desired.weights, desired.prefer_local)
    table = {}
    for vip in desired.vips:
        key = _nftables.service_key(vip, desired.port)
        table[key] = tuple(
            _nftables.Backend(ipaddress.ip_address(b.address), b.port, w)
            for b, w in weights.items()
            if b.version == key.address.version
        )
    return table


@dataclass(frozen=True)
class WriteTable:
    """The whole table, replaced in one transaction."""

    table: Mapping[_nftables.ServiceKey, tuple[_nftables.Backend, ...]]

    def describe(self) -> str:
        parts = []
        for service, backends in _nftables.describe(self.table).items():
            listed = ", ".join(f"{b['address']}:{b['port']}*{b['weight']}" for b in backends) or "none (reject)"
            parts.append(f"{service} -> {listed}")
        return f"write nftables table inet {TABLE}: " + "; ".join(parts)


@dataclass(frozen=True)
class ConntrackConnection:
    """A conntrack entry of a connection to a VIP: its original direction's source and destination."""

    client: str
    client_port: int
    vip: str
    vip_port: int
    state: str


_CONNTRACK_FIELD = re.compile(r"(src|dst|sport|dport)=(\S+)")
OPEN_STATES = frozenset({"SYN_SENT", "SYN_RECV", "ESTABLISHED"})


def parse_conntrack(text: str) -> list[ConntrackConnection]:
    """``conntrack -L`` lines: ``tcp 6 431999 ESTABLISHED src=C dst=VIP sport=P dport=PORT src=B dst=... [ASSURED]``;
    the first src/dst/sport/dport are the original direction. Lines that do not parse are skipped."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[0] != "tcp":
            continue
        original: dict[str, str] = {}
        for key, value in _CONNTRACK_FIELD.findall(line):
            original.setdefault(key, value)
        try:
            found.append(
                ConntrackConnection(
                    client=str(ipaddress.ip_address(original["src"])),
                    client_port=int(original["sport"]),
                    vip=str(ipaddress.ip_address(original["dst"])),
                    vip_port=int(original["dport"]),
                    state=fields[3],
                )
            )
        except (KeyError, ValueError):
            continue
    return found


class NftablesDataPath(DataPath):
    mode = "nftables"
    label = "the nftables table"
    verify_each_fast_check = True

    def _run(self, argv: Sequence[str], stdin: str | None = None) -> tuple[int, str, str]:
        return self.hooks.runner(list(argv), stdin) if stdin is not None else self.hooks.runner(list(argv))

    def _read(self) -> _nftables.Reading:
        try:
            return _nftables.read_table(self._run, TABLE)
        except _nftables.NftablesError as exc:
            raise GuardError(str(exc)) from exc

    def plan(self, desired: Desired) -> list[Action]:
        reading = self._read()
        want = _nftables.normalised(desired_table(desired))
        if reading.exists and not reading.foreign and _nftables.normalised(reading.services) == want:
            return []
        return [WriteTable(want)]

    def apply(self, actions: Sequence[Action]) -> None:
        for action in actions:
            if not isinstance(action, WriteTable):
                raise GuardError(f"not an nftables action: {action.describe()}")
            text = _nftables.render(action.table, TABLE)
            rc, _out, err = self._run(["nft", "-f", "-"], text)
            if rc != 0:
                raise GuardError(f"nft refused the table inet {TABLE}: {command_error(['nft', '-f', '-'], rc, err)}")
            LOG.info("nftables: %s", action.describe().removeprefix(f"write nftables table inet {TABLE}: "))

    def snapshot(self) -> dict[str, Any]:
        return {"nftables": _nftables.describe(self._read().services)}

    def remove(self, pairs: Iterable[tuple[str, int]]) -> list[str]:
        """The whole table (it holds nothing but the VIPs' services and their masquerade)."""
        if not self._read().exists:
            return []
        rc, _out, err = self._run(["nft", "delete", "table", "inet", TABLE])
        if rc != 0:
            raise GuardError(command_error(["nft", "delete", "table", "inet", TABLE], rc, err))
        return [f"nftables table inet {TABLE}"]

    def close_connections(self, backend: Backend) -> Closed:
        """Close what still goes to a failed backend: the node's own sockets and the conntrack entries."""
        connections: list[ConntrackConnection] = []
        for argv in conntrack_commands(backend, self.cfg.vips, self.cfg.port, "-L"):
            rc, out, err = self._run(argv)
            if rc != 0:
                raise GuardError(f"listing the connections to {backend}: {command_error(argv, rc, err)}")
            connections += [c for c in parse_conntrack(out) if c.state in OPEN_STATES]
        return close_with_commands(self.hooks, self.cfg, backend, connections)
