# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the kubeha.apiserver collection: this is NOT a public API. It is the node-side guard
# daemon installed and run by the local_proxy role, and may change in any release without notice.

"""The guard: keeps a node's virtual address (VIP:port) pointed at the kube-apiservers that are ready.

Run as ``python -m ansible_collections.kubeha.apiserver.plugins.module_utils._guard --config FILE``
(``--once``: one round, then exit; ``--cleanup``: remove everything the guard set up). One main loop,
every ``interval_s``: probe every backend's ``/readyz`` -> hysteresis -> weights -> apply (IPVS through
``_ipvs``, or a haproxy configuration and a reload) -> close the connections of backends that went down
-> state file -> metrics. Beside it, small threads: a fast TCP check every ``fast_check_interval_s`` that
takes a backend down at once when its connect is refused (the apiserver died) or when ``fall`` connects in
a row get no answer within ``connect_timeout_s`` (the host died or is black-holed); IPVS does not retry
another backend, so this bounds the failed requests after a master fails. Then discovery of the masters
from the ``kubernetes`` EndpointSlices, and the metrics endpoint. Every change of the data path happens under one lock.

SIGHUP reloads the configuration (an invalid one is logged and the old one kept); SIGTERM and SIGINT stop
the guard WITHOUT removing anything, so the data path keeps working while it restarts.

Only the standard library is imported at module level; pyroute2 is imported by ``_ipvs``'s adapter when
IPVS is first used, and PyYAML by ``_kubeapi`` only when discovery reads a kubeconfig.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import ipaddress
import json
import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.kubeha.apiserver.plugins.module_utils._endpoint import format_endpoint
from ansible_collections.kubeha.apiserver.plugins.module_utils._files import atomic_write, fsync_directory
from ansible_collections.kubeha.apiserver.plugins.module_utils._ipvs import (
    IPVSError,
    PyRoute2IPVS,
    load_kernel_modules,
    plan,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._kernel import ipvs_loaded
from ansible_collections.kubeha.apiserver.plugins.module_utils._kubeapi import (
    Credentials,
    KubeAPIError,
    KubeClient,
    load_kubeconfig,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._proxy import (
    DEFAULT_STATS_SOCKET,
    DEFAULT_VERIFY_NAME,
    DOWN,
    HAPROXY_BACKEND,
    UP,
    Backend,
    HaproxySettings,
    HealthTracker,
    Prober,
    ProbeResult,
    ProbeSettings,
    ProxyError,
    Transition,
    desired_service,
    desired_weights,
    file_stamp,
    haproxy_server_name,
    has_local_backend,
    parse_endpoint,
    render_haproxy,
    scheduler_for,
    sort_backends,
    tcp_check,
)

LOG = logging.getLogger("kubeha-apiserver-guard")

MODES = ("ipvs", "haproxy")
NFT_TABLE = "kubeha_apiserver"
STATE_VERSION = 1
# Backends that left the set whose transition counters are still rendered (the newest ones): bounds the memory churn
# in discovery could otherwise grow without end.
DEPARTED_KEPT = 32
DISCOVERED_MAX = 16  # discovered backends accepted at most (the first, in address order): an answer cannot flood
# A discovered backend leaves after this many answers in a row without it, one backend per answer: an empty or
# shrunken answer (a wrong RBAC change, an endpoint reconciler between leases) cannot empty the set at once.
DISCOVERY_MISSES = 3
STARTUP_RETRY_S = 30.0  # start-up retried with back-off (1, 2, 4 ... s) for this long before the rounds take over
STARTUP_FIRST_RETRY_S = 1.0
HEALTHZ_INTERVALS = 3  # /healthz fails when the loop has not completed a round for this many intervals
RELOAD_RETRY_S = 30.0  # a failed haproxy reload is retried at this pace, not every round
PLUMBING_RETRY_S = 10.0  # failed (or lost) plumbing is retried at this pace
DISCOVERY_TIMEOUT_S = 5.0
# The EndpointSlice the apiservers keep for the ``kubernetes`` Service, by name: a GET of exactly it is all the
# discovery grant allows (RBAC cannot narrow a list by label).
ENDPOINTSLICES_PATH = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/kubernetes"

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
_INTERFACE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
# A DNS name (haproxy's verifyhost takes one, with no space or quote to break the configuration line), or "".
_VERIFY_NAME = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)*")

DEFAULT_STATE_FILE = "/var/lib/kubeha-apiserver/state.json"
DEFAULT_HAPROXY_CONFIG = "/etc/kubeha-apiserver/haproxy.cfg"
DEFAULT_HAPROXY_PEM = "/etc/kubeha-apiserver/haproxy-client.pem"
DEFAULT_RELOAD_COMMAND = ("systemctl", "reload", "kubeha-apiserver-haproxy.service")
# Run with a candidate configuration's path appended, before it replaces the one in use.
DEFAULT_CHECK_COMMAND = ("/usr/sbin/haproxy", "-c", "-f")

Runner = Callable[..., tuple[int, str, str]]


def next_due(due: float, interval_s: float, now: float) -> float:
    """When a periodic step runs next: ``interval_s`` after the last one was due (a fixed rate, not ``interval_s``
    after it ended), or at once when the step took longer than that, without bursts to catch up. A fast check whose
    connect waits out its 0.5 s timeout is followed by the next one at once: a black-holed master is taken down
    after two timeouts, not two timeouts and two intervals."""
    return max(due + interval_s, now)


class GuardError(Exception):
    """The one error of this domain; its message is meant for the log as is."""


class ConfigError(GuardError):
    """The configuration file is missing or invalid; the message names the key and the value."""


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiscoveryConfig:
    enabled: bool = False
    kubeconfig: str | None = None
    interval_s: float = 10.0
    # Where a discovered apiserver may be (CIDRs); parse_config fills in the seeds' /24 or /64 when none is given.
    networks: tuple[str, ...] = ()
    max_backends: int = DISCOVERED_MAX


@dataclass(frozen=True)
class HaproxyConfig:
    config_path: str = DEFAULT_HAPROXY_CONFIG
    pem_path: str = DEFAULT_HAPROXY_PEM
    reload_command: tuple[str, ...] = DEFAULT_RELOAD_COMMAND
    check_command: tuple[str, ...] = DEFAULT_CHECK_COMMAND
    stats_socket: str = DEFAULT_STATS_SOCKET
    verify_name: str = DEFAULT_VERIFY_NAME


@dataclass(frozen=True)
class GuardConfig:
    vips: tuple[str, ...]
    port: int
    seeds: tuple[Backend, ...]
    ca_file: str
    mode: str = "ipvs"
    local_addresses: tuple[str, ...] = ()
    prefer_local: bool = False
    client_cert_file: str | None = None
    client_key_file: str | None = None
    interval_s: float = 1.0
    timeout_s: float = 1.0
    rise: int = 2
    fall: int = 2
    fast_check_interval_s: float = 0.25
    connect_timeout_s: float = 0.5
    state_file: str = DEFAULT_STATE_FILE
    metrics_address: str = "127.0.0.1"
    metrics_port: int = 9445
    interface: str = "kha0"
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    haproxy: HaproxyConfig = field(default_factory=HaproxyConfig)

    def probe_settings(self) -> ProbeSettings:
        return ProbeSettings(self.ca_file, self.client_cert_file, self.client_key_file, self.timeout_s)

    def haproxy_settings(self) -> HaproxySettings:
        return HaproxySettings(
            vips=self.vips,
            port=self.port,
            ca_file=self.ca_file,
            client_pem_file=self.haproxy.pem_path if self.client_cert_file else None,
            interval_s=self.interval_s,
            timeout_s=self.timeout_s,
            connect_timeout_s=self.connect_timeout_s,
            rise=self.rise,
            fall=self.fall,
            stats_socket=self.haproxy.stats_socket,
            verify_name=self.haproxy.verify_name,
        )


TOP_KEYS = (
    "vip",
    "port",
    "mode",
    "seeds",
    "local_addresses",
    "prefer_local",
    "ca_file",
    "client_cert_file",
    "client_key_file",
    "interval_s",
    "timeout_s",
    "rise",
    "fall",
    "fast_check_interval_s",
    "connect_timeout_s",
    "state_file",
    "metrics_address",
    "metrics_port",
    "interface",
    "discovery",
    "haproxy",
)
DISCOVERY_KEYS = ("enabled", "kubeconfig", "interval_s", "networks", "max_backends")
HAPROXY_KEYS = ("config_path", "pem_path", "reload_command", "check_command", "stats_socket", "verify_name")


class _Reader:
    """Typed access to one JSON object of the configuration, with messages naming the key and value."""

    def __init__(self, doc: Any, where: str, known: Sequence[str]) -> None:
        if not isinstance(doc, Mapping):
            raise ConfigError(f"{where} must be a JSON object, not {json.dumps(doc)}")
        unknown = sorted(str(k) for k in doc if k not in known)
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known keys: {', '.join(known)})")
        self.doc = doc
        self.where = where

    def name(self, key: str) -> str:
        return f"{self.where}: {key}"

    def value(self, key: str, default: Any = None) -> Any:
        value = self.doc.get(key)
        return default if value is None else value

    def required(self, key: str) -> Any:
        if self.doc.get(key) is None:
            raise ConfigError(f"{self.name(key)} is required")
        return self.doc[key]

    def boolean(self, key: str, default: bool) -> bool:
        value = self.value(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self.name(key)} {json.dumps(value)} is not true or false")
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self.value(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{self.name(key)} {json.dumps(value)} is not an integer")
        if not low <= value <= high:
            raise ConfigError(f"{self.name(key)} {value} is out of range {low}..{high}")
        return value

    def number(self, key: str, default: float, low: float, high: float, zero_ok: bool = False) -> float:
        value = self.value(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{self.name(key)} {json.dumps(value)} is not a number of seconds")
        if zero_ok and value == 0:
            return 0.0
        if not low <= value <= high:
            extra = " (or 0 to disable)" if zero_ok else ""
            raise ConfigError(f"{self.name(key)} {value} is out of range {low:g}..{high:g}{extra}")
        return float(value)

    def path(self, key: str, default: str | None) -> str | None:
        value = self.value(key, default)
        if value is None:
            return None
        if not isinstance(value, str) or not value.startswith("/") or any(c.isspace() for c in value):
            raise ConfigError(f"{self.name(key)} {json.dumps(value)} is not an absolute path without spaces")
        return value

    def address(self, value: Any, what: str) -> str:
        if not isinstance(value, str):
            raise ConfigError(f"{self.where}: {what} {json.dumps(value)} is not an IPv4 or IPv6 address")
        try:
            ip = ipaddress.ip_address(value)
        except ValueError as exc:
            raise ConfigError(f"{self.where}: {what} {value!r} is not an IPv4 or IPv6 address") from exc
        if getattr(ip, "scope_id", None):
            raise ConfigError(f"{self.where}: {what} {value!r} carries a zone index, which is not supported")
        return str(ip)

    def string_list(self, key: str, default: Sequence[str]) -> list[str]:
        value = self.value(key, list(default))
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{self.name(key)} {json.dumps(value)} is not a list of non-empty strings")
        return list(value)


def seed_networks(seeds: Iterable[Backend]) -> list[str]:
    """The default master networks: each seed's /24 (IPv4) or /64 (IPv6), once each, in the seeds' order."""
    found: list[str] = []
    for seed in seeds:
        prefix = 24 if seed.version == 4 else 64
        network = str(ipaddress.ip_network(f"{seed.address}/{prefix}", strict=False))
        if network not in found:
            found.append(network)
    return found


def parse_config(doc: Any, source: str = "config") -> GuardConfig:
    """Validate the configuration document; ``ConfigError`` naming the first bad key and its value."""
    top = _Reader(doc, source, TOP_KEYS)

    vip_value = top.required("vip")
    vip_list = [vip_value] if isinstance(vip_value, str) else vip_value
    if not isinstance(vip_list, list) or not vip_list:
        raise ConfigError(f"{source}: vip {json.dumps(vip_value)} is not a list of one or two addresses")
    vips = [top.address(v, f"vip[{i}]") for i, v in enumerate(vip_list)]
    families = [ipaddress.ip_address(v).version for v in vips]
    if len(vips) > 2 or len(set(families)) != len(families):
        raise ConfigError(f"{source}: vip {json.dumps(vip_value)} must hold at most one IPv4 and one IPv6 address")

    port = top.integer("port", 6443, 1, 65535)
    mode = top.value("mode", "ipvs")
    if mode not in MODES:
        raise ConfigError(f"{source}: mode {json.dumps(mode)} is not one of {', '.join(MODES)}")

    seed_values = top.required("seeds")
    if not isinstance(seed_values, list) or not seed_values:
        raise ConfigError(f"{source}: seeds {json.dumps(seed_values)} is not a non-empty list of ADDRESS:PORT")
    seeds: list[Backend] = []
    for index, text in enumerate(seed_values):
        try:
            backend = parse_endpoint(text)
        except ProxyError as exc:
            raise ConfigError(f"{source}: seeds[{index}] {exc}") from exc
        if backend in seeds:
            raise ConfigError(f"{source}: seeds[{index}] {backend} is listed twice")
        seeds.append(backend)
    if mode == "ipvs":
        for backend in seeds:
            if backend.version not in families:
                raise ConfigError(
                    f"{source}: seed {backend} is IPv{backend.version} but no vip is: IPVS forwards a VIP only "
                    "to backends of its own address family"
                )

    local_values = top.value("local_addresses", [])
    if not isinstance(local_values, list):
        raise ConfigError(f"{source}: local_addresses {json.dumps(local_values)} is not a list of addresses")
    local_addresses = [top.address(v, f"local_addresses[{i}]") for i, v in enumerate(local_values)]

    ca_file = top.path("ca_file", None)
    if ca_file is None:
        raise ConfigError(f"{source}: ca_file is required (the cluster CA that signs the apiservers' certificates)")
    cert = top.path("client_cert_file", None)
    key = top.path("client_key_file", None)
    if key and not cert:
        raise ConfigError(f"{source}: client_key_file {key} is set but client_cert_file is not")
    if cert and not key:
        key = cert  # one PEM with both, as kubelet-client-current.pem

    interval = top.number("interval_s", 1.0, 0.1, 3600.0)
    timeout = top.number("timeout_s", 1.0, 0.05, 60.0)
    interface = top.value("interface", "kha0")
    if not isinstance(interface, str) or not _INTERFACE_NAME.match(interface):
        raise ConfigError(
            f"{source}: interface {json.dumps(interface)} is not an interface name (1..15 of A-Za-z0-9_.-)"
        )

    metrics_address = top.address(top.value("metrics_address", "127.0.0.1"), "metrics_address")

    disc = _Reader(top.value("discovery", {}), f"{source}: discovery", DISCOVERY_KEYS)
    networks = []
    for index, text in enumerate(disc.string_list("networks", [])):
        try:
            networks.append(str(ipaddress.ip_network(text, strict=False)))
        except ValueError as exc:
            raise ConfigError(f"{disc.name('networks')}[{index}] {text!r} is not a CIDR") from exc
    discovery = DiscoveryConfig(
        enabled=disc.boolean("enabled", False),
        kubeconfig=disc.path("kubeconfig", None),
        interval_s=disc.number("interval_s", 10.0, 1.0, 86400.0),
        networks=tuple(networks or seed_networks(seeds)),
        max_backends=disc.integer("max_backends", DISCOVERED_MAX, 1, 1000),
    )
    if discovery.enabled and not discovery.kubeconfig and not cert:
        raise ConfigError(
            f"{source}: discovery is enabled but has no credentials: set discovery.kubeconfig or client_cert_file"
        )
    if discovery.enabled and not networks:
        seeded = {b.version for b in seeds}
        for vip in vips:
            version = ipaddress.ip_address(vip).version
            if version not in seeded:
                raise ConfigError(
                    f"{source}: vip {vip} has no seed of its address family (IPv{version}), so the masters' networks "
                    "for its discovered backends cannot be derived: set discovery.networks"
                )
    if mode == "ipvs" and not discovery.enabled:
        for vip in vips:
            version = ipaddress.ip_address(vip).version
            if not any(b.version == version for b in seeds):
                raise ConfigError(
                    f"{source}: vip {vip} has no seed of its address family (IPv{version}) and discovery is off: "
                    "nothing could ever serve it"
                )

    hap = _Reader(top.value("haproxy", {}), f"{source}: haproxy", HAPROXY_KEYS)
    verify_name = hap.value("verify_name", DEFAULT_VERIFY_NAME)
    if not isinstance(verify_name, str) or not _VERIFY_NAME.fullmatch(verify_name):
        raise ConfigError(
            f'{hap.name("verify_name")} {json.dumps(verify_name)} is not a DNS name (or "" for the chain alone)'
        )
    reload_command = hap.string_list("reload_command", DEFAULT_RELOAD_COMMAND)
    check_command = hap.string_list("check_command", DEFAULT_CHECK_COMMAND)
    for option, command in (("reload_command", reload_command), ("check_command", check_command)):
        if not command:
            raise ConfigError(f"{source}: haproxy: {option} is empty")
    haproxy = HaproxyConfig(
        config_path=hap.path("config_path", DEFAULT_HAPROXY_CONFIG) or DEFAULT_HAPROXY_CONFIG,
        pem_path=hap.path("pem_path", DEFAULT_HAPROXY_PEM) or DEFAULT_HAPROXY_PEM,
        reload_command=tuple(reload_command),
        check_command=tuple(check_command),
        stats_socket=hap.path("stats_socket", DEFAULT_STATS_SOCKET) or DEFAULT_STATS_SOCKET,
        verify_name=verify_name,
    )

    return GuardConfig(
        vips=tuple(vips),
        port=port,
        seeds=tuple(sort_backends(seeds)),
        ca_file=ca_file,
        mode=mode,
        local_addresses=tuple(local_addresses),
        prefer_local=top.boolean("prefer_local", False),
        client_cert_file=cert,
        client_key_file=key,
        interval_s=interval,
        timeout_s=timeout,
        rise=top.integer("rise", 2, 1, 100),
        fall=top.integer("fall", 2, 1, 100),
        fast_check_interval_s=top.number("fast_check_interval_s", 0.25, 0.05, 60.0, zero_ok=True),
        connect_timeout_s=top.number("connect_timeout_s", 0.5, 0.05, 10.0),
        state_file=top.path("state_file", DEFAULT_STATE_FILE) or DEFAULT_STATE_FILE,
        metrics_address=metrics_address,
        metrics_port=top.integer("metrics_port", 9445, 0, 65535),
        interface=interface,
        discovery=discovery,
        haproxy=haproxy,
    )


def load_config(path: str) -> GuardConfig:
    """Read and validate the JSON configuration file ``path``."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration {path}: {exc.strerror or exc}") from exc
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    return parse_config(doc, path)


