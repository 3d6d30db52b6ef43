# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the kubeha.apiserver collection: this is NOT a public API. It is the node-side guard
# daemon installed and run by the local_proxy role, and may change in any release without notice.

"""The guard: keeps a node's virtual address (VIP:port) pointed at the kube-apiservers that are ready.

Longer than 500 lines on purpose: it is one class, ``Guard``, whose steps (start-up, probe rounds, fast checks,
discovery, reload, serving) share one state under one lock (the backends and their health, the last decision, the
errors being reported); cut in parts, each would reach into the others' attributes. What stands apart lives apart:
the command line and ``--cleanup`` in ``_guard_cli``, the data path of each mode in ``_datapath_modes``.

One main loop, every ``interval_s``: probe every backend's ``/readyz`` -> hysteresis -> weights (``_proxy.decide``)
-> the data path of the configured mode plans and applies them (``_datapath_ipvs``, ``_datapath_nftables``,
``_datapath_haproxy``) -> close the connections of backends that went down -> state file (``_guard_state``) ->
metrics (``_guard_metrics``). Beside it, small threads: a fast TCP check every ``fast_check_interval_s`` that takes
a backend down at once when its connect is refused (the apiserver died) or when ``fall`` connects in a row get no
answer within ``connect_timeout_s`` (the host died or is black-holed); a kernel data path does not retry another
backend, so this bounds the failed requests after a master fails. Then discovery of the masters
(``_guard_discovery``), and the metrics endpoint. Every change of the data path happens under one lock.

SIGHUP reloads the configuration (an invalid one is logged and the old one kept); SIGTERM and SIGINT stop
the guard WITHOUT removing anything, so the data path keeps working while it restarts (``_guard_cli`` sets the
handlers; ``request_reload`` and ``request_stop`` are what they call).

Only the standard library is imported at module level; pyroute2 is imported by ``_ipvs``'s adapter when
IPVS is first used, and PyYAML by ``_kubeapi`` only when discovery reads a kubeconfig.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ansible_collections.kubeha.apiserver.plugins.module_utils._datapath import Desired
from ansible_collections.kubeha.apiserver.plugins.module_utils._datapath_modes import DATA_PATHS, make_data_path
from ansible_collections.kubeha.apiserver.plugins.module_utils._endpoint import format_endpoint
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_config import (
    LOG,
    ConfigError,
    GuardConfig,
    GuardError,
    load_config,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_discovery import (
    DISCOVERY_MISSES,
    admit_discovered,
    backend_set,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_hooks import Hooks
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_metrics import MetricsServer, MetricsSnapshot
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_state import (
    GuardState,
    make_state,
    read_state,
    write_state,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._probe import Prober, ProbeSettings
from ansible_collections.kubeha.apiserver.plugins.module_utils._proxy import (
    DOWN,
    UP,
    Backend,
    HealthTracker,
    ProbeResult,
    Transition,
    decide,
    sort_backends,
)

# Backends that left the set whose transition counters are still rendered (the newest ones): bounds the memory churn
# in discovery could otherwise grow without end.
DEPARTED_KEPT = 32
STARTUP_RETRY_S = 30.0  # start-up retried with back-off (1, 2, 4 ... s) for this long before the rounds take over
STARTUP_FIRST_RETRY_S = 1.0
HEALTHZ_INTERVALS = 3  # /healthz fails when the loop has not completed a round for this many intervals
PLUMBING_RETRY_S = 10.0  # failed (or lost) plumbing is retried at this pace


def next_due(due: float, interval_s: float, now: float) -> float:
    """When a periodic step runs next: ``interval_s`` after the last one was due (a fixed rate, not ``interval_s``
    after it ended), or at once when the step took longer than that, without bursts to catch up. A fast check whose
    connect waits out its 0.5 s timeout is followed by the next one at once: a black-holed master is taken down
    after two timeouts, not two timeouts and two intervals."""
    return max(due + interval_s, now)


def probe_pool_size(cfg: GuardConfig) -> int:
    """Threads for the probes and the fast checks: one each for every backend there can be (the seeds and the most
    discovery admits), so that many backends timing out at once still take one timeout, not several in a row, and
    a round stays within its interval. Threads are started only when needed."""
    most = len(cfg.seeds) + (cfg.discovery.max_backends if cfg.discovery.enabled else 0)
    return max(8, 2 * most)


def connect_verdicts(
    results: Sequence[ProbeResult], unanswered: dict[Backend, int], fall: int, timeout: float
) -> list[ProbeResult]:
    """What the fast TCP checks of backends held up decide: a refused connect drops its backend at once, an
    unanswered one only after ``fall`` in a row (counted in ``unanswered``, updated here); an answered one clears
    its count and decides nothing (readiness is the TLS probe's to decide)."""
    verdicts = []
    for res in results:
        if res.refused:
            verdicts.append(res)
        elif not res.unanswered:
            unanswered.pop(res.backend, None)
        elif unanswered.get(res.backend, 0) + 1 < fall:
            unanswered[res.backend] = unanswered.get(res.backend, 0) + 1
        else:
            unanswered.pop(res.backend, None)
            error = f"{fall} connects in a row unanswered after {timeout:g}s"
            verdicts.append(ProbeResult(res.backend, False, res.latency_s, error, unreachable=True))
    return verdicts


class Guard:
    """One node's guard. ``serve()`` runs it; ``startup()``/``run_round()`` are its steps (and ``--once``)."""

    def __init__(self, cfg: GuardConfig, config_path: str | None = None, hooks: Hooks | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self._hooks = hooks or Hooks()
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
        self.repairs = 0  # data paths found changed by someone else and restored
        self._last_desired: Desired | None = None  # the last decision the data path was given
        self._applied_desired: Desired | None = None  # the last one it carried out
        self.last_reconcile: float | None = None
        self._last_round: float | None = None
        self.datapath = make_data_path(cfg, self._hooks)
        self.plumbing_changes: list[str] = []  # every change the plumbing made, in order (the module reports them)
        self.applied: list[str] = []  # every data-path action applied, in order (the module reports them)
        self._plumbed = False
        self._plumbing_retry_at = 0.0
        self._pending_close: set[Backend] = set()
        self._unanswered: dict[Backend, int] = {}  # unanswered fast-check connects in a row
        self._state_written: dict[str, Any] | None = None
        self._errors: dict[str, str] = {}
        self._metrics: MetricsServer | None = None
        self._threads: list[threading.Thread] = []

    @property
    def hooks(self) -> Hooks:
        return self._hooks

    @hooks.setter
    def hooks(self, hooks: Hooks) -> None:
        """New contacts for the guard and its data path alike (tests swap them between rounds)."""
        self._hooks = self.datapath.hooks = hooks

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
        with self._lock:
            state = self.restore_state()
            if state is None:
                return False
            if state.mode and state.mode != self.cfg.mode and state.mode in DATA_PATHS:
                self._remove_old_mode(state)
            self._forget_pairs(self._stale_pairs(state.vips, state.port))
            self._reconcile(())
        LOG.info(
            "restored %d backends from %s (%s up)",
            len(self.backends),
            self.cfg.state_file,
            sum(1 for b in self.backends if self.tracker.state(b) == UP),
        )
        return True

    def restore_state(self) -> GuardState | None:
        """The backends and their health from the state file, into the guard (no change to the data path)."""
        try:
            state = read_state(self.cfg.state_file)
        except GuardError as exc:
            LOG.warning("ignoring the state file: %s", exc)
            return None
        if state is None:
            return None
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
        return state

    def ensure_plumbing(self) -> bool:
        self._plumbing_retry_at = self.hooks.monotonic() + PLUMBING_RETRY_S
        try:
            changes = self.datapath.plumbing()
        except GuardError as exc:
            self._plumbed = False
            self._error("plumbing", f"plumbing: {exc}")
            return False
        for change in changes:
            LOG.info("plumbing: %s", change)
        self.plumbing_changes += changes
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
        is the TLS probe's to decide. Then, for a data path that asks for it, the last decision is planned again:
        a table someone flushed is restored within one fast-check interval."""
        transitions = self._fast_connects()
        if self.datapath.verify_each_fast_check:
            with self._lock:
                if self._last_desired is not None:
                    self._apply(self._last_desired)
        return transitions

    def _fast_connects(self) -> list[Transition]:
        with self._lock:
            targets = [b for b in self.backends if self.tracker.state(b) == UP]
            timeout = self.cfg.connect_timeout_s
        if not targets:
            return []
        results = list(self._pool.map(lambda b: self.hooks.connector(b, timeout), targets))
        with self._lock:
            checked = {res.backend for res in results}
            self._unanswered = {b: n for b, n in self._unanswered.items() if b in checked}
            still_up = [r for r in results if r.backend in self.backends and self.tracker.state(r.backend) == UP]
            verdicts = connect_verdicts(still_up, self._unanswered, self.cfg.fall, timeout)
            return self._handle(verdicts) if verdicts else []

    def _handle(self, results: Sequence[ProbeResult]) -> list[Transition]:
        transitions = self.tracker.observe(results)
        for t in transitions:
            LOG.log(logging.WARNING if t.new == DOWN else logging.INFO, "%s", t.describe())
            self.transitions[(t.backend, t.new)] = self.transitions.get((t.backend, t.new), 0) + 1
        self._reconcile(transitions)
        refused = {r.backend for r in results if r.refused}
        for t in transitions:
            if t.old == UP and t.new == DOWN:
                self.datapath.went_down(t.backend, refused=t.backend in refused)
        return transitions

    def desired(self) -> tuple[Desired, set[int]]:
        """What the data path should carry for the current health, and the address families failing open."""
        weights, fail_open = decide(self.backends, self.tracker.health(), self.cfg.local_addresses,
                                    self.cfg.prefer_local)  # fmt: skip
        desired = Desired(self.cfg.vips, self.cfg.port, self.backends, weights, self.cfg.local_addresses,
                          self.cfg.prefer_local)  # fmt: skip
        return desired, fail_open

    def _reconcile(self, transitions: Sequence[Transition]) -> None:
        """Apply the weights of the current health; close connections of backends that just went down."""
        desired, fail_open = self.desired()
        for version in sorted(fail_open - self.fail_open_families):
            LOG.error(
                "no IPv%d apiserver is ready: failing open, every IPv%d backend stays in the data path",
                version,
                version,
            )
        for version in sorted(self.fail_open_families - fail_open):
            LOG.info("an IPv%d apiserver is ready again: failing open ended", version)
        self.weights, self.fail_open_families = dict(desired.weights), fail_open
        applied = self._apply(desired)
        self._pending_close |= {t.backend for t in transitions if t.old == UP and t.new == DOWN}
        if applied:
            self._close_pending(fail_open)
        self._write_state()
        self.last_reconcile = self.hooks.clock()

    def _apply(self, desired: Desired) -> bool:
        """Plan and apply; a data path that may fail under load (a netlink socket: ECONNRESET, ENOBUFS on a dump) is
        retried at once on a new handle, since waiting for the next round would leave a failed master in the data
        path for another second."""
        path = self.datapath
        self._last_desired = desired
        attempts = 2 if path.retry_after_reset else 1
        for attempt in range(1, attempts + 1):
            try:
                actions = path.plan(desired)
                if actions and desired == self._applied_desired and not path.pending():
                    # The decision is the one last applied, yet the data path differs: someone else changed it
                    # (kube-proxy's start-up cleanup of IPVS, a flushed ruleset, an edited file).
                    self.repairs += 1
                    LOG.warning("%s was changed outside the guard; restoring it", path.label)
                if actions:
                    path.apply(actions)
                    self.applied += [a.describe() for a in actions]
            # Any exception: pyroute2 raises more than NetlinkError (OSError on a reset or overrun socket, decode
            # errors on a truncated dump), and a handle kept after one would fail every later round too, leaving a
            # data path nobody updates.
            except Exception as exc:
                path.reset()
                kernel = path.retry_after_reset or not isinstance(exc, GuardError)  # haproxy's errors say it all
                message = f"applying {path.label}: {exc}" if kernel else str(exc)
                if attempt < attempts:
                    LOG.warning("%s; retrying on a new %s", message, path.handle)
                    continue
                self.apply_errors += 1
                self._error("apply", message)
                return False
            break
        self._applied_desired = desired
        if not path.pending():  # a failed step waiting for its retry has not recovered yet
            self._recovered("apply", f"applying {path.label}")
        return True

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

    def close_connections(self, backend: Backend) -> None:
        try:
            closed = self.datapath.close_connections(backend)
        except GuardError as exc:
            self._error("close", str(exc))
            return
        if closed is None:
            return
        if closed.failure:
            self._error("close", f"closing connections to {backend}: {closed.failure}")
        else:
            self._recovered("close", "closing connections")
        LOG.info(
            "backend %s: closed %d local connections of %d through the VIP, conntrack entries deleted",
            backend,
            closed.sockets,
            closed.connections,
        )

    def _remove_old_mode(self, state: GuardState) -> None:
        """The node changed mode: what the old mode's data path set up goes (its IPVS services, its nftables table,
        haproxy's files), so that only one data path carries the VIPs."""
        old = DATA_PATHS[state.mode](self.cfg, self.hooks)
        try:
            for item in old.remove(
                sorted({(v, state.port) for v in state.vips} | {(v, self.cfg.port) for v in self.cfg.vips})
            ):
                LOG.info("mode %s -> %s: removed %s", state.mode, self.cfg.mode, item)
                self.plumbing_changes.append(f"removed {item} (mode {state.mode} before)")
        except Exception as exc:  # logged; the new data path is applied all the same
            self._error("old-mode", f"removing the {state.mode} data path of the mode before: {exc}")
        finally:
            old.close()

    def _stale_pairs(self, vips: Iterable[str], port: int) -> list[tuple[str, int]]:
        current = {(v, self.cfg.port) for v in self.cfg.vips}
        return [(v, port) for v in vips if (v, port) not in current]

    def _forget_pairs(self, pairs: Iterable[tuple[str, int]]) -> None:
        """Take out of the data path the VIPs and ports the configuration no longer has."""
        try:
            for item in self.datapath.forget(pairs):
                LOG.info("%s: %s (no longer configured)", self.datapath.label, item)
        except Exception as exc:  # as in _apply: whatever the handle raised, it is rebuilt
            self.datapath.reset()
            self._error("stale", f"removing {self.datapath.label} services no longer configured: {exc}")

    # ---- state, discovery, configuration -------------------------------------------------------------

    def _write_state(self) -> None:
        state = make_state(self.cfg.vips, self.cfg.port, self.backends, self.tracker.health(), self.cfg.mode)
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
            self.datapath.reconfigure(new)
            self.tracker.reconfigure(new.rise, new.fall)
            if not new.discovery.enabled:
                self.discovered = frozenset()
            self._misses = {b: n for b, n in self._misses.items() if b in self.discovered}
            self._set_backends(backend_set(new.seeds, self.discovered))
            if (old.vips, old.port, old.prefer_local) != (new.vips, new.port, new.prefer_local):
                self.ensure_plumbing()
                self._forget_pairs(self._stale_pairs(old.vips, old.port))
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
                haproxy_refused=self.datapath.refused,
                repairs=self.repairs,
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
        self.datapath.close()
