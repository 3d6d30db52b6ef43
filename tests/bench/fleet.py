"""What N nodes' health checks cost each apiserver: N simulated nodes in one process, probing real apiservers.

    PYTHONPATH=.build/test-collections .venv/bin/python tests/bench/fleet.py --pattern guard --nodes 100 --seconds 60 \\
        --servers https://A:6443 --servers https://B:6443 --ca-cert CA.crt --ca-key CA.key --cert-dir DIR

Patterns (--pattern, one per run), each node checking every apiserver of --servers:
- guard: the collection's node guard, by its OWN code (plugins/module_utils): every ``interval_s`` a round of
  ``Prober.probe_all`` (GET /readyz on one kept HTTP/1.1 connection per apiserver, ``timeout_s``), every
  ``fast_check_interval_s`` the guard's connector (``tcp_check``: a TCP connect closed with a reset) to each apiserver
  the node's ``HealthTracker`` holds up, every ``discovery.interval_s`` the guard's discoverer
  (``discover_backends``: a new TLS connection and GET of the ``kubernetes`` EndpointSlice in ``default``, from the
  first apiserver that is up) whose answer, admitted by ``admit_discovered``, becomes the node's backend set with
  the seeds, as in the guard (less its wait of a few answers before a backend leaves).
  The intervals and timeouts are the guard's configuration defaults (``parse_config`` of a minimal
  configuration, with discovery on as the local_proxy role sets it). Each node presents its own client
  certificate (CN ``system:node:fleet-sim-<i>``, O ``system:nodes``), signed by --ca-key, to both the probes and
  discovery, as a node's guard presents the kubelet's. The data path is not simulated (nothing on this machine
  changes).
- kubespray-haproxy: kubespray's haproxy localhost load balancer (``option httpchk GET /healthz``, ``check
  check-ssl verify none``, ``inter 15s``): every 15 s per apiserver a new TLS connection (no client certificate, the
  server not verified, no session resumption: a full handshake, haproxy's worst case) and GET /healthz, then closed.
- lvscare: sealos lvscare: every 5 s per apiserver a new TLS connection (unverified, no client certificate) and
  GET /healthz, then closed.
- kubeprism: Talos KubePrism: every 20 s per apiserver a plain TCP connect, closed at once (no TLS, no request).

The anchors' checks of one node are independent per apiserver (their own timers), the guard's are one round per
node, as in each program. Every periodic step of every node starts at a random phase within its interval (seeded
by --seed, stratified so that N nodes' first steps cover the interval uniformly), then runs at a fixed rate
(``next_due`` of the guard: no bursts to catch up): the load N independent nodes make. A step that starts more than
half an interval after it was due is late; "late_rounds" counts them and their share, and "kept_up" is false when
more than 1% were late (the exit status is then 3): the figure of such a run is not the cost of N nodes, the
simulator could not drive them.

At the end one JSON object goes to stdout: requests sent per kind (counted on the wire: every GET written on a TLS
connection of this process, by path; TCP checks counted per connect), TLS handshakes made (client side, counted by
the ``ssl`` module's socket class for the run), errors by kind with a few samples, late rounds, the connections
established at the end (kept ones), the simulator's own CPU seconds and peak RSS. The run stops by itself after
--seconds (at most 600; a step already started finishes, within its own timeout) and closes every connection.

``extrapolate``, ``per_node`` and ``table`` turn the apiserver-side measurements (the harness's) into the table.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import heapq
import http.client
import itertools
import json
import os
import random
import resource
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The collection must be importable: fleet_bench.py runs this with the lab's collections path on PYTHONPATH
# (tests/lab/scenarios.py collections_path), the unit tests with tests/unit/conftest.py's.
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_config import GuardConfig, parse_config
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_daemon import (
    connect_verdicts,
    next_due,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_discovery import (
    ENDPOINTSLICES_PATH,
    admit_discovered,
    backend_set,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_hooks import Hooks
from ansible_collections.kubeha.apiserver.plugins.module_utils._probe import Prober, ssl_context
from ansible_collections.kubeha.apiserver.plugins.module_utils._proxy import (
    UP,
    Backend,
    HealthTracker,
    ProbeResult,
    ProxyError,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


MAX_NODES = 5000
MAX_SECONDS = 600.0
KEEP_UP_SHARE = 0.01  # more late steps than this share: the simulator could not drive the nodes
KINDS = ("readyz", "healthz", "tcp", "discovery")
ERROR_SAMPLES = 3  # distinct error messages kept per kind
ANCHOR_TIMEOUT_S = 2.0  # the anchors' check timeout: it matters only when an apiserver fails, not for the cost
VIP = "169.254.100.1"  # the simulated guards' VIP: only parse_config sees it (no data path is simulated)
NODE_NAME = "fleet-sim-{index}"
CERT_DAYS = 30
CERT_MARKER = "fleet-ca.json"


@dataclass(frozen=True)
class Anchor:
    """Another project's health check, as simple standard-library code: its interval and what each check opens."""

    interval_s: float
    path: str | None  # GET this on a new unverified TLS connection; None: a bare TCP connect, closed at once
    what: str