# --------------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------------


def run_command(argv: Sequence[str], stdin: str | None = None, timeout: float = 15.0) -> tuple[int, str, str]:
    """Run ``argv`` (no shell) in the C locale; ``(rc, stdout, stderr)``, never raises."""
    env = dict(os.environ, LC_ALL="C")
    try:
        done = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=timeout, check=False, env=env
        )
    except FileNotFoundError:
        return 127, "", f"{argv[0]}: command not found"
    except subprocess.TimeoutExpired:
        return 124, "", f"timed out after {timeout:g}s"
    except OSError as exc:
        return 126, "", str(exc)
    return done.returncode, done.stdout, done.stderr


def command_error(argv: Sequence[str], rc: int, err: str) -> str:
    """```ip addr add 169.254.100.1/32 dev kha0` failed (exit 2): RTNETLINK answers: ...``."""
    detail = " ".join(err.split()) or "no error output"
    return f"`{shlex.join(argv)}` failed (exit {rc}): {detail}"


def _check(runner: Runner, argv: Sequence[str], stdin: str | None = None) -> str:
    rc, out, err = runner(list(argv), stdin) if stdin is not None else runner(list(argv))
    if rc != 0:
        raise GuardError(command_error(argv, rc, err))
    return out


# --------------------------------------------------------------------------------------------------
# Plumbing: dummy interface with the VIPs, IPVS sysctls, nftables masquerade
# --------------------------------------------------------------------------------------------------


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


