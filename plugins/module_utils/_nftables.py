# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A kernel load balancer in nftables: virtual address:port DNAT-ed to weighted backends, for the node's own traffic.

The collection's own table (``inet kubeha_apiserver_lb`` by default, never kube-proxy's), one rule per virtual
service in an ``output`` nat chain: ``ip daddr VIP tcp dport PORT dnat ip to numgen random mod TOTAL map {...}``, each
backend holding a range of the generator's values as wide as its weight (weights divided by their greatest common
divisor, so equal weights give one value each). A backend with weight 0 is left out of the map (no new connection
goes to it; established ones keep their conntrack entry); a service whose backends all weigh 0 rejects new
connections with a TCP reset, so clients fail over at once instead of waiting. VIP-sourced traffic leaving by
another interface than loopback is masqueraded (the backends' replies must come back to this node).

Every change replaces the whole table in one ``nft -f`` transaction (``table; delete table; table {...}``): a reload
never leaves a moment without rules, and established connections keep their NAT (it lives in conntrack, not in the
rules). The table is read back as nft's JSON, so an altered or flushed table is seen as a difference and rewritten.
"""

from __future__ import annotations

import ipaddress
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_TABLE = "kubeha_apiserver_lb"
# The output hook's nat priority (the value nft names dstnat in the prerouting hook).
OUTPUT_NAT_PRIORITY = -100
MAX_WEIGHT = 65535
PROTOCOLS = ("tcp", "udp")

# run(argv, stdin text or None) -> (rc, stdout, stderr): AnsibleModule.run_command in the module, a fake in unit tests.
Runner = Callable[..., tuple[int, str, str]]


class NftablesError(Exception):
    """Bad input, or what nft said when it refused a command (its message included)."""


@dataclass(frozen=True)
class Backend:
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int
    weight: int = 1

    def endpoint(self) -> str:
        return f"[{self.address}]:{self.port}" if self.address.version == 6 else f"{self.address}:{self.port}"


@dataclass(frozen=True)
class ServiceKey:
    protocol: str
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int

    def describe(self) -> str:
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{self.protocol} {host}:{self.port}"

    def order(self) -> tuple[Any, ...]:
        return (self.protocol, self.address.version, int(self.address), self.port)


def _backend_order(backend: Backend) -> tuple[int, int, int]:
    return (backend.address.version, int(backend.address), backend.port)


# The table as data: each virtual service and its backends (weights as the rules hold them).
Table = dict[ServiceKey, tuple[Backend, ...]]


def _port(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise NftablesError(f"{what} {value!r} is not a port (1-65535)")
    return value


def _address(value: Any, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(str(value).strip())
    except ValueError:
        raise NftablesError(f"{what} {value!r} is not an IPv4 or IPv6 address") from None


def service_key(address: Any, port: Any, protocol: str = "tcp") -> ServiceKey:
    if protocol not in PROTOCOLS:
        raise NftablesError(f"protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    vip = _address(address, "address")
    if vip.is_unspecified or vip.is_multicast:
        raise NftablesError(f"address {vip} cannot be a virtual service address (unspecified or multicast)")
    return ServiceKey(protocol, vip, _port(port, "port"))


def backends_from(key: ServiceKey, items: Iterable[Mapping[str, Any]]) -> tuple[Backend, ...]:
    """The backends as given (``address``, ``port``, ``weight``), checked: the service's family, each listed once."""
    result: list[Backend] = []
    for item in items:
        address = _address(item.get("address"), "backend address")
        port = _port(item.get("port"), f"backend {address} port")
        weight = item.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= MAX_WEIGHT:
            raise NftablesError(f"backend {address} weight {weight!r} is not 0-{MAX_WEIGHT}")
        backend = Backend(address, port, weight)
        if address.version != key.address.version:
            raise NftablesError(
                f"backend {backend.endpoint()} is IPv{address.version} but {key.describe()} is IPv{key.address.version}"
            )
        if any((b.address, b.port) == (address, port) for b in result):
            raise NftablesError(f"backend {backend.endpoint()} is listed twice")
        result.append(backend)
    return tuple(sorted(result, key=_backend_order))


def effective(backends: Iterable[Backend]) -> tuple[Backend, ...]:
    """What the rules can hold: the backends that take new connections, weights divided by their gcd."""
    active = [b for b in backends if b.weight > 0]
    if not active:
        return ()
    divisor = math.gcd(*(b.weight for b in active))
    return tuple(sorted((Backend(b.address, b.port, b.weight // divisor) for b in active), key=_backend_order))


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


def _family(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return "ip" if address.version == 4 else "ip6"


def service_rule(key: ServiceKey, backends: Sequence[Backend]) -> str:
    family = _family(key.address)
    match = f"{family} daddr {key.address} {key.protocol} dport {key.port}"
    active = effective(backends)
    if not active:
        reject = "reject with tcp reset" if key.protocol == "tcp" else "reject"
        return f"{match} {reject}"
    entries, start = [], 0
    for backend in active:
        end = start + backend.weight - 1
        values = str(start) if end == start else f"{start}-{end}"
        entries.append(f"{values} : {backend.address} . {backend.port}")
        start = end + 1
    return f"{match} dnat {family} to numgen random mod {start} map {{ {', '.join(entries)} }}"


def render(table: Mapping[ServiceKey, Sequence[Backend]], name: str = DEFAULT_TABLE) -> str:
    """The ``nft -f`` text that makes the table exactly ``table`` in one transaction (none at all when empty)."""
    head = [f"table inet {name}", f"delete table inet {name}"]
    if not table:
        return "\n".join(head) + "\n"
    keys = sorted(table, key=ServiceKey.order)
    vips = sorted({k.address for k in keys}, key=lambda a: (a.version, int(a)))
    lines = [
        *head,
        f"table inet {name} {{",
        "\tchain output {",
        f"\t\ttype nat hook output priority {OUTPUT_NAT_PRIORITY}; policy accept;",
        *(f"\t\t{service_rule(k, table[k])}" for k in keys),
        "\t}",
        "\tchain postrouting {",
        "\t\ttype nat hook postrouting priority srcnat; policy accept;",
        *(f'\t\t{_family(v)} saddr {v} oifname != "lo" masquerade' for v in vips),
        "\t}",
        "}",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Reading the table back (nft -j)
# --------------------------------------------------------------------------------------------------


def _match(expr: Mapping[str, Any]) -> tuple[str, str, Any] | None:
    """``(protocol, field, value)`` of an ``==`` payload match, else None."""
    match = expr.get("match")
    if not isinstance(match, Mapping) or match.get("op") != "==":
        return None
    payload = (match.get("left") or {}).get("payload") if isinstance(match.get("left"), Mapping) else None
    if not isinstance(payload, Mapping):
        return None
    return str(payload.get("protocol")), str(payload.get("field")), match.get("right")


def _values(element: Any) -> int:
    """How many generator values a map key covers (an int, or a ``range``)."""
    if isinstance(element, int) and not isinstance(element, bool):
        return 1
    if isinstance(element, Mapping) and isinstance(element.get("range"), list) and len(element["range"]) == 2:
        low, high = element["range"]
        return int(high) - int(low) + 1
    raise ValueError(f"unexpected map key {element!r}")


def parse_rule(rule: Mapping[str, Any]) -> tuple[ServiceKey, tuple[Backend, ...]]:
    """One service rule as ``service_rule`` writes it; ValueError for anything else."""
    exprs = rule.get("expr") or []
    matches = [m for m in (_match(e) for e in exprs) if m is not None]
    daddr = next((m for m in matches if m[0] in ("ip", "ip6") and m[1] == "daddr"), None)
    dport = next((m for m in matches if m[0] in PROTOCOLS and m[1] == "dport"), None)
    if daddr is None or dport is None or len(matches) != 2:
        raise ValueError("not a service rule")
    key = ServiceKey(dport[0], ipaddress.ip_address(str(daddr[2])), int(dport[2]))
    action = exprs[-1]
    if "reject" in action:
        return key, ()
    dnat = action.get("dnat")
    if not isinstance(dnat, Mapping):
        raise ValueError("not a service rule")
    mapping = (dnat.get("addr") or {}).get("map") or {}
    numgen = (mapping.get("key") or {}).get("numgen") or {}
    if numgen.get("mode") != "random" or numgen.get("offset", 0) != 0:
        raise ValueError("not a service rule")
    backends = []
    for element, target in (mapping.get("data") or {}).get("set") or []:
        address, port = target["concat"]
        backends.append(Backend(ipaddress.ip_address(str(address)), int(port), _values(element)))
    if sum(b.weight for b in backends) != numgen.get("mod"):
        raise ValueError("the map does not cover the generator's values")
    return key, tuple(sorted(backends, key=_backend_order))


@dataclass
class Reading:
    """The table as read: its services, and whether it holds anything this module would not have written."""

    exists: bool
    services: Table
    foreign: list[str]


def parse_table(document: Mapping[str, Any], name: str = DEFAULT_TABLE) -> Reading:
    services: Table = {}
    foreign: list[str] = []
    chains: dict[str, Mapping[str, Any]] = {}
    for item in document.get("nftables") or []:
        if "chain" in item:
            chains[item["chain"].get("name")] = item["chain"]
        elif "rule" in item:
            rule = item["rule"]
            chain = rule.get("chain")
            if chain == "postrouting":
                continue  # derived from the services: rewritten with them
            try:
                if chain != "output":
                    raise ValueError("a rule in another chain")
                key, backends = parse_rule(rule)
            except (ValueError, KeyError, TypeError):
                foreign.append(f"chain {chain} rule handle {rule.get('handle')}")
                continue
            services[key] = backends
        elif any(kind in item for kind in ("set", "map", "element", "flowtable", "counter", "quota")):
            foreign.append(f"{next(iter(item))} {next(iter(item.values())).get('name')}")
    output = chains.get("output")
    if output is not None and (output.get("hook") != "output" or output.get("prio") != OUTPUT_NAT_PRIORITY):
        foreign.append("chain output with another hook or priority")
    if set(chains) - {"output", "postrouting"}:
        foreign.extend(f"chain {c}" for c in sorted(set(chains) - {"output", "postrouting"}))
    return Reading(True, services, foreign)


def read_table(run: Runner, name: str = DEFAULT_TABLE) -> Reading:
    rc, out, err = run(["nft", "-j", "list", "table", "inet", name], None)
    if rc != 0:
        if "No such file or directory" in err or "does not exist" in err:
            return Reading(False, {}, [])
        raise NftablesError(f"nft -j list table inet {name} failed: {err.strip() or f'exit {rc}'}")
    try:
        document = json.loads(out)
    except ValueError as exc:
        raise NftablesError(f"nft -j list table inet {name}: not JSON: {exc}") from None
    return parse_table(document, name)


# --------------------------------------------------------------------------------------------------
# Plan and apply
# --------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    before: Table
    after: Table
    foreign: list[str]
    text: str | None  # the nft -f text to apply; None when nothing changes

    @property
    def changed(self) -> bool:
        return self.text is not None


def normalised(table: Mapping[ServiceKey, Sequence[Backend]]) -> dict[ServiceKey, tuple[Backend, ...]]:
    return {key: effective(backends) for key, backends in table.items()}


def plan(reading: Reading, key: ServiceKey, backends: Sequence[Backend] | None, name: str = DEFAULT_TABLE) -> Plan:
    """The table with ``key`` set to ``backends`` (None: removed), every other service kept as read."""
    after: Table = dict(reading.services)
    if backends is None:
        after.pop(key, None)
    else:
        after[key] = tuple(backends)
    if not after:
        same = not reading.exists  # no service left: the table goes
    else:
        same = reading.exists and not reading.foreign and normalised(after) == normalised(reading.services)
    return Plan(reading.services, after, reading.foreign, None if same else render(after, name))


def apply(run: Runner, text: str) -> None:
    rc, _out, err = run(["nft", "-f", "-"], text)
    if rc != 0:
        raise NftablesError(f"nft refused the table: {err.strip() or f'exit {rc}'}")


def describe(table: Mapping[ServiceKey, Sequence[Backend]]) -> dict[str, list[dict[str, Any]]]:
    """The table as the module returns it: ``{"tcp 169.254.100.1:6444": [{"address", "port", "weight"}]}``."""
    return {
        key.describe(): [{"address": str(b.address), "port": b.port, "weight": b.weight} for b in backends]
        for key, backends in sorted(table.items(), key=lambda item: item[0].order())
    }
