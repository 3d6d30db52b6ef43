# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the kubeha.apiserver collection: this is NOT a public API. It backs the node-side guard
# (module_utils/_guard_daemon.py) and the kubeha.apiserver.apiserver_proxy and kubeha.apiserver.apiserver_readyz
# modules, and may change in any release without notice.

"""Probing a kube-apiserver: ``GET /readyz`` over HTTPS, verified against the cluster CA (with a client certificate
when one is configured, so probing works with ``--anonymous-auth=false``), under one hard deadline; the kept
connection of each backend (``Prober``); the fast TCP check of the guard's 250 ms loop; and ``wait_ready``, the
rounds of probes until every (or any) endpoint is ready, under an overall deadline (the playbooks' /readyz checks,
through the apiserver_readyz module).

Only the standard library is used, and nothing here imports ``ansible``: the guard runs these files on nodes as
plain Python.
"""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

from ansible_collections.kubeha.apiserver.plugins.module_utils._proxy import (
    Backend,
    ProbeResult,
    ProxyError,
    sort_backends,
)

USER_AGENT = "kubeha-apiserver-guard"
READY_BODY = b"ok"
MAX_BODY = 4096  # /readyz answers "ok"; a failing one lists its checks, a few hundred bytes


@dataclass(frozen=True)
class ProbeSettings:
    """How to probe: the cluster CA, an optional client certificate and key, a hard timeout, the path.

    ``server_name``: the name the served certificate must carry (and the TLS SNI); ``None`` for the probed
    address itself, as an IP SAN. A VIP, which not every certificate names, is probed as ``kubernetes``.
    """

    ca_file: str
    client_cert_file: str | None = None
    client_key_file: str | None = None
    timeout_s: float = 1.0
    path: str = "/readyz"
    server_name: str | None = None

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
            entry = self._entries.get(settings)
            if entry is not None and entry[0] == stamp:
                # Another probe built one meanwhile: keep that one, whose connections may already be open (a second
                # context would make the next round reconnect them).
                return entry[1]
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


def _connect(
    backend: Backend, context: ssl.SSLContext, deadline: _Deadline, server_name: str | None = None
) -> http.client.HTTPSConnection:
    """TCP connect and TLS handshake (certificate and IP SAN, or ``server_name``, verified) within the deadline."""
    sock = socket.create_connection((backend.address, backend.port), timeout=deadline.left())
    try:
        sock.settimeout(deadline.left())
        tls = context.wrap_socket(sock, server_hostname=server_name or backend.address)
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
        connection = _connect(backend, context, deadline, settings.server_name)
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
            connection = _connect(backend, context, deadline, settings.server_name)
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
# Waiting until endpoints are ready (the apiserver_readyz module)
# --------------------------------------------------------------------------------------------------

REQUIREMENTS = ("all", "any")


@dataclass(frozen=True)
class ReadyWait:
    """What ``wait_ready`` saw: the last probe of each backend and how many rounds probed it, whether the
    requirement held at the end, and the seconds it took."""

    results: dict[Backend, ProbeResult]
    attempts: dict[Backend, int]
    satisfied: bool
    elapsed_s: float

    def ready(self) -> list[Backend]:
        return [backend for backend, result in self.results.items() if result.ok]

    def not_ready(self) -> list[Backend]:
        return [backend for backend, result in self.results.items() if not result.ok]


def requirement_met(ready: int, total: int, require: str) -> bool:
    """``all``: every backend is ready (none at all counts as met); ``any``: at least one is."""
    return ready == total if require == "all" else ready > 0


def wait_ready(
    backends: Iterable[Backend],
    settings: ProbeSettings,
    wait_s: float,
    require: str = "all",
    interval_s: float = 1.0,
    max_workers: int = 8,
) -> ReadyWait:
    """Probe in rounds until the requirement holds or ``wait_s`` seconds have passed; never raises for a probe.

    Each round probes concurrently (``probe_all``, new connections) the backends that have not answered ready yet: a
    backend that answered ready once counts as ready and is not probed again. Rounds are ``interval_s`` apart (the
    pause is cut to the time left); ``wait_s=0`` probes once. A round starts only before the deadline and each probe
    is bounded by ``settings.timeout_s``, so the whole takes at most ``wait_s + settings.timeout_s``.
    """
    if require not in REQUIREMENTS:
        raise ValueError(f"require must be one of {', '.join(REQUIREMENTS)}, not {require!r}")
    if wait_s < 0 or interval_s <= 0:
        raise ValueError(f"wait_s must be >= 0 and interval_s > 0, not {wait_s!r} and {interval_s!r}")
    targets = sort_backends(backends)
    start = time.monotonic()
    results: dict[Backend, ProbeResult] = {}
    attempts = dict.fromkeys(targets, 0)
    if not targets:
        return ReadyWait(results, attempts, requirement_met(0, 0, require), 0.0)
    end = start + wait_s
    pool = ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(targets))), thread_name_prefix="readyz")
    try:
        while True:
            pending = [backend for backend in targets if backend not in results or not results[backend].ok]
            results.update(probe_all(pending, settings, executor=pool))
            for backend in pending:
                attempts[backend] += 1
            satisfied = requirement_met(sum(results[b].ok for b in targets), len(targets), require)
            left = end - time.monotonic()
            if satisfied or left <= 0:
                break
            time.sleep(min(interval_s, left))
    finally:
        pool.shutdown(wait=False)
    ordered = {backend: results[backend] for backend in targets}
    return ReadyWait(ordered, attempts, satisfied, time.monotonic() - start)
