# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the kubeha.apiserver collection: this is NOT a public API. It backs the node-side guard
# (module_utils/_guard.py) and the kubeha.apiserver.apiserver_proxy module, and may change in any
# release without notice.

"""Deciding which kube-apiservers a node may use: probing, hysteresis, weights and haproxy's configuration.

A backend is probed with ``GET /readyz`` over HTTPS, verified against the cluster CA (and with a client
certificate when one is configured, so probing works with ``--anonymous-auth=false``), under one hard
deadline. ``HealthTracker`` turns probe results into up/down states with rise/fall hysteresis, except that
a refused connection takes a backend down at once: nothing listens there any more. ``desired_weights``
and ``desired_service`` turn the states into the IPVS virtual server of ``_ipvs``; ``render_haproxy``
writes the equivalent haproxy configuration where IPVS is missing.

Only the standard library is used, and nothing here imports ``ansible``: the guard runs these files on
nodes as plain Python.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

from ansible_collections.kubeha.apiserver.plugins.module_utils._endpoint import (
    EndpointError,
    format_endpoint,
    split_endpoint,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._ipvs import RealServer, Service

UP = "up"
DOWN = "down"
UNKNOWN = "unknown"
STATES = (UP, DOWN, UNKNOWN)

USER_AGENT = "kubeha-apiserver-guard"
READY_BODY = b"ok"
MAX_BODY = 4096  # /readyz answers "ok"; a failing one lists its checks, a few hundred bytes
LOCAL_WEIGHT = 2  # a master's own apiserver, with prefer_local: above the others' weight 1
DEFAULT_STATS_SOCKET = "/run/kubeha-apiserver/haproxy.sock"


class ProxyError(Exception):
    """The one error of this domain; its message is meant for the user as is."""


# --------------------------------------------------------------------------------------------------
# Backends and probe results
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    """One kube-apiserver endpoint; the address is canonical (``fd00::0011`` -> ``fd00::11``)."""

    address: str
    port: int

    def __post_init__(self) -> None:
        try:
            canonical = str(ipaddress.ip_address(self.address))
        except ValueError as exc:
            raise ProxyError(f"backend address {self.address!r} is not an IPv4 or IPv6 address") from exc
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise ProxyError(f"backend port {self.port!r} of {self.address} is not a port number 1..65535")
        object.__setattr__(self, "address", canonical)

    @property
    def endpoint(self) -> str:
        """``10.0.0.11:6443`` or ``[fd00::11]:6443``."""
        return format_endpoint(self.address, self.port)

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.address).version

    def sort_key(self) -> tuple[int, int, int]:
        ip = ipaddress.ip_address(self.address)
        return (ip.version, int(ip), self.port)

    def __str__(self) -> str:
        return self.endpoint


def sort_backends(backends: Iterable[Backend]) -> list[Backend]:
    """IPv4 first, then numerically: the order of every listing and rendering."""
    return sorted(set(backends), key=Backend.sort_key)


def parse_endpoint(text: str) -> Backend:
    """``10.0.0.11:6443`` or ``[fd00::11]:6443`` as a ``Backend``; ``ProxyError`` naming the text otherwise."""
    try:
        return Backend(*split_endpoint(text))
    except EndpointError as exc:
        raise ProxyError(str(exc)) from None


@dataclass(frozen=True)
class ProbeResult:
    """One probe of one backend.

    ``refused``: a refused TCP connect, the apiserver process is gone. ``unanswered``: a TCP connect that got
    no answer at all within its timeout (no SYN-ACK, no reset). ``unreachable``: the guard's verdict after
    ``fall`` unanswered connects in a row, the host is gone or black-holed. A busy apiserver never causes
    the last two: the kernel completes the handshake whatever the process is doing.
    """

    backend: Backend
    ok: bool
    latency_s: float
    error: str = ""
    refused: bool = False
    unanswered: bool = False
    unreachable: bool = False


# --------------------------------------------------------------------------------------------------
# Probing
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeSettings:
    """How to probe: the cluster CA, an optional client certificate and key, a hard timeout, the path."""

    ca_file: str
    client_cert_file: str | None = None
    client_key_file: str | None = None
    timeout_s: float = 1.0
    path: str = "/readyz"

    def files(self) -> tuple[str, ...]:
        return tuple(f for f in (self.ca_file, self.client_cert_file, self.client_key_file) if f)


def file_stamp(paths: Sequence[str]) -> tuple[tuple[str, int, int], ...]:
    """What identifies the files' content without reading them: (path, mtime, size) each."""
    stamp = []
    for path in paths:
        try:
            info = os.stat(path)
        except OSError:
            stamp.append((path, -1, -1))
        else:
            stamp.append((path, info.st_mtime_ns, info.st_size))
    return tuple(stamp)


