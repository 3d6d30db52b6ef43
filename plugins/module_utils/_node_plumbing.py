# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to the kubeha.apiserver collection: not a public API, may change without notice.
"""Node plumbing every data path shares: commands run without a shell, and the interface that holds the VIPs.

A dummy interface (``kha0``) holding exactly the VIPs (/32, /128 nodad), or the loopback interface where the
kernel has no dummy interfaces (only the guard's own addresses are then added and removed); sysctls written
through /proc/sys. What a data path needs beyond this (kernel modules, its nftables table) is its own.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_config import GuardError

Runner = Callable[..., tuple[int, str, str]]


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


def run_checked(runner: Runner, argv: Sequence[str], stdin: str | None = None) -> str:
    """``argv``'s output; ``GuardError`` naming the command, its exit code and its error output when it fails."""
    rc, out, err = runner(list(argv), stdin) if stdin is not None else runner(list(argv))
    if rc != 0:
        raise GuardError(command_error(argv, rc, err))
    return out


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
            run_checked(runner, argv)
            changes.append(" ".join(argv))
        return changes
    if link is None:
        run_checked(runner, ["ip", "link", "add", interface, "type", "dummy"])
        changes.append(f"created dummy interface {interface}")
        link = _show_link(runner, interface) or {}
    elif not _is_dummy(link):
        kind = (link.get("linkinfo") or {}).get("info_kind") or "physical"
        raise GuardError(f"interface {interface} exists and is not a dummy interface ({kind}): refusing to use it")
    if "UP" not in (link.get("flags") or []):
        run_checked(runner, ["ip", "link", "set", "dev", interface, "up"])
        changes.append(f"brought {interface} up")
    for argv in address_commands(interface, vips, link):
        run_checked(runner, argv)
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


def remove_interface(interface: str, vips: Iterable[str], runner: Runner) -> list[str]:
    """Remove the dummy interface (with its VIPs), or only the VIPs from the loopback interface; what was removed.

    An interface that is not a dummy one is never deleted.
    """
    removed = []
    if interface == LOOPBACK:
        for vip in vips:
            prefix = 32 if ipaddress.ip_address(vip).version == 4 else 128
            if runner(["ip", "addr", "del", f"{vip}/{prefix}", "dev", LOOPBACK])[0] == 0:
                removed.append(f"address {vip}/{prefix} on {LOOPBACK}")
        return removed
    link = _show_link(runner, interface)
    if link is not None:
        if not _is_dummy(link):
            raise GuardError(f"interface {interface} is not a dummy interface: not deleting it")
        run_checked(runner, ["ip", "link", "del", "dev", interface])
        removed.append(f"dummy interface {interface}")
    return removed
