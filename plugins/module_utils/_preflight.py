# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to the kubeha.apiserver collection: not a public API, may change without notice.
"""Preflight checks of a node-local apiserver proxy: the inputs, and the node they are applied to.

Pure logic over plain data (`check`), plus readers of the node's state (`read_node_facts`) that use only
/proc, /sys and `ip -j`. Nothing here changes the node.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import struct
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from ansible_collections.kubeha.apiserver.plugins.module_utils._cluster_networks import command_lines, flag_values
from ansible_collections.kubeha.apiserver.plugins.module_utils._endpoint import (
    EndpointError,
    format_endpoint,
    split_endpoint,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._kernel import kernel_module

# A runtime alias: Union, because ansible-test's pylint rejects `X | Y` outside annotations.
Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]  # noqa: UP007


@dataclass(frozen=True)
class NodeFacts:
    # interface name -> its addresses with their prefix (e.g. "10.0.0.5/24")
    interfaces: dict[str, list[str]] = field(default_factory=dict)
    # (address, port) of listening TCP sockets; "0.0.0.0" and "::" are wildcards
    listening: frozenset[tuple[str, int]] = frozenset()
    ipvs_available: bool = False
    ipvs_reason: str = ""
    nftables_available: bool = False
    nftables_reason: str = ""
    # the mode of the kube-proxy running here ("" when none runs), and where it was read
    kube_proxy_mode: str = ""
    kube_proxy_evidence: str = ""


MODES = ("ipvs", "nftables", "haproxy")


@dataclass(frozen=True)
class Verdict:
    errors: list[str]
    warnings: list[str]
    mode: str  # ipvs, nftables or haproxy: "auto" resolved
    backends: list[str]  # normalised "addr:port" / "[addr6]:port"
    mode_reason: str = ""  # why this mode (the rule auto applied, or "asked for")


def choose_mode(facts: NodeFacts) -> tuple[str, str]:
    """``auto``'s choice for this node, and why.

    - kube-proxy runs in nftables mode: nftables. Its start-up cleanup deletes every IPVS service on the node (it
      ignores excludeCIDRs), at every rollout, upgrade and reboot; the collection's own nftables table is never
      touched by it.
    - IPVS in the kernel: IPVS (kube-proxy in IPVS or iptables mode, or none yet).
    - otherwise: haproxy, a userspace proxy that needs neither.
    """
    if facts.kube_proxy_mode == "nftables":
        if facts.nftables_available:
            return "nftables", (
                f"kube-proxy runs in nftables mode ({facts.kube_proxy_evidence}): its start-up cleanup deletes IPVS "
                "services, never the collection's nftables table"
            )
        return "haproxy", f"kube-proxy runs in nftables mode but nftables is not usable here: {facts.nftables_reason}"
    proxy = f"kube-proxy in {facts.kube_proxy_mode} mode" if facts.kube_proxy_mode else "no kube-proxy running yet"
    if facts.ipvs_available:
        return "ipvs", f"IPVS is available ({facts.ipvs_reason}); {proxy}"
    return "haproxy", f"no IPVS in this kernel ({facts.ipvs_reason}); {proxy}"


def parse_endpoint(value: str) -> tuple[Address, int]:
    """`10.0.0.1:6443` or `[fd00::1]:6443` -> (address, port); ValueError names the value."""
    try:
        host, port = split_endpoint(str(value))
    except EndpointError as exc:
        raise ValueError(f"backend {exc}") from None
    return ipaddress.ip_address(host), port


def _parse_vip(value: str | None, version: int, errors: list[str]) -> Address | None:
    if not value:
        return None
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        errors.append(f"VIP {value!r} is not an IP address")
        return None
    if address.version != version:
        errors.append(f"VIP {value!r} is IPv{address.version}, expected an IPv{version} address here")
        return None
    unusable = _unusable_vip(address)
    if unusable:
        errors.append(f"VIP {value} is {unusable}")
        return None
    return address


def _unusable_vip(address: Address) -> str:
    """Why ``address`` cannot be a node-local VIP, or "" when it can."""
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_loopback:
        return "a loopback address (the node's own traffic to it never leaves lo, so IPVS would not see it)"
    if address.is_multicast:
        return "a multicast address"
    if address.version == 4 and address == ipaddress.IPv4Address("255.255.255.255"):
        return "the broadcast address"
    if address.version == 6 and address.is_link_local:
        return "an IPv6 link-local address (it needs a zone: which interface is ambiguous)"
    if address.version == 6 and address.ipv4_mapped is not None:
        return f"an IPv4-mapped IPv6 address: give the IPv4 address {address.ipv4_mapped} as the IPv4 VIP"
    return ""


def check(
    vip4: str | None,
    vip6: str | None,
    port: int,
    backends: Sequence[str],
    mode: str,
    facts: NodeFacts,
    forbidden_ranges: Iterable[str] = (),
    own_interface: str = "kha0",
    metrics_address: str = "127.0.0.1",
    metrics_port: int = 9445,
    node_addresses: Iterable[str] = (),
) -> Verdict:
    errors: list[str] = []
    warnings: list[str] = []
    vips = [v for v in (_parse_vip(vip4, 4, errors), _parse_vip(vip6, 6, errors)) if v is not None]
    if not vips and not errors:
        errors.append("no VIP: set an IPv4 and/or an IPv6 virtual address")
    if not 1 <= int(port) <= 65535:
        errors.append(f"port {port} is not 1-65535")

    parsed: list[tuple[Address, int]] = []
    if not backends:
        errors.append("no backends: list at least one apiserver as ADDRESS:PORT")
    for value in backends:
        try:
            parsed.append(parse_endpoint(value))
        except ValueError as exc:
            errors.append(str(exc))
    families = {v.version for v in vips}
    for address, bport in parsed:
        if vips and address.version not in families:
            errors.append(
                f"backend {format_endpoint(address, bport)} is IPv{address.version} but no VIP of that family is set "
                f"(VIPs: {', '.join(map(str, vips))})"
            )
    if vips and parsed and not any(a.version == v.version for v in vips for a, _port in parsed):
        errors.append("no backend shares an address family with the VIPs")
    if len(set(parsed)) != len(parsed):
        errors.append("backends list the same ADDRESS:PORT twice")
    # The inventory's hosts: a VIP that is another node's address would capture that node's traffic here. Given the
    # same on every host, so refused everywhere, not only on the node that has it (names are not addresses: skipped).
    for text in node_addresses:
        try:
            address = ipaddress.ip_address(str(text).strip("[]"))
        except ValueError:
            continue
        errors.extend(f"VIP {v} is the address of a host of the inventory ({text})" for v in vips if v == address)
    # The same on every node (the backends are the cluster's), so refused everywhere, not only on that master.
    errors.extend(
        f"VIP {v} is the address of the apiserver {format_endpoint(a, bport)}: a VIP must be an address no host has"
        for v in vips
        for a, bport in parsed
        if a == v
    )

    for text in forbidden_ranges:
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            errors.append(f"range {text!r} is not a CIDR")
            continue
        errors.extend(f"VIP {v} is inside {network}, a node, pod or service range" for v in vips if v in network)

    for iface, addrs in facts.interfaces.items():
        for cidr in addrs:
            iface_net = ipaddress.ip_interface(cidr)
            for v in vips:
                if iface == own_interface or v.version != iface_net.version:
                    continue
                if iface == "lo" and iface_net.ip == v and iface_net.network.prefixlen == iface_net.max_prefixlen:
                    continue  # the proxy's own VIP where it lives on loopback (haproxy and nftables modes)
                if iface_net.ip == v:
                    errors.append(f"VIP {v} is already in use on interface {iface}")
                elif iface_net.network.prefixlen < iface_net.max_prefixlen and v in iface_net.network:
                    errors.append(f"VIP {v} is inside {iface_net.network}, the network of interface {iface}")

    resolved, reason = mode, "asked for"
    if mode == "auto":
        resolved, reason = choose_mode(facts)
    elif mode == "ipvs" and not facts.ipvs_available:
        errors.append(f"mode ipvs asked, but IPVS is not available in this kernel: {facts.ipvs_reason}")
    elif mode == "nftables" and not facts.nftables_available:
        errors.append(f"mode nftables asked, but nftables is not available in this kernel: {facts.nftables_reason}")
    elif mode not in MODES:
        errors.append(f"mode {mode!r} is not one of auto, {', '.join(MODES)}")
    if resolved == "ipvs" and facts.kube_proxy_mode == "nftables":
        warnings.append(
            f"kube-proxy runs in nftables mode here ({facts.kube_proxy_evidence}): it deletes the IPVS services at "
            "each of its starts and the guard restores them about a second later; mode nftables (or auto) avoids it"
        )

    for v in vips:
        wildcard = "0.0.0.0" if v.version == 4 else "::"
        if (str(v), int(port)) in facts.listening and resolved == "ipvs":
            errors.append(f"port {port} on VIP {v} is taken by a listening socket")
        if (wildcard, int(port)) in facts.listening or ("::", int(port)) in facts.listening:
            message = f"port {port} is taken on every address (a process listens on *:{port})"
            if resolved == "haproxy":
                errors.append(message + ": haproxy could not bind the VIP; choose another port")
            else:
                warnings.append(
                    message + "; the kernel takes the VIP's packets first, but choose another port if you can"
                )
    errors.extend(_check_metrics(metrics_address, metrics_port, port, facts))
    return Verdict(errors, warnings, resolved, [format_endpoint(a, p) for a, p in parsed], reason)


def _check_metrics(address: str, port: int, proxy_port: int, facts: NodeFacts) -> list[str]:
    """The guard's metrics endpoint: an address it can bind on this node (its config parser would refuse the
    others, or the bind fail after the change), a port that is not the proxy's. Not checked: a socket already
    listening there, which is the guard itself on every run after the first."""
    hint = "use 127.0.0.1, an address of this node, 0.0.0.0 or ::"
    try:
        ip = ipaddress.ip_address(str(address))
    except ValueError:
        return [f"metrics address {address!r} is not an IPv4 or IPv6 address ({hint})"]
    if getattr(ip, "scope_id", None):
        return [f"metrics address {address!r} carries a zone index, which the guard does not support ({hint})"]
    if not 0 <= int(port) <= 65535:
        return [f"metrics port {port} is not 0-65535 (0: no metrics endpoint)"]
    if int(port) == 0:
        return []
    if int(port) == int(proxy_port):
        return [f"metrics port {port} is the proxy's own port; choose another (the default is 9445)"]
    if ip.is_unspecified or ip.is_loopback:
        return []
    if ip.version == 6 and ip.is_link_local:
        return [f"metrics address {ip} is IPv6 link-local: binding it takes a zone index, unsupported ({hint})"]
    own = {ipaddress.ip_interface(cidr).ip for addrs in facts.interfaces.values() for cidr in addrs}
    if facts.interfaces and ip not in own:
        return [f"metrics address {ip} is not an address of this node ({hint})"]
    return []


# --- readers of the node's state -----------------------------------------------------------------------------


def _hex_to_address(text: str) -> str:
    raw = bytes.fromhex(text)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    # /proc/net/tcp6 prints four 32-bit words, each in host (little-endian) order
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return str(ipaddress.IPv6Address(words))


def parse_proc_net_tcp(text: str) -> set[tuple[str, int]]:
    """Listening sockets (state 0A) of /proc/net/tcp or tcp6."""
    out = set()
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[3] == "0A":
            addr, port = fields[1].split(":")
            out.add((_hex_to_address(addr), int(port, 16)))
    return out


def parse_ip_addr_json(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for link in json.loads(text or "[]"):
        out[link["ifname"]] = [f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", []) if "local" in a]
    return out


def ipvs_capability(proc: str = "/proc", lib_modules: str = "/lib/modules", sys_root: str = "/sys") -> tuple[bool, str]:
    """Whether IPVS can run here (ip_vs loaded, built in or loadable), and the evidence."""
    state, evidence = kernel_module("ip_vs", proc, sys_root, lib_modules)
    if state == "loaded":
        return True, "loaded"
    if state == "absent":
        return False, f"no /proc/net/ip_vs and {evidence}"
    return True, f"ip_vs {state} ({evidence})"


# nfnetlink: the nf_tables subsystem's "get generation" request, which any kernel with nf_tables answers.
_NETLINK_NETFILTER = 12
_NFT_MSG_GETGEN = (10 << 8) | 16  # NFNL_SUBSYS_NFTABLES, NFT_MSG_GETGEN
_NFT_MSG_NEWGEN = (10 << 8) | 15
_NLMSG_ERROR = 2
_NLM_F_REQUEST = 1


def nftables_reply(data: bytes) -> tuple[bool, str]:
    """Whether the kernel's reply to the get-generation request says nf_tables is there, and why."""
    if len(data) < 16:
        return False, "no answer from nf_tables over netlink"
    kind = struct.unpack_from("=H", data, 4)[0]
    if kind == _NFT_MSG_NEWGEN:
        return True, "nf_tables answers over netlink"
    if kind == _NLMSG_ERROR and len(data) >= 20:
        code = -struct.unpack_from("=i", data, 16)[0]
        return False, f"nf_tables does not answer over netlink: {os.strerror(code) if code else 'no error'}"
    return False, f"unexpected netlink answer type {kind}"