def _no_password() -> bytes:
    raise ProxyError("the client key is encrypted, which is not supported")


def build_ssl_context(settings: ProbeSettings) -> ssl.SSLContext:
    """A client context trusting only the cluster CA, checking the apiserver's IP SANs, with the client cert."""
    try:
        context = ssl.create_default_context(cafile=settings.ca_file)
    except FileNotFoundError as exc:
        raise ProxyError(f"cannot read the CA file {settings.ca_file}: {exc.strerror}") from exc
    except (OSError, ssl.SSLError) as exc:
        raise ProxyError(f"the CA file {settings.ca_file} is not a valid PEM certificate: {exc}") from exc
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    if settings.client_cert_file:
        try:
            context.load_cert_chain(settings.client_cert_file, settings.client_key_file, password=_no_password)
        except (OSError, ssl.SSLError) as exc:
            raise ProxyError(
                f"cannot load the client certificate {settings.client_cert_file} and key "
                f"{settings.client_key_file or settings.client_cert_file}: {exc}"
            ) from exc
    return context


class _ContextCache:
    """One SSL context per settings, rebuilt only when a file changes (kubelet rotates its certificate)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[ProbeSettings, tuple[tuple[tuple[str, int, int], ...], ssl.SSLContext]] = {}

    def get(self, settings: ProbeSettings) -> ssl.SSLContext:
        stamp = file_stamp(settings.files())
        with self._lock:
            entry = self._entries.get(settings)
            if entry is not None and entry[0] == stamp:
                return entry[1]
        context = build_ssl_context(settings)
        with self._lock:
            self._entries[settings] = (stamp, context)
        return context


_CONTEXTS = _ContextCache()


def ssl_context(settings: ProbeSettings) -> ssl.SSLContext:
    """The cached context for ``settings`` (``ProxyError`` when the files cannot be loaded)."""
    return _CONTEXTS.get(settings)


def _readyz_failure(status: int, body: bytes) -> str:
    """``HTTP 500: [-]etcd failed: reason withheld``: the status and the first failing check, if any."""
    text = body.decode("utf-8", "replace")
    failed = next((line.strip() for line in text.splitlines() if line.startswith("[-]")), "")
    if failed:
        return f"HTTP {status}: {failed}"
    first = text.strip().splitlines()[0][:120] if text.strip() else ""
    if status == 200:
        return f"HTTP 200 with an unexpected body {first!r}"
    return f"HTTP {status}: {first}" if first else f"HTTP {status}"


def _ssl_error_message(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {exc.verify_message or exc.reason or exc}"
    return f"TLS error: {exc.reason or exc}"


class _Deadline:
    """The time left of one probe; every blocking step gets only that."""

    def __init__(self, timeout_s: float) -> None:
        self.start = time.monotonic()
        self.end = self.start + timeout_s

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        return left

    def elapsed(self) -> float:
        return time.monotonic() - self.start


def _connect(backend: Backend, context: ssl.SSLContext, deadline: _Deadline) -> http.client.HTTPSConnection:
    """TCP connect and TLS handshake (certificate and IP SAN verified) within the deadline."""
    sock = socket.create_connection((backend.address, backend.port), timeout=deadline.left())
    try:
        sock.settimeout(deadline.left())
        tls = context.wrap_socket(sock, server_hostname=backend.address)
    except BaseException:
        sock.close()
        raise
    connection = http.client.HTTPSConnection(backend.address, backend.port, context=context)
    connection.sock = tls  # connected and verified: request() does not connect again
    return connection


def _exchange(connection: http.client.HTTPSConnection, path: str, deadline: _Deadline) -> tuple[int, bytes, bool]:
    """One ``GET`` on an open connection: ``(status, body, reusable)``."""
    sock = connection.sock
    sock.settimeout(deadline.left())
    connection.request("GET", path, headers={"User-Agent": USER_AGENT, "Accept": "text/plain"})
    sock.settimeout(deadline.left())
    response = connection.getresponse()
    sock.settimeout(deadline.left())
    body = response.read(MAX_BODY)
    return response.status, body, response.isclosed() and not response.will_close


def _verdict(backend: Backend, status: int, body: bytes, deadline: _Deadline) -> ProbeResult:
    if status == 200 and body.strip() == READY_BODY:
        return ProbeResult(backend, True, deadline.elapsed())
    return ProbeResult(backend, False, deadline.elapsed(), _readyz_failure(status, body))


def _failure(backend: Backend, exc: BaseException, settings: ProbeSettings, deadline: _Deadline) -> ProbeResult:
    if isinstance(exc, ConnectionRefusedError):
        return ProbeResult(backend, False, deadline.elapsed(), "connection refused", refused=True)
    if isinstance(exc, TimeoutError):
        error = f"timed out after {settings.timeout_s:g}s"
    elif isinstance(exc, ssl.SSLError):
        error = _ssl_error_message(exc)
    elif isinstance(exc, http.client.HTTPException):
        error = f"bad HTTP answer: {exc or type(exc).__name__}"
    else:
        error = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return ProbeResult(backend, False, deadline.elapsed(), error)


_PROBE_ERRORS = (OSError, http.client.HTTPException)  # ssl.SSLError and TimeoutError are OSErrors


def probe(backend: Backend, settings: ProbeSettings, context: ssl.SSLContext | None = None) -> ProbeResult:
    """``GET <path>`` on a new connection to ``backend``; ok only for status 200 with the body ``ok``.

    Never raises. One deadline bounds the whole probe: the connect, the TLS handshake, sending the request
    and reading the answer each get only the time left.
    """
    deadline = _Deadline(settings.timeout_s)
    try:
        context = context or ssl_context(settings)
    except ProxyError as exc:
        return ProbeResult(backend, False, deadline.elapsed(), str(exc))
    connection = None
    try:
        connection = _connect(backend, context, deadline)
        status, body, _reusable = _exchange(connection, settings.path, deadline)
    except _PROBE_ERRORS as exc:
        return _failure(backend, exc, settings, deadline)
    finally:
        if connection is not None:
            connection.close()
    return _verdict(backend, status, body, deadline)


def probe_all(
    backends: Iterable[Backend],
    settings: ProbeSettings,
    max_workers: int = 8,
    executor: Executor | None = None,
) -> dict[Backend, ProbeResult]:
    """Probe every backend concurrently on new connections; each probe is bounded by ``settings.timeout_s``.

    Without an ``executor`` a pool is made for this call. A daemon probing every second uses ``Prober``.
    """
    targets = sort_backends(backends)
    if not targets:
        return {}
    try:
        context = ssl_context(settings)
    except ProxyError as exc:
        return {b: ProbeResult(b, False, 0.0, str(exc)) for b in targets}
    pool = executor or ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(targets))))
    try:
        futures = {b: pool.submit(probe, b, settings, context) for b in targets}
        return {b: future.result() for b, future in futures.items()}
    finally:
        if executor is None:
            pool.shutdown(wait=False)


class Prober:
    """Probes like ``probe_all`` but keeps one HTTP/1.1 connection per backend between rounds.

    Probing every second on new connections would cost each apiserver one TLS handshake per node and
    second; a kept connection costs none. A kept connection that turns out to be dead (the apiserver
    restarted or was killed: reset, EOF) is replaced by a new one within the same deadline, so a killed
    apiserver is seen as "connection refused" at the next probe. A connection is dropped after a failed
    exchange, when the server closes it, and when the SSL context changes (a rotated certificate).
    """

    def __init__(self, executor: Executor | None = None, max_workers: int = 8) -> None:
        self._own = executor is None
        self._pool = executor or ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="probe")
        self._lock = threading.Lock()
        self._kept: dict[Backend, tuple[ssl.SSLContext, http.client.HTTPSConnection]] = {}

    def probe(self, backend: Backend, settings: ProbeSettings) -> ProbeResult:
        deadline = _Deadline(settings.timeout_s)
        try:
            context = ssl_context(settings)
        except ProxyError as exc:
            self._drop(backend)
            return ProbeResult(backend, False, deadline.elapsed(), str(exc))
        with self._lock:
            kept = self._kept.pop(backend, None)  # in use: nobody else touches it meanwhile
        if kept is not None and kept[0] is not context:
            kept[1].close()
            kept = None
        if kept is not None:
            try:
                return self._use(backend, context, kept[1], settings, deadline)
            except TimeoutError as exc:
                return _failure(backend, exc, settings, deadline)
            except _PROBE_ERRORS:
                pass  # the kept connection was dead: try a new one in the time left
        try:
            connection = _connect(backend, context, deadline)
            return self._use(backend, context, connection, settings, deadline)
        except _PROBE_ERRORS as exc:
            return _failure(backend, exc, settings, deadline)

    def _use(
        self,
        backend: Backend,
        context: ssl.SSLContext,
        connection: http.client.HTTPSConnection,
        settings: ProbeSettings,
        deadline: _Deadline,
    ) -> ProbeResult:
        try:
            status, body, reusable = _exchange(connection, settings.path, deadline)
        except BaseException:
            connection.close()
            raise
        result = _verdict(backend, status, body, deadline)
        if reusable:
            with self._lock:
                self._kept[backend] = (context, connection)
        else:
            connection.close()
        return result

    def _drop(self, backend: Backend) -> None:
        with self._lock:
            kept = self._kept.pop(backend, None)
        if kept is not None:
            kept[1].close()

    def probe_all(self, backends: Iterable[Backend], settings: ProbeSettings) -> dict[Backend, ProbeResult]:
        """Probe every backend concurrently; connections of backends no longer listed are closed."""
        targets = sort_backends(backends)
        with self._lock:
            gone = [b for b in self._kept if b not in targets]
        for backend in gone:
            self._drop(backend)
        futures = {b: self._pool.submit(self.probe, b, settings) for b in targets}
        return {b: future.result() for b, future in futures.items()}

    def kept(self) -> list[Backend]:
        """The backends with a connection kept open (for tests and diagnostics)."""
        with self._lock:
            return sort_backends(self._kept)

    def close(self) -> None:
        with self._lock:
            kept, self._kept = list(self._kept.values()), {}
        for _context, connection in kept:
            connection.close()
        if self._own:
            self._pool.shutdown(wait=False)


def tcp_check(backend: Backend, timeout_s: float) -> ProbeResult:
    """A bare TCP connect, closed at once with a reset (no TIME_WAIT left on the node). Never raises.

    It only tells "something listens" from "connection refused"; the TLS probe decides readiness.
    """
    start = time.monotonic()
    try:
        sock = socket.create_connection((backend.address, backend.port), timeout=timeout_s)
    except ConnectionRefusedError:
        return ProbeResult(backend, False, time.monotonic() - start, "connection refused", refused=True)
    except TimeoutError:
        error = f"connect unanswered after {timeout_s:g}s"
        return ProbeResult(backend, False, time.monotonic() - start, error, unanswered=True)
    except OSError as exc:
        return ProbeResult(backend, False, time.monotonic() - start, exc.strerror or str(exc))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    finally:
        sock.close()
    return ProbeResult(backend, True, time.monotonic() - start)


# --------------------------------------------------------------------------------------------------
# Health with hysteresis
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transition:
    """A backend changed state; ``reason`` completes ``backend 10.0.0.12:6443 up -> down: <reason>``."""

    backend: Backend
    old: str
    new: str
    reason: str

    def describe(self) -> str:
        return f"backend {self.backend} {self.old} -> {self.new}: {self.reason}"


class HealthTracker:
    """Per-backend up/down state with hysteresis.

    A backend never seen before is decided by its first probe (ok: up, failed: down). ``fall`` failures
    in a row take an up backend down, except a refused connection, which does at once; ``rise``
    successes in a row bring a down backend back. ``initial`` seeds states, e.g. from the last-good
    state file, so that a restart does not forget what was known.
    """

    def __init__(self, rise: int, fall: int, initial: Mapping[Backend, str] | None = None) -> None:
        self.rise = 1
        self.fall = 1
        self.reconfigure(rise, fall)
        self._state: dict[Backend, str] = {}
        self._successes: dict[Backend, int] = {}
        self._failures: dict[Backend, int] = {}
        for backend, state in (initial or {}).items():
            if state in (UP, DOWN):
                self._state[backend] = state

    def reconfigure(self, rise: int, fall: int) -> None:
        if isinstance(rise, bool) or not isinstance(rise, int) or rise < 1:
            raise ProxyError(f"rise {rise!r} is not a positive integer")
        if isinstance(fall, bool) or not isinstance(fall, int) or fall < 1:
            raise ProxyError(f"fall {fall!r} is not a positive integer")
        self.rise = rise
        self.fall = fall

    def state(self, backend: Backend) -> str:
        return self._state.get(backend, UNKNOWN)

    def health(self) -> dict[Backend, str]:
        return dict(self._state)

    def retain(self, backends: Iterable[Backend]) -> None:
        """Forget every backend not in ``backends`` (it left the set)."""
        keep = set(backends)
        for table in (self._state, self._successes, self._failures):
            for backend in [b for b in table if b not in keep]:
                del table[backend]

    def observe(self, results: Mapping[Backend, ProbeResult] | Iterable[ProbeResult]) -> list[Transition]:
        """Account for probe results; the transitions they cause, in backend order."""
        items = list(results.values()) if isinstance(results, Mapping) else list(results)
        transitions: list[Transition] = []
        for res in sorted(items, key=lambda r: r.backend.sort_key()):
            transition = self._observe_one(res)
            if transition is not None:
                transitions.append(transition)
        return transitions

    def _observe_one(self, res: ProbeResult) -> Transition | None:
        backend = res.backend
        old = self.state(backend)
        if res.ok:
            self._failures[backend] = 0
            self._successes[backend] = self._successes.get(backend, 0) + 1
            if old == UNKNOWN:
                return self._move(backend, old, UP, "ready")
            if old == DOWN and self._successes[backend] >= self.rise:
                return self._move(backend, old, UP, f"ready ({self._successes[backend]} successful probes in a row)")
            return None
        self._successes[backend] = 0
        self._failures[backend] = self._failures.get(backend, 0) + 1
        error = res.error or "probe failed"
        if old == UNKNOWN:
            return self._move(backend, old, DOWN, error)
        if old == UP and (res.refused or res.unreachable or self._failures[backend] >= self.fall):
            at_once = res.refused or res.unreachable
            reason = error if at_once else f"{error} ({self._failures[backend]} failed probes in a row)"
            return self._move(backend, old, DOWN, reason)
        return None

    def _move(self, backend: Backend, old: str, new: str, reason: str) -> Transition:
        self._state[backend] = new
        self._successes[backend] = 0
        self._failures[backend] = 0
        return Transition(backend, old, new, reason)


# --------------------------------------------------------------------------------------------------
# Weights and the IPVS virtual server
# --------------------------------------------------------------------------------------------------


def _canonical_set(addresses: Iterable[str]) -> set[str]:
    result = set()
    for address in addresses:
        try:
            result.add(str(ipaddress.ip_address(address)))
        except ValueError:
            continue
    return result


def has_local_backend(backends: Iterable[Backend], local_addresses: Iterable[str]) -> bool:
    local = _canonical_set(local_addresses)
    return any(b.address in local for b in backends)


def scheduler_for(prefer_local: bool, has_local: bool) -> str:
    """``fo`` (weighted failover: new connections go to the highest-weight available server) on a master
    that prefers its own apiserver; ``rr`` everywhere else."""
    return "fo" if prefer_local and has_local else "rr"


def desired_weights(
    backends: Iterable[Backend],
    health: Mapping[Backend, str],
    local_addresses: Iterable[str],
    prefer_local: bool,
) -> tuple[dict[Backend, int], bool]:
    """The weight of each backend, and whether the set fails open.

    Up: 1 (the local apiserver 2 with ``prefer_local``); down or not yet known: 0. When no backend is
    up, all are kept at weight 1 (``fail_open``): a wrong verdict, e.g. a broken CA file, must not
    black-hole the node, and there is no better place to send a connection anyway.
    """
    targets = sort_backends(backends)
    local = _canonical_set(local_addresses)
    up = [b for b in targets if health.get(b) == UP]
    if not up:
        return {b: 1 for b in targets}, bool(targets)
    weights = {}
    for backend in targets:
        if health.get(backend) != UP:
            weights[backend] = 0
        elif prefer_local and backend.address in local:
            weights[backend] = LOCAL_WEIGHT
        else:
            weights[backend] = 1
    return weights, False


def decide(
    backends: Iterable[Backend],
    health: Mapping[Backend, str],
    local_addresses: Iterable[str],
    prefer_local: bool,
) -> tuple[dict[Backend, int], set[int]]:
    """The weights of every backend, decided per address family, and the families (4, 6) that fail open.

    The one decision the guard's rounds and the module's check mode share.
    """
    backends = list(backends)
    local_addresses = tuple(local_addresses)
    weights: dict[Backend, int] = {}
    fail_open: set[int] = set()
    for version in (4, 6):
        family = [b for b in backends if b.version == version]
        if not family:
            continue
        family_weights, family_fail_open = desired_weights(family, health, local_addresses, prefer_local)
        weights.update(family_weights)
        if family_fail_open:
            fail_open.add(version)
    return weights, fail_open


def desired_service(vip: str, port: int, weights: Mapping[Backend, int], scheduler: str) -> Service:
    """The IPVS virtual server ``vip:port`` (TCP, NAT) with the backends of the VIP's address family."""
    version = ipaddress.ip_address(vip).version
    real_servers = tuple(
        RealServer(b.address, b.port, weight, "masquerade") for b, weight in weights.items() if b.version == version
    )
    return Service(address=vip, port=port, protocol="tcp", scheduler=scheduler, real_servers=real_servers)


# --------------------------------------------------------------------------------------------------
# haproxy
# --------------------------------------------------------------------------------------------------


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
    local = _canonical_set(local_addresses)
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
