# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the kubeha.apiserver collection: this is NOT a public API. It backs the node-side guard
# (module_utils/_guard_daemon.py) and the kubeha.apiserver.apiserver_proxy module, and may change in any
# release without notice.

"""haproxy's configuration for the local proxy: the VIPs' frontends, every backend with haproxy's own checks
(``/readyz`` over TLS with the cluster CA, the client certificate when configured), and the prefer-local
arrangement; rendered as text for the haproxy data path to check and put in place.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from ansible_collections.kubeha.apiserver.plugins.module_utils._proxy import Backend, canonical_addresses, sort_backends

DEFAULT_STATS_SOCKET = "/run/kubeha-apiserver/haproxy.sock"
DEFAULT_VERIFY_NAME = "kubernetes"


@dataclass(frozen=True)
class HaproxySettings:
    """What ``render_haproxy`` needs. ``client_pem_file`` holds the client certificate and key together."""

    vips: tuple[str, ...]
    port: int
    ca_file: str
    client_pem_file: str | None = None
    interval_s: float = 1.0
    timeout_s: float = 1.0
    connect_timeout_s: float = 0.5
    rise: int = 2
    fall: int = 2
    stats_socket: str = DEFAULT_STATS_SOCKET
    path: str = "/readyz"
    # The DNS name every apiserver certificate carries (kubeadm's, kubespray's and hand-made ones all have it):
    # without it haproxy checks only the chain, which any certificate the cluster CA signed (a node's) passes.
    # haproxy's verifyhost matches DNS names only, not the address SANs the guard's own probes verify.
    verify_name: str = DEFAULT_VERIFY_NAME
    # haproxy's workers drop to this user and chroot here once the configuration, certificates and sockets are
    # loaded (Debian's haproxy package makes both); "" keeps root and the real root.
    user: str = "haproxy"
    chroot: str = "/var/lib/haproxy"


def haproxy_duration(seconds: float) -> str:
    """``1s``, ``500ms``: haproxy's time format, in whole milliseconds (at least 1)."""
    millis = max(1, round(seconds * 1000))
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def haproxy_address(address: str, port: int) -> str:
    """``ipv4@10.0.0.11:6443`` / ``ipv6@fd00::11:6443``: haproxy takes the last colon as the port separator."""
    ip = ipaddress.ip_address(address)
    return f"ipv{ip.version}@{ip}:{port}"


HAPROXY_BACKEND = "kube_apiservers"


def haproxy_server_name(backend: Backend) -> str:
    """The name of ``backend`` in the rendered configuration (and on haproxy's stats socket)."""
    return f"{backend.address}_{backend.port}"


def render_haproxy(
    cfg: HaproxySettings,
    backends: Iterable[Backend],
    local_addresses: Iterable[str],
    prefer_local: bool,
) -> str:
    """haproxy (2.6) TCP-mode configuration: the VIPs in front, every backend checked on ``/readyz``.

    The same inputs always render the same bytes, so an unchanged set never causes a reload. haproxy does
    its own health checks here; the guard shuts the sessions of a failed backend (see below). On a master
    with ``prefer_local`` the other apiservers are backups of the local one.
    """
    targets = sort_backends(backends)
    local = canonical_addresses(local_addresses)
    prefer = prefer_local and any(b.address in local for b in targets)
    inter = haproxy_duration(cfg.interval_s)
    check = [
        f"inter {inter}",
        f"fastinter {haproxy_duration(cfg.interval_s / 2)}",
        f"downinter {inter}",
        f"fall {cfg.fall}",
        f"rise {cfg.rise}",
        "check",
        "check-ssl",
        "verify required",
        f"ca-file {cfg.ca_file}",
    ]
    if cfg.verify_name:
        check.append(f"verifyhost {cfg.verify_name}")
    if cfg.client_pem_file:
        check.append(f"crt {cfg.client_pem_file}")
    # Neither `observe layer4` nor `on-marked-down shutdown-sessions`: both shut the sessions being redispatched
    # off a killed master (measured: a request lost in 5 of 6 SIGKILL drills with the first, 1 in ~7 with the
    # second). A killed master's connections are reset by its kernel; for any other failure the guard marks
    # the server down and shuts its sessions on the stats socket.
    check += ["on-marked-up shutdown-backup-sessions"]

    lines = [
        "# Written by the kubeha.apiserver guard: do not edit, it is rewritten when the apiservers change.",
        "global",
        "    log stderr format raw local0 notice",
        *([f"    user {cfg.user}", f"    group {cfg.user}"] if cfg.user else []),
        *([f"    chroot {cfg.chroot}"] if cfg.chroot else []),
        f"    stats socket {cfg.stats_socket} mode 600 level admin expose-fd listeners",
        # a reload leaves the old process serving its connections (watches): end them after 5 minutes,
        # which client-go's watch timeouts (5 to 10 minutes) would do anyway
        "    hard-stop-after 5m",
        "",
        "defaults",
        "    mode tcp",
        "    log global",
        # no SYN-ACK within this on a node's network means a dead or black-holed master, not a busy one
        f"    timeout connect {haproxy_duration(cfg.connect_timeout_s)}",
        "    timeout client 24h",
        "    timeout server 24h",
        f"    timeout check {haproxy_duration(cfg.timeout_s)}",
        # A refused or timed-out connect is retried on another server: a dead master fails no new request.
        "    retries 2",
        "    option redispatch 1",
        "",
        "frontend kubeha_apiserver",
    ]
    vips = sorted({str(ipaddress.ip_address(v)) for v in cfg.vips}, key=lambda v: Backend(v, cfg.port).sort_key())
    lines += [f"    bind {haproxy_address(vip, cfg.port)}" for vip in vips]
    lines += [
        "    default_backend kube_apiservers",
        "",
        f"backend {HAPROXY_BACKEND}",
        "    balance roundrobin",
        f"    option httpchk GET {cfg.path}",
        # the whole body must be "ok": a failing /readyz (HTTP 500) also lists "[+]ping ok" lines
        "    http-check expect rstring ^ok$",
    ]
    if prefer:
        lines.append("    option allbackups")
    lines.append("    default-server " + " ".join(check))
    for backend in targets:
        backup = " backup" if prefer and backend.address not in local else ""
        lines.append(
            f"    server {haproxy_server_name(backend)} {haproxy_address(backend.address, backend.port)}{backup}"
        )
    return "\n".join(lines) + "\n"