ANCHORS = {
    "kubespray-haproxy": Anchor(15.0, "/healthz", "new TLS connection + GET /healthz every 15 s (haproxy httpchk)"),
    "lvscare": Anchor(5.0, "/healthz", "new TLS connection + GET /healthz every 5 s (sealos lvscare)"),
    "kubeprism": Anchor(20.0, None, "plain TCP connect, closed at once, every 20 s (Talos KubePrism)"),
}
PATTERNS = ("guard", *ANCHORS)


# --------------------------------------------------------------------------------------------------
# Pure parts: phases, lateness, the table
# --------------------------------------------------------------------------------------------------


def phases(count: int, interval_s: float, rng: random.Random) -> list[float]:
    """``count`` first due times in ``[0, interval_s)``: one in each of ``count`` equal slots, the slots dealt to
    the nodes in a random order and each time random within its slot (so N nodes cover the interval uniformly)."""
    slots = list(range(count))
    rng.shuffle(slots)
    return [interval_s * (slot + rng.random()) / count for slot in slots]


def is_late(due: float, started: float, interval_s: float) -> bool:
    """A step is late when it started more than half an interval after it was due."""
    return started - due > interval_s / 2


class Lateness:
    """Steps run and steps late, per kind; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.total: Counter[str] = Counter()
        self.late: Counter[str] = Counter()
        self.worst_s = 0.0
        self.skipped = 0  # late steps not run at all: their time came after the end of the run

    def skip(self) -> None:
        with self._lock:
            self.skipped += 1

    def record(self, kind: str, interval_s: float, due: float, started: float) -> bool:
        late = is_late(due, started, interval_s)
        with self._lock:
            self.total[kind] += 1
            self.worst_s = max(self.worst_s, started - due)
            if late:
                self.late[kind] += 1
        return late

    def summary(self) -> dict[str, Any]:
        with self._lock:
            total, late = sum(self.total.values()), sum(self.late.values())
            return {
                "count": late,
                "total": total,
                "share": round(late / total, 4) if total else 0.0,
                "worst_s": round(self.worst_s, 3),
                "skipped_after_end": self.skipped,
                "by_kind": {k: {"late": self.late[k], "total": n} for k, n in sorted(self.total.items())},
            }

    def kept_up(self) -> bool:
        with self._lock:
            total = sum(self.total.values())
            return not total or sum(self.late.values()) / total <= KEEP_UP_SHARE


def extrapolate(points: list[tuple[int, float]], n: int) -> float:
    """The cost at ``n`` nodes on the least-squares line through ``(nodes, cost)`` points.

    One distinct node count gives no slope: the cost is then taken as proportional (the line through the origin).
    """
    if not points:
        raise ValueError("no points to extrapolate from")
    xs = [float(x) for x, _y in points]
    ys = [float(y) for _x, y in points]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        if mean_x == 0:
            raise ValueError("every point is at 0 nodes: no line")
        return mean_y / mean_x * n
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread
    return mean_y + slope * (n - mean_x)


def per_node(cost: float | None, nodes: int) -> float | None:
    """The cost one node adds (``None`` stays ``None``)."""
    if nodes <= 0:
        raise ValueError(f"nodes must be positive, not {nodes}")
    return None if cost is None else cost / nodes


COLUMNS = (
    ("pattern", "pattern"),
    ("nodes", "nodes"),
    ("cpu_cores_per_apiserver", "cpu cores/apiserver"),
    ("requests_per_s", "requests/s"),
    ("new_connections_per_s", "new conns/s"),
    ("accepted_per_s", "accepted/s"),
    ("established", "established"),
    ("rss_mb", "RSS MB"),
    ("log_lines_per_min", "log lines/min"),
    ("kept_up", "kept up"),
)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def table(rows: Sequence[dict[str, Any]], file: Any = None) -> str:
    """The rows as an aligned text table (a missing or ``None`` value is ``-``); printed to ``file`` when given."""
    cells = [[title for _key, title in COLUMNS]]
    cells += [[_cell(row.get(key)) for key, _title in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = []
    for number, line in enumerate(cells):
        text = [line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True)]
        lines.append("  ".join(text).rstrip())
        if number == 0:
            lines.append("  ".join("-" * w for w in widths))
    out = "\n".join(lines) + "\n"
    if file is not None:
        file.write(out)
    return out


# --------------------------------------------------------------------------------------------------
# Counting: requests on the wire, handshakes, errors
# --------------------------------------------------------------------------------------------------


class Stats:
    """What the run did, counted from every thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter(dict.fromkeys(KINDS, 0))
        self.errors: Counter[str] = Counter(dict.fromkeys((*KINDS, "internal"), 0))
        self.samples: dict[str, list[str]] = {}
        self.handshakes = 0
        self.handshake_failures = 0

    def request(self, kind: str, count: int = 1) -> None:
        with self._lock:
            self.requests[kind] += count

    def error(self, kind: str, message: str) -> None:
        with self._lock:
            self.errors[kind] += 1
            kept = self.samples.setdefault(kind, [])
            if message not in kept and len(kept) < ERROR_SAMPLES:
                kept.append(message)

    def results(self, kind: str, results: Sequence[ProbeResult]) -> None:
        for res in results:
            if not res.ok:
                self.error(kind, f"{res.backend}: {res.error}")

    def handshake(self, ok: bool) -> None:
        with self._lock:
            if ok:
                self.handshakes += 1
            else:
                self.handshake_failures += 1


