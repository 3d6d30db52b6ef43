# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to the kubeha.apiserver collection: not a public API, may change without notice.
"""The guard's contacts with the outside world, in one place: the real ones by default, fakes in unit tests.

Commands, the IPVS netlink adapter, the probes and TCP checks, discovery, systemd's notification socket,
haproxy's stats socket, the clocks and where the kernel's files are.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_config import LOG, GuardConfig
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_discovery import discover_backends
from ansible_collections.kubeha.apiserver.plugins.module_utils._ipvs import PyRoute2IPVS
from ansible_collections.kubeha.apiserver.plugins.module_utils._node_plumbing import Paths, Runner, run_command
from ansible_collections.kubeha.apiserver.plugins.module_utils._probe import ProbeSettings, tcp_check
from ansible_collections.kubeha.apiserver.plugins.module_utils._proxy import Backend, ProbeResult


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
