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
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_config import GuardConfig, GuardError
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_daemon import Guard
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_hooks import Hooks
from ansible_collections.kubeha.apiserver.plugins.module_utils._probe import probe_all
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


# Every apiserver certificate names `kubernetes` (kubeadm and binary installs alike), so the VIP path can be
# verified against the cluster CA before the VIP itself joins the certificate's SANs.
VERIFY_NAME = "kubernetes"


def vip_readyz(address: str, port: int, ca_file: str, timeout_s: float = 2.0) -> str:
    """GET /readyz through the VIP, CA verified; '' when it answers ok, else why not."""
    try:
        context = ssl.create_default_context(cafile=ca_file)
        with socket.create_connection((address, port), timeout=timeout_s) as raw:
            raw.settimeout(timeout_s)
            with context.wrap_socket(raw, server_hostname=VERIFY_NAME) as tls:
                tls.sendall(b"GET /readyz HTTP/1.1\r\nHost: kubernetes\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := tls.recv(4096):
                    data += chunk
    except (OSError, ssl.SSLError) as exc:
        return f"{type(exc).__name__}: {exc}"
    head, _sep, body = data.partition(b"\r\n\r\n")
    if head.startswith(b"HTTP/1.1 200") and body.strip().endswith(b"ok"):
        return ""
    return head.split(b"\r\n", 1)[0].decode(errors="replace") or "empty answer"


def wait_vip_ready(cfg: GuardConfig, deadline_s: float) -> dict[str, str]:
    """Each VIP answering /readyz (CA verified) within the deadline: {vip: '' or the last error}."""
    end = time.monotonic() + deadline_s
    status = {vip: "not tried" for vip in cfg.vips}
    while True:
        for vip in cfg.vips:
            if status[vip]:
                status[vip] = vip_readyz(vip, cfg.port, cfg.ca_file, min(cfg.timeout_s * 2, 5.0))
        if not any(status.values()) or time.monotonic() >= end:
            return status
        time.sleep(0.5)