def request_kind(path: str) -> str:
    path = path.split("?", 1)[0]
    if path == "/readyz":
        return "readyz"
    if path == "/healthz":
        return "healthz"
    if path == ENDPOINTSLICES_PATH:
        return "discovery"
    return "other"


@contextlib.contextmanager
def counting_tls(stats: Stats) -> Iterator[None]:
    """For the block, every client-side TLS socket of this process counts its handshakes and the GETs it writes
    (``SSLContext.sslsocket_class``, the ``ssl`` module's own hook); server-side sockets are left out."""

    class CountingSSLSocket(ssl.SSLSocket):
        def do_handshake(self, block: bool = False) -> None:
            if self.server_side:
                return super().do_handshake(block)
            try:
                super().do_handshake(block)
            except BaseException:
                stats.handshake(False)
                raise
            stats.handshake(True)
            return None

        def sendall(self, data: Any, flags: int = 0) -> None:
            if not self.server_side:
                head = bytes(data[:512])
                if head.startswith(b"GET "):
                    stats.request(request_kind(head.split(b" ", 2)[1].decode("latin-1")))
            return super().sendall(data, flags)

    saved = ssl.SSLContext.sslsocket_class
    ssl.SSLContext.sslsocket_class = CountingSSLSocket
    try:
        yield
    finally:
        ssl.SSLContext.sslsocket_class = saved


# --------------------------------------------------------------------------------------------------
# Node certificates
# --------------------------------------------------------------------------------------------------