def address_commands(interface: str, vips: Iterable[str], link: Mapping[str, Any]) -> list[list[str]]:
    """``ip`` commands making the global addresses of ``interface`` exactly the VIPs (/32, /128 nodad).

    ``link`` is the interface's entry in ``ip -d -j addr show dev <interface>``; link-local and host
    addresses are left alone.
    """
    wanted = {}
    for vip in vips:
        ip = ipaddress.ip_address(vip)
        wanted[(str(ip), 32 if ip.version == 4 else 128)] = ip.version
    have = set()
    for info in link.get("addr_info") or []:
        if info.get("scope") in ("link", "host") or not info.get("local"):
            continue
        try:
            have.add((str(ipaddress.ip_address(info["local"])), int(info.get("prefixlen", 0))))
        except ValueError:
            continue
    commands = [["ip", "addr", "del", f"{a}/{p}", "dev", interface] for a, p in sorted(have - set(wanted))]
    for (address, prefix), version in sorted(wanted.items()):
        if (address, prefix) in have:
            continue
        if version == 4:
            commands.append(["ip", "addr", "add", f"{address}/{prefix}", "dev", interface])
        else:
            commands.append(["ip", "-6", "addr", "add", f"{address}/{prefix}", "dev", interface, "nodad"])
    return commands


def _show_link(runner: Runner, interface: str) -> dict[str, Any] | None:
    """The interface's ``ip -d -j addr show`` entry, or ``None`` when it does not exist."""
    rc, out, _err = runner(["ip", "-d", "-j", "addr", "show", "dev", interface])
    if rc != 0:
        return None
    try:
        entries = json.loads(out or "[]")
    except ValueError as exc:
        raise GuardError(f"cannot parse `ip -d -j addr show dev {interface}`: {exc}") from exc
    return entries[0] if entries else None


def _is_dummy(link: Mapping[str, Any]) -> bool:
    return (link.get("linkinfo") or {}).get("info_kind") == "dummy"


# The loopback interface can hold the VIPs where the kernel has no dummy interfaces (e.g. containers that share
# a host kernel without the dummy module): the guard then only adds and removes its own VIP addresses there.
LOOPBACK = "lo"


def ensure_interface(interface: str, vips: Sequence[str], runner: Runner) -> list[str]:
    """Create the dummy interface if needed, bring it up and hold exactly the VIPs; what was changed."""
    changes = []
    link = _show_link(runner, interface)
    if interface == LOOPBACK:
        commands = [argv for argv in address_commands(interface, vips, link or {}) if argv[:3] != ["ip", "addr", "del"]]
        for argv in commands:
            _check(runner, argv)
            changes.append(" ".join(argv))
        return changes
    if link is None:
        _check(runner, ["ip", "link", "add", interface, "type", "dummy"])
        changes.append(f"created dummy interface {interface}")
        link = _show_link(runner, interface) or {}
    elif not _is_dummy(link):
        kind = (link.get("linkinfo") or {}).get("info_kind") or "physical"
        raise GuardError(f"interface {interface} exists and is not a dummy interface ({kind}): refusing to use it")
    if "UP" not in (link.get("flags") or []):
        _check(runner, ["ip", "link", "set", "dev", interface, "up"])
        changes.append(f"brought {interface} up")
    for argv in address_commands(interface, vips, link):
        _check(runner, argv)
        changes.append(" ".join(argv))
    return changes


def ensure_sysctls(values: Mapping[str, str], proc_sys: str = "/proc/sys") -> list[str]:
    """Write the sysctls that differ (through /proc/sys); what was changed."""
    changes = []
    for name, value in values.items():
        path = os.path.join(proc_sys, *name.split("."))
        try:
            with open(path, encoding="ascii") as handle:
                current = handle.read().strip()
            if current != value:
                with open(path, "w", encoding="ascii") as handle:
                    handle.write(value)
                changes.append(f"sysctl {name}={value}")
        except OSError as exc:
            raise GuardError(f"cannot set sysctl {name}={value}: {exc.strerror or exc}") from exc
    return changes


@dataclass(frozen=True)
class Paths:
    """Where the kernel's files are (replaced in tests)."""

    proc_root: str = "/proc"
    proc_sys: str = "/proc/sys"
    sys_root: str = "/sys"
    modules_root: str = "/lib/modules"


def ensure_plumbing(cfg: GuardConfig, runner: Runner, paths: Paths | None = None) -> list[str]:
    """Idempotently set up what the data path needs; what was changed. ``GuardError`` names the failure.

    IPVS mode: the ip_vs modules, the IPVS sysctls, the dummy interface with the VIPs and the nftables
    masquerade. haproxy mode: only the interface and the VIPs, which haproxy binds.
    """
    paths = paths or Paths()
    changes: list[str] = []
    if cfg.mode == "ipvs":
        schedulers = ["rr", "fo"] if cfg.prefer_local else ["rr"]
        for scheduler in schedulers:
            try:
                loaded = load_kernel_modules(
                    scheduler,
                    runner,
                    proc_root=paths.proc_root,
                    sys_root=paths.sys_root,
                    modules_root=paths.modules_root,
                )
            except IPVSError as exc:
                raise GuardError(str(exc)) from exc
            changes += [f"loaded kernel module {name}" for name in loaded]
        changes += ensure_sysctls(IPVS_SYSCTLS, paths.proc_sys)
    changes += ensure_interface(cfg.interface, cfg.vips, runner)
    if cfg.mode == "ipvs":
        _check(runner, ["nft", "-f", "-"], nft_ruleset(cfg.vips))
    return changes


