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

import ipaddress
import os
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.kubeha.apiserver.plugins.module_utils._guard import (
    DOWN,
    UP,
    Guard,
    GuardConfig,
    GuardError,
    Hooks,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._ipvs import plan, to_dict
from ansible_collections.kubeha.apiserver.plugins.module_utils._proxy import (
    Backend,
    ProbeResult,
    desired_service,
    desired_weights,
    has_local_backend,
    probe_all,
    render_haproxy,
    scheduler_for,
    sort_backends,
)


@dataclass
class Outcome:
    changed: bool
    mode: str
    actions: list[str] = field(default_factory=list)
    backends: list[dict[str, Any]] = field(default_factory=list)
    fail_open: bool = False
    ready: int = 0


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError:
        return None


def snapshot(cfg: GuardConfig, ipvs_factory: Callable[[], Any]) -> dict[str, Any]:
    """What the data path looks like now: the VIPs' IPVS services, or the haproxy config, and the interface."""
    shot: dict[str, Any] = {"interface": os.path.exists(f"/sys/class/net/{cfg.interface}")}
    if cfg.mode == "haproxy":
        shot["haproxy"] = _read(cfg.haproxy.config_path)
        return shot
    adapter = ipvs_factory()
    try:
        for vip in cfg.vips:
            service = adapter.get(vip, cfg.port, "tcp")
            shot[vip] = to_dict(service, stats=False) if service is not None else None
    finally:
        adapter.close()
    return shot


def _weights(cfg: GuardConfig, backends: list[Backend], health: Mapping[Backend, str]) -> tuple[dict, bool]:
    weights: dict[Backend, int] = {}
    fail_open = False
    for version in (4, 6):
        family = [b for b in backends if b.version == version]
        if family:
            family_weights, family_open = desired_weights(family, health, cfg.local_addresses, cfg.prefer_local)
            weights.update(family_weights)
            fail_open |= family_open
    return weights, fail_open


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


def predict(cfg: GuardConfig, ipvs_factory: Callable[[], Any]) -> Outcome:
    """Check mode: probe, decide and plan against the live data path; apply nothing."""
    backends = list(cfg.seeds)
    results = probe_all(backends, cfg.probe_settings())
    health = {b: UP if r.ok else DOWN for b, r in results.items()}
    weights, fail_open = _weights(cfg, backends, health)
    actions: list[str] = []
    if not os.path.exists(f"/sys/class/net/{cfg.interface}"):
        actions.append(f"create interface {cfg.interface} with {', '.join(cfg.vips)}")
    if cfg.mode == "haproxy":
        text = render_haproxy(cfg.haproxy_settings(), backends, cfg.local_addresses, cfg.prefer_local)
        if _read(cfg.haproxy.config_path) != text:
            actions.append(f"write {cfg.haproxy.config_path} and reload haproxy")
    else:
        scheduler = scheduler_for(cfg.prefer_local, has_local_backend(backends, cfg.local_addresses))
        adapter = ipvs_factory()
        try:
            for vip in cfg.vips:
                version = ipaddress.ip_address(vip).version
                family = {b: w for b, w in weights.items() if b.version == version}
                desired = desired_service(vip, cfg.port, family, scheduler)
                actions += [a.describe() for a in plan(adapter.get(vip, cfg.port, "tcp"), desired, True)]
        finally:
            adapter.close()
    return Outcome(bool(actions), cfg.mode, actions, _table(results, weights), fail_open,
                   sum(r.ok for r in results.values()))  # fmt: skip


def _describe(key: str, cfg: GuardConfig) -> str:
    if key == "interface":
        return f"created interface {cfg.interface} with {', '.join(cfg.vips)}"
    if key == "haproxy":
        return f"wrote {cfg.haproxy.config_path} and reloaded haproxy"
    return f"updated IPVS service {key} port {cfg.port}"


def converge(cfg: GuardConfig, config_path: str, hooks: Hooks | None = None) -> Outcome:
    """One guard round (plumbing, probes, apply, state file), reported as a change when the data path moved."""
    results: dict[Backend, ProbeResult] = {}

    def probe_and_keep(backends: Any, settings: Any) -> dict[Backend, ProbeResult]:
        results.update(probe_all(backends, settings))
        return results

    hooks = hooks or Hooks(notify=lambda _message: False, prober=probe_and_keep)
    before = snapshot(cfg, hooks.ipvs_factory)
    guard = Guard(cfg, config_path, hooks)
    try:
        guard.startup()
        guard.run_round()
        # The running guard retries; a run must not report success with a data path it could not apply.
        if (error := guard.apply_error()) is not None:
            raise GuardError(error)
        weights = dict(guard.weights)
        fail_open = bool(guard.fail_open_families)
    finally:
        guard.close()
    after = snapshot(cfg, hooks.ipvs_factory)
    actions = [_describe(key, cfg) for key in after if before.get(key) != after.get(key)]
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
