# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the kubeha.apiserver collection: this is NOT a public API. It backs the
# kubeha.apiserver.ipvs_service module and may change in any release without notice.

"""Kernel IPVS virtual servers, the kernel side: netlink parsing, the kernel modules, a thin pyroute2 adapter,
and the ipvs_service module's whole run (``ensure``).

The model, validation and the pure planner are ``_ipvs_model``. Only ``PyRoute2IPVS`` and ``load_kernel_modules``
touch the kernel; the netlink parsing is unit-tested without pyroute2 or a kernel. pyroute2 is imported lazily
inside the adapter so that this file imports on hosts without it and the module can report
``missing_required_lib``.
"""

from __future__ import annotations

import errno
import importlib.util
import ipaddress
import socket
import struct
import sys
import traceback
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from ansible_collections.kubeha.apiserver.plugins.module_utils._ipvs_model import (
    FORWARDING_LOCAL,
    FORWARDING_METHODS,
    PROTOCOLS,
    Action,
    IPVSError,
    RealServer,
    Service,
    desired_from_params,
    diff,
    plan,
    simulate,
    to_dict,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._kernel import ipvs_loaded, kernel_module

# include/uapi/linux/ip_vs.h: the forwarding method's bits of a destination's flags, and a persistent service.
IP_VS_CONN_F_FWD_MASK = 0x7
IP_VS_CONN_F_LOCALNODE = 1
IP_VS_SVC_F_PERSISTENT = 0x1


class MissingLibraryError(IPVSError):
    """A required Python library (pyroute2) cannot be imported."""

    def __init__(self, library: str, import_traceback: str) -> None:
        super().__init__(f"cannot import {library}")
        self.library = library
        self.import_traceback = import_traceback


# --------------------------------------------------------------------------------------------------
# Kernel helpers
# --------------------------------------------------------------------------------------------------


def netlink_error_message(operation: str, exc: BaseException) -> str:
    """``adding real server 10.0.0.1:6443 to TCP 169.254.100.1:6443: EEXIST``."""
    code = getattr(exc, "code", None)
    if isinstance(code, int) and not isinstance(code, bool):
        name = errno.errorcode.get(abs(code), f"errno {abs(code)}")
        if abs(code) == errno.EPERM:
            name += " (CAP_NET_ADMIN is required: run the task with become)"
        return f"{operation}: {name}"
    return f"{operation}: {exc or type(exc).__name__}"


def fwd_method_from_attrs(dest_attrs: Any) -> str:
    """Forwarding method of a dumped destination, from the raw ``IPVS_DEST_ATTR_FWD_METHOD``.

    ``IPVSDest.from_message`` in pyroute2 0.9.7 keeps its default ``fwd_method=3`` instead of the
    kernel's value, so the raw attribute is the only reliable source.
    """
    raw = dest_attrs.get_attr("IPVS_DEST_ATTR_FWD_METHOD")
    if raw is None:
        raise IPVSError("the kernel reported a real server without a forwarding method")
    value = int(raw) & IP_VS_CONN_F_FWD_MASK
    if value == IP_VS_CONN_F_LOCALNODE:
        return FORWARDING_LOCAL
    for name, number in FORWARDING_METHODS.items():
        if number == value:
            return name
    return f"unknown({value})"


def real_server_from_attrs(dest_attrs: Any) -> RealServer:
    """A ``RealServer`` from the ``IPVS_CMD_ATTR_DEST`` attribute set of a dest dump message."""
    return RealServer(
        address=str(dest_attrs.get_attr("IPVS_DEST_ATTR_ADDR")),
        port=int(dest_attrs.get_attr("IPVS_DEST_ATTR_PORT")),
        weight=int(dest_attrs.get_attr("IPVS_DEST_ATTR_WEIGHT") or 0),
        forwarding=fwd_method_from_attrs(dest_attrs),
        active_connections=int(dest_attrs.get_attr("IPVS_DEST_ATTR_ACTIVE_CONNS") or 0),
        inactive_connections=int(dest_attrs.get_attr("IPVS_DEST_ATTR_INACT_CONNS") or 0),
    )


def service_from_attrs(svc_attrs: Any) -> Service | None:
    """A bare ``Service`` from the ``IPVS_CMD_ATTR_SERVICE`` attribute set; ``None`` for fwmark or
    other-protocol services, which this module does not manage.

    Persistence is read from the raw flags and timeout: ``IPVSService.from_message`` in pyroute2
    0.9.7 keeps its defaults (``timeout=0``, ``flags=0``) there too.
    """
    if svc_attrs.get_attr("IPVS_SVC_ATTR_FWMARK"):
        return None
    address = svc_attrs.get_attr("IPVS_SVC_ATTR_ADDR")
    number = svc_attrs.get_attr("IPVS_SVC_ATTR_PROTOCOL")
    protocol = next((name for name, value in PROTOCOLS.items() if value == number), None)
    if address is None or protocol is None:
        return None
    flags = svc_attrs.get_attr("IPVS_SVC_ATTR_FLAGS")
    flag_bits = int(flags["flags"]) if flags is not None else 0
    timeout = int(svc_attrs.get_attr("IPVS_SVC_ATTR_TIMEOUT") or 0)
    return Service(
        address=str(address),
        port=int(svc_attrs.get_attr("IPVS_SVC_ATTR_PORT")),
        protocol=protocol,
        scheduler=str(svc_attrs.get_attr("IPVS_SVC_ATTR_SCHED_NAME") or ""),
        persistence_timeout=(timeout or None) if flag_bits & IP_VS_SVC_F_PERSISTENT else None,
    )


def load_kernel_modules(
    scheduler: str,
    run_command: Callable[[list[str]], tuple[int, str, str]],
    modprobe: str = "modprobe",
    proc_root: str = "/proc",
    sys_root: str = "/sys",
    modules_root: str = "/lib/modules",
) -> list[str]:
    """Load ``ip_vs`` and ``ip_vs_<scheduler>`` unless present; return the modules loaded.

    ``run_command(argv) -> (rc, stdout, stderr)`` is AnsibleModule.run_command in the module.
    """
    loaded: list[str] = []
    if not ipvs_loaded(proc_root):
        rc, _out, err = run_command([modprobe, "ip_vs"])
        if rc != 0:
            reason = (err or "").strip() or f"exit code {rc}"
            raise IPVSError(f"IPVS is not available in this kernel: modprobe ip_vs failed: {reason}")
        loaded.append("ip_vs")
    sched_module = f"ip_vs_{scheduler}"
    if kernel_module(sched_module, proc_root, sys_root, modules_root)[0] not in ("loaded", "built in"):
        rc, _out, err = run_command([modprobe, sched_module])
        if rc != 0:
            reason = (err or "").strip() or f"exit code {rc}"
            raise IPVSError(
                f"scheduler {scheduler!r} is not available in this kernel: modprobe {sched_module} failed: {reason}"
            )
        loaded.append(sched_module)
    return loaded


# --------------------------------------------------------------------------------------------------
# pyroute2 adapter
# --------------------------------------------------------------------------------------------------


def _ipv6_netmask() -> str:
    # The kernel takes an IPv6 service's prefix length (128) as a host-order u32 in the netmask
    # attribute, which pyroute2 encodes as an IPv4 address (as ipvsadm does).
    return socket.inet_ntoa(struct.pack("=I", 128))


def _load_pyroute2_ipvs() -> tuple[Any, Any, Any, type[Exception]]:
    """pyroute2's IPVS, IPVSService, IPVSDest and NetlinkError, without running the package's ``__init__``.

    ``pyroute2/__init__`` imports its whole API (NDB, IPRoute, conntrack, ...): about 7 MB of RSS that the guard,
    which runs on every node and needs only the IPVS socket, would carry for its life (the target is 40 MB). So
    the package is entered through a bare module object while ``pyroute2.ipvs`` loads, then taken out of
    ``sys.modules`` again: a later ``import pyroute2`` runs the real ``__init__`` and reuses the loaded modules.
    """
    if "pyroute2" not in sys.modules:
        spec = importlib.util.find_spec("pyroute2")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("No module named 'pyroute2'", name="pyroute2")
        bare = types.ModuleType("pyroute2")
        bare.__path__ = list(spec.submodule_search_locations)
        bare.__spec__ = spec
        sys.modules["pyroute2"] = bare
        try:
            from pyroute2.ipvs import IPVS, IPVSDest, IPVSService
            from pyroute2.netlink.exceptions import NetlinkError
        finally:
            if sys.modules.get("pyroute2") is bare:
                del sys.modules["pyroute2"]
        return IPVS, IPVSService, IPVSDest, NetlinkError
    from pyroute2 import IPVS, IPVSDest, IPVSService
    from pyroute2.netlink.exceptions import NetlinkError

    return IPVS, IPVSService, IPVSDest, NetlinkError


class PyRoute2IPVS:
    """Reads and changes kernel IPVS through pyroute2's generic netlink ``IPVS`` socket.

    pyroute2 0.9.7 quirks handled here: ``IPVSService`` defaults the scheduler to ``wlc`` and
    ``IPVSDest`` defaults ``fwd_method`` to 3 (direct routing), so both are always passed explicitly;
    ``from_message`` mis-reports ``fwd_method``, ``timeout`` and ``flags``, so dumps are parsed from
    the raw attributes; the ``"update"`` command maps to a DEL command, so changes use ``"set"``.
    """

    def __init__(self) -> None:
        try:
            classes = _load_pyroute2_ipvs()  # here, so that this file imports without pyroute2
        except ImportError as exc:
            raise MissingLibraryError("pyroute2", traceback.format_exc()) from exc
        self._ipvs_class, self._service_class, self._dest_class, self._netlink_error = classes
        self._socket: Any = None

    def __enter__(self) -> PyRoute2IPVS:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _sock(self) -> Any:
        if self._socket is None:
            try:
                self._socket = self._ipvs_class()
            except self._netlink_error as exc:
                code = abs(getattr(exc, "code", 0) or 0)
                detail = "generic netlink family IPVS not found" if code == errno.ENOENT else str(exc)
                raise IPVSError(f"IPVS is not available in this kernel: {netlink_error_message(detail, exc)}") from exc
            except OSError as exc:
                raise IPVSError(f"IPVS is not available in this kernel: {exc}") from exc
        return self._socket

    def _service_obj(self, service: Service) -> Any:
        ip = ipaddress.ip_address(service.address)
        return self._service_class(
            af=socket.AF_INET if ip.version == 4 else socket.AF_INET6,
            protocol=PROTOCOLS[service.protocol],
            addr=service.address,
            port=service.port,
            netmask="255.255.255.255" if ip.version == 4 else _ipv6_netmask(),
            sched_name=service.scheduler,
            timeout=service.persistence_timeout or 0,
            flags={
                "flags": IP_VS_SVC_F_PERSISTENT if service.persistence_timeout else 0,
                "mask": IP_VS_SVC_F_PERSISTENT,
            },
        )

    def _dest_obj(self, rs: RealServer) -> Any:
        ip = ipaddress.ip_address(rs.address)
        return self._dest_class(
            addr_family=socket.AF_INET if ip.version == 4 else socket.AF_INET6,
            addr=rs.address,
            port=rs.port,
            weight=rs.weight,
            fwd_method=FORWARDING_METHODS[rs.forwarding],
        )

    def get(self, address: str, port: int, protocol: str) -> Service | None:
        """The live service with its real servers, or ``None``: one service dump, then its dest dump."""
        wanted = Service(address=address, port=port, protocol=protocol)
        sock = self._sock()
        try:
            messages = sock.service("dump")
        except self._netlink_error as exc:
            raise IPVSError(netlink_error_message("reading IPVS services", exc)) from exc
        for message in messages:
            attrs = message.get_attr("IPVS_CMD_ATTR_SERVICE")
            service = service_from_attrs(attrs) if attrs is not None else None
            if service is None or service.key != wanted.key:
                continue
            try:
                dests = sock.dest("dump", service=self._service_obj(service))
            except self._netlink_error as exc:
                raise IPVSError(netlink_error_message(f"reading the real servers of {service.label}", exc)) from exc
            real_servers = tuple(
                real_server_from_attrs(d.get_attr("IPVS_CMD_ATTR_DEST"))
                for d in dests
                if d.get_attr("IPVS_CMD_ATTR_DEST") is not None
            )
            return replace(service, real_servers=real_servers)
        return None

    def apply(self, actions: Iterable[Action]) -> None:
        """Run the actions in order; the first netlink error stops and is raised as ``IPVSError``."""
        sock = self._sock()
        for action in actions:
            svc = self._service_obj(action.service)
            try:
                if action.kind == "add_service":
                    sock.service("add", service=svc)
                elif action.kind == "edit_service":
                    sock.service("set", service=svc)
                elif action.kind == "delete_service":
                    sock.service("del", service=svc)
                else:
                    command = {"add_dest": "add", "set_dest": "set", "del_dest": "del"}[action.kind]
                    sock.dest(command, service=svc, dest=self._dest_obj(action.dest))
            except self._netlink_error as exc:
                raise IPVSError(netlink_error_message(action.operation(), exc)) from exc


# --------------------------------------------------------------------------------------------------
# The module's whole run
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    changed: bool
    actions: list[str]
    service: dict[str, Any]
    diff: dict[str, dict[str, Any]]


def ensure(
    params: Mapping[str, Any],
    adapter_factory: Callable[[], Any],
    run_command: Callable[[list[str]], tuple[int, str, str]],
    check_mode: bool,
    modprobe: str = "modprobe",
    proc_root: str = "/proc",
) -> Outcome:
    """Validate, read, plan and (unless ``check_mode``) apply; read back and verify convergence.

    In check mode nothing is loaded or changed: with ip_vs not loaded the service cannot exist.
    """
    desired = desired_from_params(params)
    present = params.get("state", "present") != "absent"
    target = desired if present else None
    purge = params.get("purge_real_servers", True)
    purge = True if purge is None else bool(purge)

    adapter = adapter_factory()  # raises MissingLibraryError without pyroute2
    try:
        loaded = ipvs_loaded(proc_root)
        if present and not check_mode:
            load_kernel_modules(desired.scheduler, run_command, modprobe=modprobe, proc_root=proc_root)
            loaded = True
        current = adapter.get(desired.address, desired.port, desired.protocol) if loaded else None
        actions = plan(current, target, purge)
        after = simulate(current, actions)
        if actions and not check_mode:
            adapter.apply(actions)
            after = adapter.get(desired.address, desired.port, desired.protocol)
            pending = plan(after, target, purge)
            if pending:
                raise IPVSError(
                    f"IPVS did not converge for {desired.label}; still pending after applying: "
                    + "; ".join(a.describe() for a in pending)
                )
    finally:
        adapter.close()
    return Outcome(
        changed=bool(actions),
        actions=[a.describe() for a in actions],
        service=to_dict(after),
        diff=diff(current, after),
    )