def remove_plumbing(cfg: GuardConfig, runner: Runner) -> list[str]:
    """Remove the nftables table and the dummy interface (with its VIPs); what was removed.

    The interface is deleted only if it is a dummy interface. Sysctls and kernel modules are left.
    """
    removed = []
    rc, _out, _err = runner(["nft", "list", "table", "inet", NFT_TABLE])
    if rc == 0:
        _check(runner, ["nft", "delete", "table", "inet", NFT_TABLE])
        removed.append(f"nftables table inet {NFT_TABLE}")
    link = _show_link(runner, cfg.interface)
    if cfg.interface == LOOPBACK:
        for vip in cfg.vips:
            prefix = 32 if ipaddress.ip_address(vip).version == 4 else 128
            if runner(["ip", "addr", "del", f"{vip}/{prefix}", "dev", LOOPBACK])[0] == 0:
                removed.append(f"address {vip}/{prefix} on {LOOPBACK}")
    elif link is not None:
        if not _is_dummy(link):
            raise GuardError(f"interface {cfg.interface} is not a dummy interface: not deleting it")
        _check(runner, ["ip", "link", "del", "dev", cfg.interface])
        removed.append(f"dummy interface {cfg.interface}")
    return removed


# --------------------------------------------------------------------------------------------------
# Connections to a failed backend: /proc/net/ip_vs_conn, ss -K, conntrack -D
# --------------------------------------------------------------------------------------------------


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


def _ss_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address  # without brackets ss reads "fd00::1" as "fd00:" port 1


def socket_kill_commands(connections: Iterable[IPVSConnection], local_addresses: Iterable[str]) -> list[list[str]]:
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


def conntrack_commands(backend: Backend, vips: Iterable[str], port: int) -> list[list[str]]:
    """``conntrack -D`` commands deleting the entries of connections from the VIPs to ``backend``.

    With IPVS NAT and ``net.ipv4.vs.conntrack=1`` an entry's reply source is the real server.
    """
    commands = []
    for vip in vips:
        if ipaddress.ip_address(vip).version != backend.version:
            continue
        family = "ipv4" if backend.version == 4 else "ipv6"
        orig = ["--orig-dst", str(ipaddress.ip_address(vip)), "--orig-port-dst", str(port)]
        reply = ["--reply-src", backend.address, "--reply-port-src", str(backend.port)]
        commands.append(["conntrack", "-D", "-f", family, "-p", "tcp", *orig, *reply])
    return commands


# --------------------------------------------------------------------------------------------------
# State file
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GuardState:
    """What the last run knew: the VIPs and port, every backend and its health."""

    vips: tuple[str, ...]
    port: int
    backends: tuple[tuple[Backend, str], ...]

    @property
    def health(self) -> dict[Backend, str]:
        return dict(self.backends)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "vip": list(self.vips),
            "port": self.port,
            "backends": [
                {"address": b.address, "port": b.port, "health": health}
                for b, health in sorted(self.backends, key=lambda item: item[0].sort_key())
            ],
        }


def make_state(
    vips: Iterable[str], port: int, backends: Iterable[Backend], health: Mapping[Backend, str]
) -> GuardState:
    return GuardState(
        vips=tuple(vips),
        port=port,
        backends=tuple((b, health.get(b, "unknown")) for b in sort_backends(backends)),
    )


def state_from_dict(doc: Any, source: str = "state") -> GuardState:
    if not isinstance(doc, Mapping) or doc.get("version") != STATE_VERSION:
        raise GuardError(f"{source} is not a version {STATE_VERSION} guard state")
    try:
        vips = tuple(str(ipaddress.ip_address(v)) for v in doc.get("vip") or [])
        port = int(doc["port"])
        backends = tuple(
            (Backend(str(item["address"]), int(item["port"])), str(item.get("health") or "unknown"))
            for item in doc.get("backends") or []
        )
    except (KeyError, TypeError, ValueError, ProxyError) as exc:
        raise GuardError(f"{source} is not a valid guard state: {exc}") from exc
    return GuardState(vips, port, backends)