def nftables_answers() -> tuple[bool, str]:
    """Ask the kernel itself (a kernel may have nf_tables built in with no module files to read, as in a container)."""
    request = struct.pack("=IHHII", 20, _NFT_MSG_GETGEN, _NLM_F_REQUEST, 1, 0) + struct.pack("=BBH", 0, 0, 0)
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER) as sock:
            sock.settimeout(2.0)
            sock.bind((0, 0))
            sock.send(request)
            return nftables_reply(sock.recv(65536))
    except OSError as exc:
        return False, f"cannot ask nf_tables over netlink: {exc.strerror or exc}"


def nftables_capability(
    proc: str = "/proc", lib_modules: str = "/lib/modules", sys_root: str = "/sys", ask: Any = nftables_answers
) -> tuple[bool, str]:
    """Whether nftables can run here (nf_tables loaded, built in or loadable, or answering), and the evidence."""
    state, evidence = kernel_module("nf_tables", proc, sys_root, lib_modules)
    if state != "absent":
        return True, "loaded" if state == "loaded" else f"nf_tables {state} ({evidence})"
    answers, why = ask()
    return answers, why if answers else f"{evidence}; {why}"


_MODE_LINE = re.compile(r"""^mode:[ \t]*["']?([A-Za-z]*)["']?[ \t]*(?:#.*)?$""", re.M)


