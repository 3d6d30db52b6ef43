# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to the kubeha.apiserver collection: not a public API, may change without notice.
"""The guard's metrics (Prometheus text) and its ``/metrics`` and ``/healthz`` endpoint."""

from __future__ import annotations

import http.server
import socket
import threading
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ansible_collections.kubeha.apiserver.plugins.module_utils._proxy import DOWN, UP, Backend, sort_backends


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
    repairs: int = 0


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
    family(
        "kubeha_apiserver_datapath_repairs_total",
        "counter",
        "Times the data path was found changed by someone else (kube-proxy, a flushed ruleset) and restored.",
        [("", snap.repairs)],
    )
    return "\n".join(lines) + "\n"


class Observed(Protocol):
    """What the endpoint asks of the guard."""

    def snapshot(self) -> MetricsSnapshot: ...

    def healthy(self) -> tuple[bool, str]: ...


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

    def __init__(self, guard: Observed, address: str, port: int) -> None:
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