def node_certificates(ca_cert: Path, ca_key: Path, cert_dir: Path, count: int) -> list[tuple[Path, Path]]:
    """A client certificate and key for each of ``count`` nodes (CN ``system:node:fleet-sim-<i>``, O
    ``system:nodes``), signed by the CA; kept in ``cert_dir`` and reused by the next run while they are from the
    same CA and valid for a day more (only missing ones are made)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_pem = ca_cert.read_bytes()
    fingerprint = hashlib.sha256(ca_pem).hexdigest()
    cert_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    marker = cert_dir / CERT_MARKER
    now = datetime.datetime.now(datetime.UTC)
    try:
        known = json.loads(marker.read_text())
        reuse = (
            known["ca_sha256"] == fingerprint and known["not_after"] > (now + datetime.timedelta(days=1)).timestamp()
        )
    except (OSError, ValueError, KeyError, TypeError):
        reuse = False
    paths = [
        (cert_dir / f"{NODE_NAME.format(index=i)}.crt", cert_dir / f"{NODE_NAME.format(index=i)}.key")
        for i in range(count)
    ]
    missing = [i for i, (crt, key) in enumerate(paths) if not reuse or not crt.exists() or not key.exists()]
    if not missing:
        return paths
    if not reuse:
        not_after = now + datetime.timedelta(days=CERT_DAYS)
        missing = list(range(count))
    else:
        not_after = datetime.datetime.fromtimestamp(known["not_after"], datetime.UTC)
    ca = x509.load_pem_x509_certificate(ca_pem)
    signer = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    algorithm = None if isinstance(signer, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey) else hashes.SHA256()
    for index in missing:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{NODE_NAME.format(index=index)}"),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False)
            .sign(signer, algorithm)
        )
        crt_path, key_path = paths[index]
        _write(crt_path, cert.public_bytes(serialization.Encoding.PEM))
        _write(
            key_path,
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )
    _write(marker, json.dumps({"ca_sha256": fingerprint, "not_after": not_after.timestamp()}).encode())
    return paths


def _write(path: Path, data: bytes) -> None:
    """Atomically, readable by the owner only (a key among them)."""
    partial = path.with_name(path.name + ".part")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(partial, path)


# --------------------------------------------------------------------------------------------------
# The nodes
# --------------------------------------------------------------------------------------------------


@dataclass
class Task:
    """One periodic step of one node."""

    kind: str
    interval_s: float
    step: Callable[[], None]


def guard_config(
    servers: Sequence[Backend], ca_file: str, cert: str, key: str, overrides: dict[str, Any] | None = None
) -> GuardConfig:
    """A node guard's configuration through the guard's own parser: every interval and timeout its default
    (``overrides``, for tests, go through the same parser and its bounds)."""
    doc: dict[str, Any] = {
        "vip": VIP,
        "mode": "haproxy",  # the one mode that admits discovered backends of either address family
        "seeds": [b.endpoint for b in servers],
        "ca_file": ca_file,
        "client_cert_file": cert,
        "client_key_file": key,
        "discovery": {"enabled": True},
    }
    for name, value in (overrides or {}).items():
        doc[name] = {**doc[name], **value} if isinstance(value, dict) and isinstance(doc.get(name), dict) else value
    return parse_config(doc, "fleet")


class GuardNode:
    """One node's guard, driven by the guard's own code: ``Guard.run_round``, ``Guard._fast_connects`` and
    ``Guard.discover_once`` (plugins/module_utils/_guard_daemon.py) without the data path."""

    def __init__(self, cfg: GuardConfig, io_pool: ThreadPoolExecutor, stats: Stats) -> None:
        self.cfg = cfg
        self.settings = cfg.probe_settings()
        # The node's SSL context made now, as in a guard that has been running: the guard's cache builds it on
        # first use, and two first probes at once may each build one, the later round then reconnecting once.
        with contextlib.suppress(ProxyError):  # unreadable files: every probe reports it, counted
            ssl_context(self.settings)
        self.hooks = Hooks()  # the guard's own connector (tcp_check) and discoverer (discover_backends)
        self.io_pool = io_pool
        self.stats = stats
        self.prober = Prober(executor=io_pool)  # one kept connection per apiserver, as the guard's
        self.tracker = HealthTracker(cfg.rise, cfg.fall)
        self.backends = backend_set(cfg.seeds, ())
        self.unanswered: dict[Backend, int] = {}
        self.lock = threading.Lock()

    def tasks(self) -> list[Task]:
        tasks = [Task("readyz", self.cfg.interval_s, self.probe_round)]
        if self.cfg.fast_check_interval_s > 0:
            tasks.append(Task("tcp", self.cfg.fast_check_interval_s, self.fast_check))
        if self.cfg.discovery.enabled:
            tasks.append(Task("discovery", self.cfg.discovery.interval_s, self.discover))
        return tasks

    def up(self) -> list[Backend]:
        with self.lock:
            return [b for b in self.backends if self.tracker.state(b) == UP]

    def probe_round(self) -> None:
        with self.lock:
            backends = self.backends
        results = list(self.prober.probe_all(backends, self.settings).values())
        self.stats.results("readyz", results)
        with self.lock:
            self.tracker.observe([r for r in results if r.backend in self.backends])

    def fast_check(self) -> None:
        targets = self.up()
        if not targets:
            return
        timeout = self.cfg.connect_timeout_s
        results = list(self.io_pool.map(lambda b: self.hooks.connector(b, timeout), targets))
        self.stats.request("tcp", len(results))
        self.stats.results("tcp", results)
        with self.lock:  # the guard's own rule (Guard._fast_connects)
            verdicts = connect_verdicts(results, self.unanswered, self.cfg.fall, timeout)
            if verdicts:
                self.tracker.observe(verdicts)

    def discover(self) -> None:
        servers = self.up()
        if not servers:
            return  # as the guard: no apiserver up, no discovery
        try:
            found = self.hooks.discoverer(self.cfg, servers)
        except Exception as exc:  # the guard logs it and keeps its backends
            self.stats.error("discovery", str(exc))
            return
        admitted, _refused = admit_discovered(found, self.cfg)
        with self.lock:
            self.backends = backend_set(self.cfg.seeds, admitted)
            self.tracker.retain(self.backends)

    def established(self) -> int:
        return len(self.prober.kept())

    def close(self) -> None:
        self.prober.close()


class AnchorNode:
    """One node of an anchor pattern: an independent check of each apiserver every ``anchor.interval_s``."""

    def __init__(self, anchor: Anchor, servers: Sequence[Backend], context: ssl.SSLContext, stats: Stats) -> None:
        self.anchor = anchor
        self.servers = list(servers)
        self.context = context
        self.stats = stats

    def tasks(self) -> list[Task]:
        kind = "tcp" if self.anchor.path is None else "healthz"
        return [Task(kind, self.anchor.interval_s, self._check(server)) for server in self.servers]

    def _check(self, server: Backend) -> Callable[[], None]:
        return lambda: self.check(server)

    def check(self, server: Backend) -> None:
        if self.anchor.path is None:
            self.stats.request("tcp")
            try:
                socket.create_connection((server.address, server.port), timeout=ANCHOR_TIMEOUT_S).close()
            except OSError as exc:
                self.stats.error("tcp", f"{server}: {exc.strerror or exc}")
            return
        connection = http.client.HTTPSConnection(
            server.address, server.port, timeout=ANCHOR_TIMEOUT_S, context=self.context
        )
        try:
            connection.request("GET", self.anchor.path, headers={"User-Agent": "fleet-sim"})
            response = connection.getresponse()
            response.read(4096)
            if response.status != 200:
                self.stats.error("healthz", f"{server}: HTTP {response.status}")
        except (OSError, http.client.HTTPException) as exc:
            self.stats.error("healthz", f"{server}: {getattr(exc, 'strerror', None) or exc or type(exc).__name__}")
        finally:
            connection.close()

    def established(self) -> int:
        return 0

    def close(self) -> None:
        return


def unverified_context() -> ssl.SSLContext:
    """What haproxy's ``check-ssl verify none`` and lvscare's ``InsecureSkipVerify`` do: TLS, nothing verified."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


