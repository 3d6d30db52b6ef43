# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to the kubeha.apiserver collection: not a public API, may change without notice.
"""The guard's configuration: the JSON file the local_proxy role writes, read into a frozen ``GuardConfig``.

Every key is checked (type, range, address family) and an error names the key and the value; unknown keys are
refused, so a typo never falls back to a default silently. Also the domain's one error, ``GuardError``.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.kubeha.apiserver.plugins.module_utils._haproxy_config import (
    DEFAULT_STATS_SOCKET,
    DEFAULT_VERIFY_NAME,
    HaproxySettings,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._probe import ProbeSettings
from ansible_collections.kubeha.apiserver.plugins.module_utils._proxy import (
    Backend,
    ProxyError,
    parse_endpoint,
    sort_backends,
)

LOG = logging.getLogger("kubeha-apiserver-guard")  # the guard's one logger, for every part of it

MODES = ("ipvs", "nftables", "haproxy")
# haproxy can carry a VIP of one address family to backends of the other; the kernel paths translate within one.
CROSS_FAMILY_MODES = frozenset({"haproxy"})
DISCOVERED_MAX = 16  # discovered backends accepted at most (the first, in address order): an answer cannot flood
_INTERFACE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
# A DNS name (haproxy's verifyhost takes one, with no space or quote to break the configuration line), or "".
_VERIFY_NAME = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)*")

DEFAULT_STATE_FILE = "/var/lib/kubeha-apiserver/state.json"
DEFAULT_HAPROXY_CONFIG = "/etc/kubeha-apiserver/haproxy.cfg"
DEFAULT_HAPROXY_PEM = "/etc/kubeha-apiserver/haproxy-client.pem"
DEFAULT_RELOAD_COMMAND = ("systemctl", "reload", "kubeha-apiserver-haproxy.service")
# Run with a candidate configuration's path appended, before it replaces the one in use.
DEFAULT_CHECK_COMMAND = ("/usr/sbin/haproxy", "-c", "-f")


class GuardError(Exception):
    """The one error of this domain; its message is meant for the log as is."""


class ConfigError(GuardError):
    """The configuration file is missing or invalid; the message names the key and the value."""


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


def read_bytes(path: str, what: str) -> bytes:
    """A configured file's bytes; ``GuardError`` names ``what`` and the path when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise GuardError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
