# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to the kubeha.apiserver collection: not a public API, may change without notice.
"""One-shot convergence of a node's local proxy (the apiserver_proxy module).

The same code path as the guard's own round (so the module and the daemon never disagree), wrapped with
a snapshot of the data path before and after to report ``changed``, and a prediction for check mode that
probes and plans but applies nothing.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_config import GuardConfig, GuardError
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_daemon import Guard
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_hooks import Hooks
from ansible_collections.kubeha.apiserver.plugins.module_utils._probe import probe_all, wait_ready
from ansible_collections.kubeha.apiserver.plugins.module_utils._proxy import Backend, ProbeResult, sort_backends


@dataclass
class Outcome:
    changed: bool
    mode: str
    actions: list[str] = field(default_factory=list)
    backends: list[dict[str, Any]] = field(default_factory=list)
    fail_open: bool = False
    ready: int = 0


def _table(results: Mapping[Backend, ProbeResult], weights: Mapping[Backend, int]) -> list[dict[str, Any]]:
    return [
        {
            "backend": str(b),
            "ready": results[b].ok,
            "latency_ms": round(results[b].latency_s * 1000, 1),
            "weight": weights.get(b, 0),
            "error": results[b].error,
        }
        for b in sort_backends(results)
    ]


def _recording_hooks(results: dict[Backend, ProbeResult], hooks: Hooks | None) -> Hooks:
    """The real contacts (or the given ones), with the probes' results kept for the module's table."""
    hooks = hooks or Hooks(notify=lambda _message: False)
    probe = hooks.prober or probe_all

    def probe_and_keep(backends: Any, settings: Any) -> dict[Backend, ProbeResult]:
        results.update(probe(backends, settings))
        return results

    return dataclasses.replace(hooks, prober=probe_and_keep)


def predict(cfg: GuardConfig, hooks: Hooks | None = None) -> Outcome:
    """Check mode (and ``apply: false``): the guard's own decision on one probe of the configured backends (as a
    guard that starts without a state file: the first probe decides), and its data path's plan for it, without
    plumbing or apply. The discovered backends a running guard may add are its own and not predicted."""
    results: dict[Backend, ProbeResult] = {}
    guard = Guard(cfg, None, _recording_hooks(results, hooks))
    try:
        found = guard.hooks.prober(guard.backends, cfg.probe_settings())  # type: ignore[misc]
        guard.tracker.observe(found)
        desired, fail_open = guard.desired()
        actions: list[str] = []
        if not os.path.exists(os.path.join(guard.hooks.paths.sys_root, "class", "net", cfg.interface)):
            actions.append(f"create interface {cfg.interface} with {', '.join(cfg.vips)}")
        actions += [a.describe() for a in guard.datapath.plan(desired)]
    finally:
        guard.close()
    return Outcome(bool(actions), cfg.mode, actions, _table(results, desired.weights), bool(fail_open),
                   sum(r.ok for r in results.values()))  # fmt: skip


def converge(cfg: GuardConfig, config_path: str, hooks: Hooks | None = None) -> Outcome:
    """One guard round (plumbing, probes, apply, state file); every change it made, as the module's actions."""
    results: dict[Backend, ProbeResult] = {}
    guard = Guard(cfg, config_path, _recording_hooks(results, hooks))
    try:
        before = guard.datapath.snapshot()
        guard.startup()
        guard.run_round()
        # The running guard retries; a run must not report success with a data path it could not apply.
        if (error := guard.apply_error()) is not None:
            raise GuardError(error)
        # Steps that cancel out (a restored backend set to 0, then back by the probe) are not a change.
        moved = guard.datapath.snapshot() != before
        actions = [*guard.plumbing_changes, *(guard.applied if moved else [])]
        weights = dict(guard.weights)
        fail_open = bool(guard.fail_open_families)
    finally:
        guard.close()
    return Outcome(bool(actions), cfg.mode, actions, _table(results, weights), fail_open,
                   sum(r.ok for r in results.values()))  # fmt: skip


def wait_vip_ready(cfg: GuardConfig, deadline_s: float) -> dict[str, str]:
    """Each VIP answering /readyz within the deadline, by the guard's own probe (the cluster CA and the guard's
    client certificate; the served certificate must carry the verify name, `kubernetes` unless configured, which
    every apiserver certificate names before the VIPs join its SANs): {vip: '' or why not}."""
    settings = dataclasses.replace(
        cfg.probe_settings(), timeout_s=min(cfg.timeout_s * 2, 5.0), server_name=cfg.haproxy.verify_name
    )
    waited = wait_ready((Backend(vip, cfg.port) for vip in cfg.vips), settings, deadline_s, interval_s=0.5)
    results = waited.results.items()
    return {backend.address: "" if result.ok else result.error or "not ready" for backend, result in results}