# --------------------------------------------------------------------------------------------------
# The scheduler
# --------------------------------------------------------------------------------------------------


@dataclass
class Scheduler:
    """Runs every task at its due times until ``seconds`` have passed: the first at the task's phase, then at a
    fixed rate (the guard's ``next_due``); one task never overlaps itself, as a node's loop. Steps run on a pool of
    ``workers`` threads; one that starts more than half an interval late is counted late, and is not run at all
    when the end has come meanwhile (a backlog does not prolong the run). An exception out of a step is counted as
    an ``internal`` error, never raised."""

    workers: int
    lateness: Lateness = field(default_factory=Lateness)
    stats: Stats = field(default_factory=Stats)

    def __post_init__(self) -> None:
        self._cv = threading.Condition()
        self._heap: list[tuple[float, int, Task]] = []
        self._seq = itertools.count()
        self._end = 0.0

    def run(self, tasks: Sequence[tuple[float, Task]], seconds: float) -> float:
        """``tasks`` as (phase, task); returns the seconds it took, the last started steps included."""
        start = time.monotonic()
        self._end = start + seconds
        with self._cv:
            for phase, task in tasks:
                heapq.heappush(self._heap, (start + phase, next(self._seq), task))
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="node")
        try:
            while True:
                with self._cv:
                    item = self._next()
                if item is None:
                    break
                pool.submit(self._execute, *item)
        finally:
            pool.shutdown(wait=True)
        return time.monotonic() - start

    def _next(self) -> tuple[float, Task] | None:
        """The next task due (waiting for it), or None once the end has come and nothing is due before it."""
        while True:
            now = time.monotonic()
            if self._heap and self._heap[0][0] < self._end:
                if self._heap[0][0] <= now:
                    due, _seq, task = heapq.heappop(self._heap)
                    return due, task
                self._cv.wait(self._heap[0][0] - now)
            elif now >= self._end:
                return None
            else:
                self._cv.wait(self._end - now)  # a running step may still schedule one before the end

    def _execute(self, due: float, task: Task) -> None:
        started = time.monotonic()
        if self.lateness.record(task.kind, task.interval_s, due, started) and started >= self._end:
            self.lateness.skip()  # a backlog left at the end is not worked off: the run stops on time
            return
        try:
            task.step()
        except Exception as exc:
            self.stats.error("internal", f"{task.kind}: {type(exc).__name__}: {exc}")
        with self._cv:
            heapq.heappush(self._heap, (next_due(due, task.interval_s, time.monotonic()), next(self._seq), task))
            self._cv.notify()