def write_state(path: str, state: GuardState) -> None:
    try:
        atomic_write(path, json.dumps(state.to_dict(), indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        raise GuardError(f"cannot write the state file {path}: {exc.strerror or exc}") from exc


def read_state(path: str) -> GuardState | None:
    """The state in ``path``; ``None`` when there is none; ``GuardError`` when it is unreadable."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise GuardError(f"cannot read the state file {path}: {exc.strerror or exc}") from exc
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise GuardError(f"the state file {path} is not valid JSON: {exc}") from exc
    return state_from_dict(doc, f"the state file {path}")


# --------------------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------------------


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

    Only addresses inside ``discovery.networks`` (the masters' networks), in IPVS mode only of a VIP's address
    family, and at most ``discovery.max_backends`` of them: an EndpointSlice answer, forged or wrong, cannot send a
    node's apiserver traffic elsewhere or grow its data path without bound.
    """
    networks = [ipaddress.ip_network(text) for text in cfg.discovery.networks]
    families = {ipaddress.ip_address(v).version for v in cfg.vips}
    admitted: list[Backend] = []
    refused: list[str] = []
    for backend in sort_backends(found):
        address = ipaddress.ip_address(backend.address)
        if cfg.mode == "ipvs" and backend.version not in families:
            continue  # IPVS forwards a VIP only to its own address family: not an error, nothing to say
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


def _read_bytes(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise GuardError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


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
        ca_data=_read_bytes(cfg.ca_file, "the CA file"),
        client_cert=_read_bytes(cfg.client_cert_file, "the client certificate") if cfg.client_cert_file else None,
        client_key=_read_bytes(cfg.client_key_file, "the client key") if cfg.client_key_file else None,
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


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricsSnapshot:
    backends: tuple[Backend, ...]
    health: Mapping[Backend, str]
    weights: Mapping[Backend, int]
    latency: Mapping[Backend, float]
    transitions: Mapping[tuple[Backend, str], int]
    last_reconcile: float | None
    fail_open: bool
    discovered: int
    apply_errors: int
    haproxy_refused: int = 0


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _value(value: float) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


def render_metrics(snap: MetricsSnapshot) -> str:
    """Prometheus text format (0.0.4)."""
    lines: list[str] = []

    def family(name: str, kind: str, text: str, samples: Iterable[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{labels} {_value(value)}" for labels, value in samples)

    def b(backend: Backend) -> str:
        return f'backend="{_label(backend.endpoint)}"'

    counted = {backend for backend, _to in snap.transitions}
    every = sort_backends([*snap.backends, *counted])
    family(
        "kubeha_apiserver_backend_up",
        "gauge",
        "Whether the guard considers the backend ready (1) or not (0).",
        [(f"{{{b(x)}}}", 1 if snap.health.get(x) == UP else 0) for x in snap.backends],
    )
    family(
        "kubeha_apiserver_backend_weight",
        "gauge",
        "Weight of the backend in the data path (0: no new connections).",
        [(f"{{{b(x)}}}", snap.weights.get(x, 0)) for x in snap.backends],
    )
    family(
        "kubeha_apiserver_probe_latency_seconds",
        "gauge",
        "Duration of the last /readyz probe of the backend.",
        [(f"{{{b(x)}}}", snap.latency[x]) for x in snap.backends if x in snap.latency],
    )
    family(
        "kubeha_apiserver_backend_transitions_total",
        "counter",
        "State changes of the backend, by the state entered.",
        [(f'{{{b(x)},to="{to}"}}', snap.transitions.get((x, to), 0)) for x in every for to in (UP, DOWN)],
    )
    family(
        "kubeha_apiserver_last_reconcile_timestamp_seconds",
        "gauge",
        "Unix time of the last reconciliation of the data path.",
        [("", snap.last_reconcile or 0.0)],
    )
    family(
        "kubeha_apiserver_fail_open",
        "gauge",
        "1 when no backend of an address family is ready and all are kept (fail open).",
        [("", 1 if snap.fail_open else 0)],
    )
    family(
        "kubeha_apiserver_backends_discovered",
        "gauge",
        "Ready apiservers found in the kubernetes EndpointSlices by the last successful discovery.",
        [("", snap.discovered)],
    )
    family(
        "kubeha_apiserver_apply_errors_total",
        "counter",
        "Failed attempts to apply the data path (IPVS, haproxy configuration or reload).",
        [("", snap.apply_errors)],
    )
    family(
        "kubeha_apiserver_haproxy_refused_total",
        "counter",
        "haproxy configurations or reloads that haproxy refused (the configuration in use kept serving).",
        [("", snap.haproxy_refused)],
    )
    return "\n".join(lines) + "\n"


class _MetricsHandler(http.server.BaseHTTPRequestHandler):
    server: MetricsServer
    # A client that connects and sends nothing (or too slowly) is dropped after this many seconds.
    timeout = 5.0

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        guard = self.server.guard
        if path == "/metrics":
            status, ctype, body = 200, "text/plain; version=0.0.4; charset=utf-8", render_metrics(guard.snapshot())
        elif path == "/healthz":
            ok, message = guard.healthy()
            status, ctype, body = (200 if ok else 503), "text/plain; charset=utf-8", message + "\n"
        else:
            status, ctype, body = 404, "text/plain; charset=utf-8", "not found: try /metrics or /healthz\n"
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        return  # no line per scrape


class MetricsServer(http.server.ThreadingHTTPServer):
    """``/metrics`` and ``/healthz`` on one address, served by a daemon thread.

    Each connection has a thread of its own and a timeout (``_MetricsHandler.timeout``), so an idle or slow client
    cannot hold up a scrape or a health check; at most ``MAX_CONNECTIONS`` are served at once, and a connection
    beyond them is closed at once rather than queued (it bounds the threads a flood can start).
    """

    daemon_threads = True
    MAX_CONNECTIONS = 16

    def __init__(self, guard: Guard, address: str, port: int) -> None:
        self.address_family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.guard = guard
        self._slots = threading.BoundedSemaphore(self.MAX_CONNECTIONS)
        super().__init__((address, port), _MetricsHandler)
        self._thread = threading.Thread(target=self.serve_forever, name="metrics", daemon=True)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


# --------------------------------------------------------------------------------------------------
# systemd notification
# --------------------------------------------------------------------------------------------------


def sd_notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``message`` (``READY=1``) to systemd's ``$NOTIFY_SOCKET``; False when there is none."""
    address = (environ if environ is not None else os.environ).get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
    except OSError as exc:
        LOG.warning("cannot notify systemd at %s: %s", address.lstrip("\0"), exc)
        return False
    return True


# --------------------------------------------------------------------------------------------------
# The guard
# --------------------------------------------------------------------------------------------------


def haproxy_command(socket_path: str, command: str, timeout: float = 2.0) -> str:
    """One command on haproxy's stats socket (the master's CLI is not needed: a plain worker socket); its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(socket_path)
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace").strip()


@dataclass
class Hooks:
    """The guard's contacts with the outside world, replaced by fakes in tests."""

    runner: Runner = run_command
    ipvs_factory: Callable[[], Any] = PyRoute2IPVS
    prober: Callable[[Sequence[Backend], ProbeSettings], Mapping[Backend, ProbeResult]] | None = None
    connector: Callable[[Backend, float], ProbeResult] = tcp_check
    discoverer: Callable[[GuardConfig, Sequence[Backend]], frozenset[Backend]] = discover_backends
    notify: Callable[[str], bool] = sd_notify
    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    paths: Paths = field(default_factory=Paths)
    haproxy_command: Callable[[str, str], str] = haproxy_command


def probe_pool_size(cfg: GuardConfig) -> int:
    """Threads for the probes and the fast checks: one each for every backend there can be (the seeds and the most
    discovery admits), so that many backends timing out at once still take one timeout, not several in a row, and
    a round stays within its interval. Threads are started only when needed."""
    most = len(cfg.seeds) + (cfg.discovery.max_backends if cfg.discovery.enabled else 0)
    return max(8, 2 * most)


class Guard:
    """One node's guard. ``serve()`` runs it; ``startup()``/``run_round()`` are its steps (and ``--once``)."""

    def __init__(self, cfg: GuardConfig, config_path: str | None = None, hooks: Hooks | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.hooks = hooks or Hooks()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._reload_requested = False
        self._pool = ThreadPoolExecutor(max_workers=probe_pool_size(cfg), thread_name_prefix="probe")
        self._prober = Prober(executor=self._pool)  # one kept-alive connection per backend
        self.tracker = HealthTracker(cfg.rise, cfg.fall)
        self.discovered: frozenset[Backend] = frozenset()
        self.backends: tuple[Backend, ...] = backend_set(cfg.seeds, ())
        self.weights: dict[Backend, int] = {}
        self.fail_open_families: set[int] = set()
        self.latency: dict[Backend, float] = {}
        self.transitions: dict[tuple[Backend, str], int] = {}
        self._departed: dict[Backend, None] = {}  # backends that left, oldest first (an ordered set)
        self._refused: list[str] = []  # discovered backends ignored last time, with why
        self._misses: dict[Backend, int] = {}  # discovered backends: answers in a row that lacked each
        self.apply_errors = 0
        self.haproxy_refused = 0
        self.last_reconcile: float | None = None
        self._last_round: float | None = None
        # One IPVS netlink socket per thread: pyroute2 0.9 sockets fail with ECONNRESET when two threads (the
        # probe round and the fast check) take turns on one, which cost a retry at every takedown.
        self._local = threading.local()
        self._adapters: list[Any] = []
        self._plumbed = False
        self._plumbing_retry_at = 0.0
        self._pending_close: set[Backend] = set()
        self._unanswered: dict[Backend, int] = {}  # unanswered fast-check connects in a row
        self._state_written: dict[str, Any] | None = None
        self._haproxy_applied: str | None = None
        self._haproxy_refusal: tuple[str, str] | None = None  # the last text haproxy's check refused, and why
        self._haproxy_check_retry_at = 0.0
        self._reload_pending = False
        self._reload_retry_at = 0.0
        self._pem_stamp: Any = None
        self._errors: dict[str, str] = {}
        self._metrics: MetricsServer | None = None
        self._threads: list[threading.Thread] = []

    # ---- error reporting: one line when an error appears or changes, one when it clears ------------

    def _error(self, key: str, message: str) -> None:
        if self._errors.get(key) != message:
            LOG.error("%s", message)
        self._errors[key] = message

    def apply_error(self) -> str | None:
        """Why the last attempt to apply the data path failed, while it has not worked since."""
        return self._errors.get("apply")

    def _recovered(self, key: str, what: str) -> None:
        if self._errors.pop(key, None) is not None:
            LOG.info("%s works again", what)

    # ---- steps ---------------------------------------------------------------------------------------

    def startup(self) -> bool:
        """Plumbing, then the last good state applied at once (before any probe); whether there was one."""
        self.ensure_plumbing()
        try:
            state = read_state(self.cfg.state_file)
        except GuardError as exc:
            LOG.warning("ignoring the state file: %s", exc)
            return False
        if state is None:
            return False
        with self._lock:
            health = state.health
            if self.cfg.discovery.enabled:
                self.discovered, _refused = admit_discovered((b for b in health if b not in self.cfg.seeds), self.cfg)
            self.backends = backend_set(self.cfg.seeds, self.discovered)
            # The seeds get the rules kubelet must find at boot; a discovered backend is restored unknown, so its
            # first probe decides and it gets no traffic before (the file may be old, and discovery's answer is not
            # the inventory's word).
            restored = {b: s for b, s in health.items() if b in self.cfg.seeds}
            self.tracker = HealthTracker(self.cfg.rise, self.cfg.fall, restored)
            self._remove_services(self._stale_pairs(state.vips, state.port))
            self._reconcile(())
        LOG.info(
            "restored %d backends from %s (%s up)",
            len(self.backends),
            self.cfg.state_file,
            sum(1 for b in self.backends if self.tracker.state(b) == UP),
        )
        return True

    def ensure_plumbing(self) -> bool:
        self._plumbing_retry_at = self.hooks.monotonic() + PLUMBING_RETRY_S
        try:
            changes = ensure_plumbing(self.cfg, self.hooks.runner, self.hooks.paths)
        except GuardError as exc:
            self._plumbed = False
            self._error("plumbing", f"plumbing: {exc}")
            return False
        for change in changes:
            LOG.info("plumbing: %s", change)
        self._plumbed = True
        self._recovered("plumbing", "plumbing")
        return True

    def _plumbing_lost(self) -> bool:
        return not os.path.exists(os.path.join(self.hooks.paths.sys_root, "class", "net", self.cfg.interface))

    def run_round(self) -> None:
        """One probe round: probe all, decide, apply, close, record."""
        if (not self._plumbed or self._plumbing_lost()) and self.hooks.monotonic() >= self._plumbing_retry_at:
            self.ensure_plumbing()
        with self._lock:
            backends = self.backends
            settings = self.cfg.probe_settings()
        prober = self.hooks.prober or self._probe_all
        results = prober(backends, settings)
        with self._lock:
            current = set(self.backends)
            fresh = [r for r in results.values() if r.backend in current]
            for res in fresh:
                self.latency[res.backend] = res.latency_s
            self._handle(fresh)
        self._last_round = self.hooks.monotonic()

    def _probe_all(self, backends: Sequence[Backend], settings: ProbeSettings) -> dict[Backend, ProbeResult]:
        return self._prober.probe_all(backends, settings)

    def fast_check_once(self) -> list[Transition]:
        """TCP-connect every backend that is up; a refused one, or one unanswered ``fall`` times in a row,
        goes down and is applied at once. Successful connects only reset the unanswered count: readiness
        is the TLS probe's to decide."""
        with self._lock:
            targets = [b for b in self.backends if self.tracker.state(b) == UP]
            timeout = self.cfg.connect_timeout_s
        if not targets:
            return []
        results = list(self._pool.map(lambda b: self.hooks.connector(b, timeout), targets))
        with self._lock:
            checked = {res.backend for res in results}
            self._unanswered = {b: n for b, n in self._unanswered.items() if b in checked}
            verdicts = []
            for res in results:
                if res.backend not in self.backends or self.tracker.state(res.backend) != UP:
                    continue
                if res.refused:
                    verdicts.append(res)
                elif not res.unanswered:
                    self._unanswered.pop(res.backend, None)
                elif self._unanswered.get(res.backend, 0) + 1 < self.cfg.fall:
                    self._unanswered[res.backend] = self._unanswered.get(res.backend, 0) + 1
                else:
                    self._unanswered.pop(res.backend, None)
                    error = f"{self.cfg.fall} connects in a row unanswered after {timeout:g}s"
                    verdicts.append(ProbeResult(res.backend, False, res.latency_s, error, unreachable=True))
            return self._handle(verdicts) if verdicts else []

    def _haproxy_take_down(self, backend: Backend) -> None:
        """haproxy mode: mark a failed master down in haproxy at once and shut its sessions.

        Not for a refused master: the kernel resets its connections, and haproxy redispatches the sessions
        that were connecting to it; shutting those would fail them. Otherwise (black-holed, hung, not ready)
        haproxy's own checks would take up to 2.5 s more and, without this, leave its sessions open. Its
        checks bring the server back when it answers again.
        """
        name = f"{HAPROXY_BACKEND}/{haproxy_server_name(backend)}"
        for command in (f"set server {name} health down", f"shutdown sessions server {name}"):
            try:
                answer = self.hooks.haproxy_command(self.cfg.haproxy.stats_socket, command)
            except OSError as exc:
                LOG.error("haproxy: %s: %s", command, exc.strerror or exc)
                return
            if answer:
                LOG.error("haproxy: %s: %s", command, answer)
                return
            LOG.info("haproxy: %s", command)

    def _handle(self, results: Sequence[ProbeResult]) -> list[Transition]:
        transitions = self.tracker.observe(results)
        for t in transitions:
            LOG.log(logging.WARNING if t.new == DOWN else logging.INFO, "%s", t.describe())
            self.transitions[(t.backend, t.new)] = self.transitions.get((t.backend, t.new), 0) + 1
        self._reconcile(transitions)
        if self.cfg.mode == "haproxy":
            refused = {r.backend for r in results if r.refused}
            for t in transitions:
                if t.old == UP and t.new == DOWN and t.backend not in refused:
                    self._haproxy_take_down(t.backend)
        return transitions

    def _decide(self) -> tuple[dict[Backend, int], set[int]]:
        health = self.tracker.health()
        weights: dict[Backend, int] = {}
        fail_open: set[int] = set()
        for version in (4, 6):
            family = [b for b in self.backends if b.version == version]
            if not family:
                continue
            family_weights, family_fail_open = desired_weights(
                family, health, self.cfg.local_addresses, self.cfg.prefer_local
            )
            weights.update(family_weights)
            if family_fail_open:
                fail_open.add(version)
        return weights, fail_open

    def _reconcile(self, transitions: Sequence[Transition]) -> None:
        """Apply the weights of the current health; close connections of backends that just went down."""
        weights, fail_open = self._decide()
        for version in sorted(fail_open - self.fail_open_families):
            LOG.error(
                "no IPv%d apiserver is ready: failing open, every IPv%d backend stays in the data path",
                version,
                version,
            )
        for version in sorted(self.fail_open_families - fail_open):
            LOG.info("an IPv%d apiserver is ready again: failing open ended", version)
        self.weights, self.fail_open_families = weights, fail_open

        applied = self._apply_ipvs(weights) if self.cfg.mode == "ipvs" else self._apply_haproxy()
        if self.cfg.mode == "ipvs":
            self._pending_close |= {t.backend for t in transitions if t.old == UP and t.new == DOWN}
            if applied:
                self._close_pending(fail_open)
        self._write_state()
        self.last_reconcile = self.hooks.clock()

    def _close_pending(self, fail_open: set[int]) -> None:
        """Close the connections of backends that went down, once new connections avoid them.

        While a family fails open there is nowhere better to go: its backends wait here until another
        backend of the family is ready again, and are closed then if they are still down.
        """
        for backend in sort_backends(self._pending_close):
            if self.tracker.state(backend) != DOWN or backend not in self.backends:
                self._pending_close.discard(backend)
            elif backend.version not in fail_open:
                self._pending_close.discard(backend)
                self.close_connections(backend)

    # ---- IPVS -------------------------------------------------------------------------------------------

    def _ipvs(self) -> Any:
        """This thread's IPVS adapter (made on first use)."""
        adapter = getattr(self._local, "adapter", None)
        if adapter is None:
            adapter = self._local.adapter = self.hooks.ipvs_factory()
            with self._lock:
                self._adapters.append(adapter)
        return adapter

    def _drop_adapter(self) -> None:
        """Close this thread's IPVS adapter; the next use makes a new one."""
        adapter = getattr(self._local, "adapter", None)
        if adapter is not None:
            self._local.adapter = None
            with self._lock:
                self._adapters.remove(adapter)
            with contextlib.suppress(Exception):  # a broken netlink socket must not stop the guard
                adapter.close()

    def _apply_ipvs(self, weights: Mapping[Backend, int]) -> bool:
        """Program the VIPs' services; a failed attempt is retried at once on a new netlink socket.

        A netlink socket can fail under load (ECONNRESET, ENOBUFS on a dump): waiting for the next round would
        leave a failed master in the data path for another second.
        """
        for attempt in (1, 2):
            try:
                self._apply_ipvs_once(weights)
            # Any exception, not only IPVSError: pyroute2 raises more than NetlinkError (OSError on a reset or
            # overrun socket, decode errors on a truncated dump), and an adapter kept after one would fail every
            # later round too, leaving a data path nobody updates.
            except Exception as exc:
                self._drop_adapter()
                if attempt == 1:
                    LOG.warning("applying IPVS: %s; retrying on a new netlink socket", exc)
                    continue
                self.apply_errors += 1
                self._error("apply", f"applying IPVS: {exc}")
                return False
            break
        self._recovered("apply", "applying IPVS")
        return True

    def _apply_ipvs_once(self, weights: Mapping[Backend, int]) -> None:
        adapter = self._ipvs()
        for vip in self.cfg.vips:
            version = ipaddress.ip_address(vip).version
            family = {b: w for b, w in weights.items() if b.version == version}
            scheduler = scheduler_for(self.cfg.prefer_local, has_local_backend(family, self.cfg.local_addresses))
            desired = desired_service(vip, self.cfg.port, family, scheduler)
            current = adapter.get(desired.address, desired.port, desired.protocol)
            actions = plan(current, desired, purge_real_servers=True)
            if actions:
                adapter.apply(actions)
                LOG.info("IPVS %s: %s", desired.label, "; ".join(a.describe() for a in actions))

    def _stale_pairs(self, vips: Iterable[str], port: int) -> list[tuple[str, int]]:
        current = {(v, self.cfg.port) for v in self.cfg.vips}
        return [(v, port) for v in vips if (v, port) not in current]

    def _remove_services(self, pairs: Iterable[tuple[str, int]]) -> None:
        """Delete IPVS services the configuration no longer has (VIP or port changed)."""
        pairs = list(pairs)
        if not pairs or self.cfg.mode != "ipvs" or not ipvs_loaded(self.hooks.paths.proc_root):
            return
        try:
            adapter = self._ipvs()
            for vip, port in pairs:
                current = adapter.get(vip, port, "tcp")
                actions = plan(current, None, purge_real_servers=True)
                if actions:
                    adapter.apply(actions)
                    LOG.info("IPVS: %s (no longer configured)", "; ".join(a.describe() for a in actions))
        except Exception as exc:  # as in _apply_ipvs: whatever the adapter raised, it is rebuilt
            self._drop_adapter()
            self._error("stale", f"removing IPVS services no longer configured: {exc}")

    def close_connections(self, backend: Backend) -> None:
        """Close what still goes to a failed backend: the node's own sockets and the conntrack entries."""
        path = os.path.join(self.hooks.paths.proc_root, "net", "ip_vs_conn")
        try:
            with open(path, encoding="ascii", errors="replace") as handle:
                text = handle.read()
        except OSError as exc:
            self._error("close", f"cannot read {path}: {exc.strerror or exc}")
            return
        services = [(v, self.cfg.port) for v in self.cfg.vips]
        connections = connections_to(parse_ip_vs_conn(text), backend, services)
        local = {*self.cfg.vips, *self.cfg.local_addresses, "127.0.0.1", "::1"}
        kills = socket_kill_commands(connections, local)
        failures = []
        for argv in kills:
            rc, _out, err = self.hooks.runner(argv)
            if rc != 0:
                failures.append(command_error(argv, rc, err))
        for argv in conntrack_commands(backend, self.cfg.vips, self.cfg.port):
            rc, _out, err = self.hooks.runner(argv)
            if rc != 0 and "0 flow entries" not in err:
                failures.append(command_error(argv, rc, err))
        if failures:
            self._error("close", f"closing connections to {backend}: {failures[0]}")
        else:
            self._recovered("close", "closing connections")
        LOG.info(
            "backend %s: closed %d local connections of %d through the VIP, conntrack entries deleted",
            backend,
            len(kills),
            len(connections),
        )

    # ---- haproxy ------------------------------------------------------------------------------------------

    def _sync_pem(self) -> bool:
        """Keep haproxy's combined client PEM (certificate + key) in step with the files; whether it changed."""
        cfg = self.cfg
        if not cfg.client_cert_file:
            return False
        files = [cfg.client_cert_file, cfg.client_key_file or cfg.client_cert_file]
        stamp = file_stamp(files)
        if stamp == self._pem_stamp:
            return False
        cert = _read_bytes(files[0], "the client certificate").decode("ascii", "replace")
        key = _read_bytes(files[1], "the client key").decode("ascii", "replace") if files[1] != files[0] else ""
        combined = cert if cert.endswith("\n") or not key else cert + "\n"
        combined += key
        try:
            with open(cfg.haproxy.pem_path, encoding="ascii", errors="replace") as handle:
                unchanged = handle.read() == combined
        except OSError:
            unchanged = False
        if not unchanged:
            try:
                atomic_write(cfg.haproxy.pem_path, combined, 0o600)
            except OSError as exc:
                raise GuardError(f"cannot write {cfg.haproxy.pem_path}: {exc.strerror or exc}") from exc
        self._pem_stamp = stamp
        return not unchanged

    def _replace_haproxy_config(self, text: str) -> None:
        """Put `text` in place of the configuration file only once haproxy's own check accepts it: a refused one
        never reaches the file that a reload or the next start of haproxy reads. A refused text is checked again
        at the reload retry pace (the cause, say a missing CA file, may be fixed outside), not every round."""
        hap = self.cfg.haproxy
        now = self.hooks.monotonic()
        if self._haproxy_refusal and self._haproxy_refusal[0] == text and now < self._haproxy_check_retry_at:
            raise GuardError(self._haproxy_refusal[1])
        candidate = hap.config_path + ".new"
        try:
            atomic_write(candidate, text, 0o644)
        except OSError as exc:
            raise GuardError(f"cannot write {candidate}: {exc.strerror or exc}") from exc
        try:
            rc, out, err = self.hooks.runner([*hap.check_command, candidate])
            if rc != 0:
                self.haproxy_refused += 1
                said = (err + out).splitlines()
                alerts = [line for line in said if "[ALERT]" in line] or said  # not its version NOTICEs
                message = (
                    f"haproxy refuses the new configuration, {hap.config_path} keeps the one in use: "
                    f"{command_error((*hap.check_command, candidate), rc, ' '.join(alerts))}"
                )
                self._haproxy_refusal, self._haproxy_check_retry_at = (text, message), now + RELOAD_RETRY_S
                raise GuardError(message)
            try:
                os.replace(candidate, hap.config_path)
                fsync_directory(os.path.dirname(os.path.abspath(hap.config_path)))
            except OSError as exc:
                raise GuardError(f"cannot replace {hap.config_path}: {exc.strerror or exc}") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(candidate)
        self._haproxy_refusal = None

    def _apply_haproxy(self) -> bool:
        hap = self.cfg.haproxy
        try:
            pem_changed = self._sync_pem()
            text = render_haproxy(
                self.cfg.haproxy_settings(), self.backends, self.cfg.local_addresses, self.cfg.prefer_local
            )
            wrote = False
            if text != self._haproxy_applied:
                try:
                    with open(hap.config_path, encoding="utf-8") as handle:
                        on_disk: str | None = handle.read()
                except OSError:
                    on_disk = None
                if on_disk != text:
                    self._replace_haproxy_config(text)
                    LOG.info("haproxy: wrote %s (%d backends)", hap.config_path, len(self.backends))
                    self._reload_pending = wrote = True
                self._haproxy_applied = text
            if pem_changed:
                self._reload_pending = True
            now = self.hooks.monotonic()
            if self._reload_pending and (wrote or pem_changed or now >= self._reload_retry_at):
                self._reload_retry_at = now + RELOAD_RETRY_S
                rc, _out, err = self.hooks.runner(list(hap.reload_command))
                if rc != 0:
                    self.haproxy_refused += 1
                    raise GuardError(
                        f"reloading haproxy (the running one keeps its configuration): "
                        f"{command_error(hap.reload_command, rc, err)}"
                    )
                self._reload_pending = False
                LOG.info("haproxy: reloaded")
        except GuardError as exc:
            self.apply_errors += 1
            self._error("apply", str(exc))
            return False
        if not self._reload_pending:  # a failed reload waiting for its retry has not recovered yet
            self._recovered("apply", "applying the haproxy configuration")
        return True

    # ---- state, discovery, configuration -------------------------------------------------------------

    def _write_state(self) -> None:
        state = make_state(self.cfg.vips, self.cfg.port, self.backends, self.tracker.health())
        doc = state.to_dict()
        if doc == self._state_written:
            return
        try:
            write_state(self.cfg.state_file, state)
        except GuardError as exc:
            self._error("state", str(exc))
            return
        self._recovered("state", "writing the state file")
        self._state_written = doc

    def _set_backends(self, backends: Sequence[Backend]) -> None:
        backends = tuple(backends)
        if backends == self.backends:
            return
        added = [str(b) for b in backends if b not in self.backends]
        removed = [str(b) for b in self.backends if b not in backends]
        LOG.info("backends now %s (added: %s; removed: %s)", ", ".join(map(str, backends)), added, removed)
        self._forget(departed=[b for b in self.backends if b not in backends], returned=backends)
        self.backends = backends
        self.tracker.retain(backends)

    def _forget(self, departed: Sequence[Backend], returned: Sequence[Backend]) -> None:
        """What is kept of backends that left: no latency; their transition counters (so a rate over the last flap
        of a master that left still works) only for the ``DEPARTED_KEPT`` latest, so churn cannot grow memory."""
        for backend in returned:
            self._departed.pop(backend, None)
        for backend in departed:
            self.latency.pop(backend, None)
            self._departed.pop(backend, None)
            self._departed[backend] = None  # the newest last
        while len(self._departed) > DEPARTED_KEPT:
            oldest = next(iter(self._departed))
            del self._departed[oldest]
            for state in (UP, DOWN):
                self.transitions.pop((oldest, state), None)

    def discover_once(self) -> bool:
        """One discovery; the backend set becomes seeds + discovered. An error keeps the previous set."""
        with self._lock:
            cfg = self.cfg
            servers = [b for b in self.backends if self.tracker.state(b) == UP]
        if not cfg.discovery.enabled or not servers:
            return False
        local = {str(ipaddress.ip_address(a)) for a in cfg.local_addresses}
        servers.sort(key=lambda b: b.address not in local)  # the local apiserver first
        try:
            found = self.hooks.discoverer(cfg, servers)
        except GuardError as exc:
            self._error("discovery", f"{exc}; keeping the current backends")
            return False
        except Exception as exc:  # whatever the client or the answer's decoding raised: the next call tries again
            self._error("discovery", f"discovery failed: {type(exc).__name__}: {exc}; keeping the current backends")
            return False
        self._recovered("discovery", "discovery")
        with self._lock:
            if not self.cfg.discovery.enabled:
                return False
            admitted, refused = admit_discovered(found, self.cfg)
            if refused != self._refused:  # said once, not at every discovery
                for reason in refused:
                    LOG.warning("discovery: ignoring %s", reason)
                self._refused = refused
            self.discovered = self._after_answer(admitted)
            self._set_backends(backend_set(self.cfg.seeds, self.discovered))
        return True

    def _after_answer(self, admitted: frozenset[Backend]) -> frozenset[Backend]:
        """The discovered set after an answer: one the answer lacks stays until ``DISCOVERY_MISSES`` answers in a
        row lacked it, and one at most leaves per answer (the longest missing, then in address order). A seed
        the answer lacks leaves the discovered set at once (it stays a backend as a seed)."""
        for backend in admitted:
            self._misses.pop(backend, None)
        # A seed stays in the data path whatever the answers say: only the others need the wait.
        missing = sort_backends(b for b in self.discovered - admitted if b not in self.cfg.seeds)
        for backend in missing:
            self._misses[backend] = self._misses.get(backend, 0) + 1
        due = [b for b in missing if self._misses[b] >= DISCOVERY_MISSES]
        if due:
            leaving = max(due, key=lambda b: self._misses[b])  # max keeps the first of equals: address order
            missing.remove(leaving)
            del self._misses[leaving]
            LOG.info("discovery: %s left the kubernetes EndpointSlice (%d answers in a row); removed", leaving,
                     DISCOVERY_MISSES)  # fmt: skip
        room = max(0, self.cfg.discovery.max_backends - len(admitted))
        for backend in missing[room:]:  # kept ones never push the set past its bound
            del self._misses[backend]
        return admitted | frozenset(missing[:room])

    def reload_config(self) -> bool:
        """SIGHUP: load the configuration again; on any problem, log it and keep the current one."""
        if not self.config_path:
            return False
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            LOG.error("reload: keeping the current configuration: %s", exc)
            return False
        fixed = [
            k
            for k in ("mode", "interface", "metrics_address", "metrics_port")
            if getattr(new, k) != getattr(self.cfg, k)
        ]
        if fixed:
            LOG.error("reload: keeping the current configuration: changing %s needs a restart", ", ".join(fixed))
            return False
        with self._lock:
            old = self.cfg
            self.cfg = new
            self.tracker.reconfigure(new.rise, new.fall)
            if not new.discovery.enabled:
                self.discovered = frozenset()
            self._misses = {b: n for b, n in self._misses.items() if b in self.discovered}
            self._set_backends(backend_set(new.seeds, self.discovered))
            self._pem_stamp = None
            if (old.vips, old.port, old.prefer_local) != (new.vips, new.port, new.prefer_local):
                self.ensure_plumbing()
                self._remove_services(self._stale_pairs(old.vips, old.port))
            self._reconcile(())
        LOG.info("reload: configuration reloaded from %s", self.config_path)
        return True

    # ---- reporting ----------------------------------------------------------------------------------

    def snapshot(self) -> MetricsSnapshot:
        with self._lock:
            return MetricsSnapshot(
                backends=self.backends,
                health=self.tracker.health(),
                weights=dict(self.weights),
                latency=dict(self.latency),
                transitions=dict(self.transitions),
                last_reconcile=self.last_reconcile,
                fail_open=bool(self.fail_open_families),
                discovered=len(self.discovered),
                apply_errors=self.apply_errors,
                haproxy_refused=self.haproxy_refused,
            )

    def healthy(self) -> tuple[bool, str]:
        if self._last_round is None:
            return False, "no probe round completed yet"
        age = self.hooks.monotonic() - self._last_round
        if age > HEALTHZ_INTERVALS * self.cfg.interval_s + self.cfg.timeout_s:
            return False, f"the last probe round completed {age:.1f}s ago"
        return True, "ok"

    def any_up(self) -> bool:
        with self._lock:
            return any(self.tracker.state(b) == UP for b in self.backends)

    # ---- running ------------------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def request_reload(self) -> None:
        self._reload_requested = True
        self._wake.set()

    def _every(self, name: str, interval: Callable[[], float], step: Callable[[], object]) -> None:
        def loop() -> None:
            due = time.monotonic()  # real time, as the Event's wait below
            while not self._stop.is_set():
                seconds = interval()
                if seconds > 0:
                    try:
                        step()
                    except Exception:  # log and go on: the guard must keep running
                        LOG.exception("%s failed", name)
                due = next_due(due, seconds if seconds > 0 else 1.0, time.monotonic())
                if self._stop.wait(max(0.0, due - time.monotonic())):
                    return

        thread = threading.Thread(target=loop, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def startup_with_retry(self) -> bool:
        """``startup``, retried with back-off when it raises (the state file's rules could not be applied, say), for
        ``STARTUP_RETRY_S`` at most; then the rounds take over, which converge from the probes alone. Exiting would
        leave the node's rules to systemd's restart loop instead."""
        delay, deadline = STARTUP_FIRST_RETRY_S, self.hooks.monotonic() + STARTUP_RETRY_S
        while True:
            try:
                return self.startup()
            except Exception:
                if self._stop.is_set() or self.hooks.monotonic() + delay > deadline:
                    LOG.exception("start-up failed; going on with probe rounds")
                    return False
                LOG.exception("start-up failed; retrying in %.0fs", delay)
            if self._stop.wait(delay):
                return False
            delay = min(delay * 2, STARTUP_RETRY_S)

    def serve(self) -> int:
        """Run until SIGTERM/SIGINT; the rules stay in place when it returns."""
        notified = self.startup_with_retry()
        if notified:
            self.hooks.notify("READY=1")
        if self.cfg.metrics_port:
            try:
                self._metrics = MetricsServer(self, self.cfg.metrics_address, self.cfg.metrics_port)
                self._metrics.start()
            except OSError as exc:
                LOG.error(
                    "metrics: cannot listen on %s: %s",
                    format_endpoint(self.cfg.metrics_address, self.cfg.metrics_port),
                    exc.strerror or exc,
                )
        self._every("fast-check", lambda: self.cfg.fast_check_interval_s, self.fast_check_once)
        self._every(
            "discovery", lambda: self.cfg.discovery.interval_s if self.cfg.discovery.enabled else 0, self.discover_once
        )
        next_round = self.hooks.monotonic()
        while not self._stop.is_set():
            if self._reload_requested:
                self._reload_requested = False
                self.reload_config()
            now = self.hooks.monotonic()
            if now >= next_round:
                completed = False
                try:
                    self.run_round()
                    completed = True
                except Exception:  # log and go on: the guard must keep running
                    LOG.exception("probe round failed")
                if not notified:
                    self.hooks.notify("READY=1")
                    notified = True
                if completed:
                    # systemd's watchdog (WatchdogSec) restarts a guard whose rounds stop completing.
                    self.hooks.notify("WATCHDOG=1")
                next_round = max(next_round + self.cfg.interval_s, self.hooks.monotonic())
            self._wake.wait(max(0.0, next_round - self.hooks.monotonic()))
            self._wake.clear()
        self.hooks.notify("STOPPING=1")
        LOG.info("stopping; the data path is left in place")
        self.close()
        return 0

    def close(self) -> None:
        self._stop.set()
        if self._metrics is not None:
            self._metrics.stop()
            self._metrics = None
        for thread in self._threads:
            thread.join(timeout=2.0)
        self._prober.close()
        self._pool.shutdown(wait=False)
        with self._lock:
            adapters, self._adapters = self._adapters, []
        for adapter in adapters:
            with contextlib.suppress(Exception):
                adapter.close()


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def cleanup(cfg: GuardConfig, hooks: Hooks | None = None) -> int:
    """``--cleanup``: remove the IPVS services of the VIPs, the plumbing, the state file and haproxy's files."""
    hooks = hooks or Hooks()
    failures = 0
    pairs = {(v, cfg.port) for v in cfg.vips}
    try:
        state = read_state(cfg.state_file)
    except GuardError:
        state = None
    if state is not None:
        pairs |= {(v, state.port) for v in state.vips}
    if ipvs_loaded(hooks.paths.proc_root):
        adapter = None
        try:
            adapter = hooks.ipvs_factory()
            for vip, port in sorted(pairs):
                actions = plan(adapter.get(vip, port, "tcp"), None, purge_real_servers=True)
                if actions:
                    adapter.apply(actions)
                    LOG.info("removed %s", "; ".join(a.describe() for a in actions))
        except Exception as exc:  # pyroute2 raises more than NetlinkError: the rest of the cleanup must still run
            failures += 1
            LOG.error("removing the IPVS services: %s", exc)
        finally:
            if adapter is not None:
                adapter.close()
    try:
        for item in remove_plumbing(cfg, hooks.runner):
            LOG.info("removed %s", item)
    except GuardError as exc:
        failures += 1
        LOG.error("removing the plumbing: %s", exc)
    for path in (cfg.state_file, cfg.haproxy.pem_path, cfg.haproxy.config_path):
        try:
            os.unlink(path)
            LOG.info("removed %s", path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            failures += 1
            LOG.error("cannot remove %s: %s", path, exc.strerror or exc)
    return 1 if failures else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ansible_collections.kubeha.apiserver.plugins.module_utils._guard",
        description="Keep this node's kube-apiserver VIP pointed at the apiservers that are ready.",
    )
    parser.add_argument("--config", required=True, help="the guard's JSON configuration file")
    action = parser.add_mutually_exclusive_group()
    action.add_argument(
        "--once", action="store_true", help="one probe and apply round, then exit (0: a backend is ready)"
    )
    action.add_argument(
        "--cleanup", action="store_true", help="remove the services, plumbing and state file, then exit"
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def main(argv: Sequence[str] | None = None, hooks: Hooks | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level), format="%(levelname)s %(message)s", stream=sys.stderr)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        LOG.error("%s", exc)
        return 2
    if args.cleanup:
        return cleanup(cfg, hooks)
    guard = Guard(cfg, args.config, hooks)
    if args.once:
        try:
            guard.startup()
            guard.run_round()
            return 0 if guard.any_up() else 1
        finally:
            guard.close()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: guard.request_stop())
    signal.signal(signal.SIGINT, lambda _signum, _frame: guard.request_stop())
    signal.signal(signal.SIGHUP, lambda _signum, _frame: guard.request_reload())
    return guard.serve()


if __name__ == "__main__":
    raise SystemExit(main())