def kube_proxy_mode(proc: str = "/proc") -> tuple[str, str]:
    """The mode of the kube-proxy running here (a systemd unit or a pod: its flags, else its configuration file read
    through the process's own root), and where it was read; ``("", why)`` when no kube-proxy runs."""
    try:
        processes = list(command_lines(proc))
    except OSError as exc:
        return "", f"cannot list {proc}: {exc.strerror}"
    for pid, argv in processes:
        if not argv or os.path.basename(argv[0]) != "kube-proxy":
            continue
        for _flag, _kind, value in flag_values(argv[1:], {"--proxy-mode": "mode"}):
            return value or "iptables", f"kube-proxy --proxy-mode (process {pid})"
        for _flag, _kind, value in flag_values(argv[1:], {"--config": "config"}):
            path = os.path.join(proc, pid, "root", value.lstrip("/"))
            try:
                with open(path, encoding="utf-8") as handle:
                    match = _MODE_LINE.search(handle.read())
            except OSError as exc:
                return "", f"kube-proxy (process {pid}) reads {value}, which cannot be read: {exc.strerror}"
            # An empty or missing mode is the default, iptables on Linux.
            return (
                match.group(1) if match and match.group(1) else "iptables"
            ), f"{value} of kube-proxy (process {pid})"
        return "iptables", f"kube-proxy (process {pid}) has no --proxy-mode or --config: its default"
    return "", "no kube-proxy runs here"


def read_node_facts(ip_command: str = "ip") -> NodeFacts:
    listening: set[tuple[str, int]] = set()
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/net/{name}", encoding="utf-8") as fh:
                listening |= parse_proc_net_tcp(fh.read())
        except OSError:
            continue
    res = subprocess.run([ip_command, "-j", "addr", "show"], capture_output=True, text=True, check=False)
    interfaces = parse_ip_addr_json(res.stdout) if res.returncode == 0 else {}
    available, reason = ipvs_capability()
    nft_available, nft_reason = nftables_capability()
    proxy_mode, proxy_evidence = kube_proxy_mode()
    return NodeFacts(interfaces, frozenset(listening), available, reason, nft_available, nft_reason, proxy_mode,
                     proxy_evidence)  # fmt: skip