def schedule(nodes: Sequence[Any], seed: int) -> list[tuple[float, Task]]:
    """Every node's tasks with their phases: for each kind of task, stratified over its interval (``phases``)."""
    rng = random.Random(seed)
    by_kind: dict[str, list[Task]] = {}
    for node in nodes:
        for task in node.tasks():
            by_kind.setdefault(task.kind, []).append(task)
    planned = []
    for kind in sorted(by_kind):
        tasks = by_kind[kind]
        planned += list(zip(phases(len(tasks), tasks[0].interval_s, rng), tasks, strict=True))
    return planned


# --------------------------------------------------------------------------------------------------
# A run
# --------------------------------------------------------------------------------------------------


def parse_server(url: str) -> Backend:
    """``https://A:6443`` (or ``https://[fd00::1]:6443``, port 6443 when absent) as a ``Backend``."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"{url!r} is not an https://ADDRESS:PORT URL")
    return Backend(parts.hostname, parts.port or 6443)


def run(
    pattern: str,
    servers: Sequence[Backend],
    nodes: int,
    seconds: float,
    *,
    ca_cert: Path | None = None,
    ca_key: Path | None = None,
    cert_dir: Path | None = None,
    seed: int = 1,
    workers: int = 64,
    guard_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Simulate ``nodes`` nodes of ``pattern`` against ``servers`` for ``seconds``; what they did, as a dict."""
    if pattern not in PATTERNS:
        raise ValueError(f"pattern {pattern!r} is not one of {', '.join(PATTERNS)}")
    if not 1 <= nodes <= MAX_NODES:
        raise ValueError(f"nodes {nodes} is out of range 1..{MAX_NODES}")
    if not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"seconds {seconds} is out of range (0, {MAX_SECONDS:g}]")
    if not servers:
        raise ValueError("no server to probe")
    scheduler = Scheduler(workers)
    stats = scheduler.stats
    io_pool = ThreadPoolExecutor(max_workers=workers * len(servers), thread_name_prefix="io")
    members: list[Any] = []
    intervals: dict[str, float] = {}
    if pattern == "guard":
        if ca_cert is None or ca_key is None or cert_dir is None:
            raise ValueError("the guard pattern needs ca_cert, ca_key and cert_dir (its nodes' client certificates)")
        certs = node_certificates(ca_cert, ca_key, cert_dir, nodes)
        for cert, key in certs:
            cfg = guard_config(
                servers, str(ca_cert.resolve()), str(cert.resolve()), str(key.resolve()), guard_overrides
            )
            members.append(GuardNode(cfg, io_pool, stats))
    else:
        context = unverified_context()
        members = [AnchorNode(ANCHORS[pattern], servers, context, stats) for _node in range(nodes)]
    for task in members[0].tasks():
        intervals[task.kind] = task.interval_s
    planned = schedule(members, seed)
    before = resource.getrusage(resource.RUSAGE_SELF)
    established = 0
    try:
        with counting_tls(stats):
            elapsed = scheduler.run(planned, seconds)
            established = sum(member.established() for member in members)
    finally:
        for member in members:
            member.close()
        io_pool.shutdown(wait=True)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    requests = {kind: stats.requests[kind] for kind in KINDS}
    http_requests = sum(requests.values()) - requests["tcp"]
    new_connections = stats.handshakes + stats.handshake_failures + requests["tcp"]
    return {
        "pattern": pattern,
        "nodes": nodes,
        "seconds": seconds,
        "elapsed_s": round(elapsed, 3),
        "servers": [str(s) for s in servers],
        "intervals_s": intervals,
        "requests": requests,
        "tls_handshakes": stats.handshakes,
        "tls_handshake_failures": stats.handshake_failures,
        "errors": dict(stats.errors),
        "error_samples": stats.samples,
        "late_rounds": scheduler.lateness.summary(),
        "kept_up": scheduler.lateness.kept_up(),
        "established_at_end": established,
        "per_apiserver": {
            "requests_per_s": round(http_requests / elapsed / len(servers), 3),
            "new_connections_per_s": round(new_connections / elapsed / len(servers), 3),
        },
        "sim_cpu_s": round(cpu, 3),
        "sim_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "workers": workers,
        "seed": seed,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", maxsplit=1)[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--pattern", required=True, choices=PATTERNS)
    parser.add_argument("--nodes", type=int, default=100, help=f"simulated nodes (1..{MAX_NODES})")
    parser.add_argument("--seconds", type=float, default=60.0, help=f"run length (at most {MAX_SECONDS:g})")
    parser.add_argument("--servers", action="append", default=[], metavar="URL", help="https://A:6443 (repeatable)")
    parser.add_argument("--ca-cert", type=Path, help="the cluster CA certificate (guard: verifies and signs)")
    parser.add_argument("--ca-key", type=Path, help="the cluster CA key (guard: signs the nodes' certificates)")
    parser.add_argument(
        "--cert-dir",
        type=Path,
        default=REPO_ROOT / ".build" / "fleet-certs",
        help="where the nodes' certificates are kept between runs (default .build/fleet-certs)",
    )
    parser.add_argument("--seed", type=int, default=1, help="the nodes' phases")
    parser.add_argument("--workers", type=int, default=64, help="threads running the nodes' steps (1..1024)")
    parser.add_argument(
        "--guard-set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="a guard configuration key set for every node (e.g. fast_check_interval_s=0), through the guard's parser",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.nodes <= MAX_NODES:
        parser.error(f"--nodes {args.nodes} is out of range 1..{MAX_NODES}")
    if not 0 < args.seconds <= MAX_SECONDS:
        parser.error(f"--seconds {args.seconds:g} is out of range (0, {MAX_SECONDS:g}]")
    if not 1 <= args.workers <= 1024:
        parser.error(f"--workers {args.workers} is out of range 1..1024")
    if not args.servers:
        parser.error("--servers is required (repeatable)")
    try:
        servers = [parse_server(url) for url in args.servers]
    except ValueError as exc:
        parser.error(str(exc))
    overrides: dict[str, Any] = {}
    for item in args.guard_set:
        name, _equals, value = item.partition("=")
        try:
            overrides[name] = json.loads(value)
        except ValueError:
            parser.error(f"--guard-set {item!r}: the value after '=' must be JSON (a number, true, a string in quotes)")
    if args.pattern == "guard" and (args.ca_cert is None or args.ca_key is None):
        parser.error("--pattern guard needs --ca-cert and --ca-key (the nodes' client certificates)")
    result = run(
        args.pattern,
        servers,
        args.nodes,
        args.seconds,
        ca_cert=args.ca_cert,
        ca_key=args.ca_key,
        cert_dir=args.cert_dir,
        seed=args.seed,
        workers=args.workers,
        guard_overrides=overrides,
    )
    print(json.dumps(result), flush=True)
    if not result["kept_up"]:
        late = result["late_rounds"]
        print(
            f"fleet: could not keep up with {args.nodes} nodes: {late['count']} of {late['total']} steps "
            f"({late['share']:.1%}) started more than half an interval late; do not use this run's figures",
            file=sys.stderr,
        )
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
