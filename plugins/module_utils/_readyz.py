# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the kubeha.apiserver collection: this is NOT a public API. It backs the kubeha.apiserver.apiserver_readyz
# module and may change in any release without notice.

"""The run of the apiserver_readyz module: the playbooks' and roles' one ``/readyz`` check.

The endpoints are read with the collection's one endpoint parser (``_endpoint.py``, through ``_proxy``), the probes
are ``_probe``'s (the guard's: the cluster CA, an optional client certificate, one hard deadline per probe), the wait
is ``_probe.wait_ready``. Every input is checked before the first probe: a malformed endpoint, a CA file or client
certificate that does not load, a key without its certificate each fail naming the value, and nothing is probed.

Only the standard library is used, and nothing here imports ``ansible``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.kubeha.apiserver.plugins.module_utils._probe import (
    REQUIREMENTS,
    ProbeSettings,
    ReadyWait,
    ssl_context,
    wait_ready,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._proxy import Backend, ProxyError, parse_endpoint

PRIVATE_KEY_MARK = b"PRIVATE KEY-----"


class ReadyzError(Exception):
    """Bad input (``outcome`` None), or an unmet requirement (``outcome`` says what each endpoint answered)."""

    def __init__(self, message: str, outcome: ReadyzOutcome | None = None) -> None:
        super().__init__(message)
        self.outcome = outcome


@dataclass(frozen=True)
class ReadyzRequest:
    """The parameters, checked: ``entries`` as given, ``backends`` parsed from them (same order)."""

    entries: tuple[str, ...]
    backends: tuple[Backend, ...]
    settings: ProbeSettings
    wait_s: float
    interval_s: float
    require: str


def _endpoints(entries: Sequence[Any]) -> tuple[Backend, ...]:
    backends, errors = [], []
    for entry in entries:
        try:
            backends.append(parse_endpoint(str(entry)))
        except ProxyError as exc:
            errors.append(str(exc))
    if errors:
        raise ReadyzError("endpoints: " + "; ".join(errors))
    return tuple(backends)


def _holds_a_key(path: str) -> bool | None:
    """Whether a PEM file holds a private key; None when it cannot be read (loading it says why)."""
    try:
        with open(path, "rb") as handle:
            return PRIVATE_KEY_MARK in handle.read(1 << 20)
    except OSError:
        return None


def _client_files(cert: str | None, key: str | None) -> tuple[str | None, str | None]:
    if key and not cert:
        raise ReadyzError(f"client_key_file {key} is given without client_cert_file")
    if cert and not key and _holds_a_key(cert) is False:
        raise ReadyzError(f"client_cert_file {cert} holds no private key and client_key_file is not given")
    return cert, key


def parse_request(params: Mapping[str, Any]) -> ReadyzRequest:
    """The module's parameters checked and read; ``ReadyzError`` naming the first wrong value otherwise."""
    entries = tuple(str(entry) for entry in params.get("endpoints") or ())
    backends = _endpoints(entries)
    require = str(params.get("require") or "all")
    if require not in REQUIREMENTS:
        raise ReadyzError(f"require {require!r} is not one of {', '.join(REQUIREMENTS)}")
    if not backends and require == "any":
        raise ReadyzError("endpoints is empty: require=any needs at least one endpoint")
    timeout_s, wait_s, interval_s = (float(params.get(name) or 0) for name in ("timeout", "wait", "interval"))
    if timeout_s <= 0:
        raise ReadyzError(f"timeout {params.get('timeout')!r} is not a number of seconds > 0")
    if wait_s < 0:
        raise ReadyzError(f"wait {params.get('wait')!r} is not a number of seconds >= 0")
    if interval_s <= 0:
        raise ReadyzError(f"interval {params.get('interval')!r} is not a number of seconds > 0")
    ca_file = params.get("ca_file")
    if not ca_file:
        raise ReadyzError("ca_file is empty: the cluster CA certificate is required")
    cert, key = _client_files(params.get("client_cert_file") or None, params.get("client_key_file") or None)
    settings = ProbeSettings(
        ca_file=str(ca_file),
        client_cert_file=cert,
        client_key_file=key,
        timeout_s=timeout_s,
        server_name=params.get("server_name") or None,
    )
    return ReadyzRequest(entries, backends, settings, wait_s, interval_s, require)


@dataclass(frozen=True)
class ReadyzOutcome:
    """What the module returns: one probe entry per endpoint given (in its order), the ready and the not ready."""

    request: ReadyzRequest
    waited: ReadyWait
    warnings: list[str] = field(default_factory=list)

    @property
    def diff(self) -> None:
        return None

    def _unique(self) -> list[Backend]:
        return list(dict.fromkeys(self.request.backends))

    def ready(self) -> list[str]:
        return [b.endpoint for b in self._unique() if self.waited.results[b].ok]

    def not_ready(self) -> list[str]:
        return [b.endpoint for b in self._unique() if not self.waited.results[b].ok]

    def probes(self) -> list[dict[str, Any]]:
        entries = []
        for backend in self.request.backends:
            result = self.waited.results[backend]
            entries.append({
                "endpoint": backend.endpoint,
                "ready": result.ok,
                "reason": "" if result.ok else result.error,
                "elapsed": round(result.latency_s, 3),
                "attempts": self.waited.attempts[backend],
            })  # fmt: skip
        return entries

    def result(self) -> dict[str, Any]:
        return {
            "changed": False,
            "probes": self.probes(),
            "ready": self.ready(),
            "not_ready": self.not_ready(),
            "elapsed": round(self.waited.elapsed_s, 3),
        }

    def failure(self) -> str:
        """``192.0.2.1:6443 does not answer /readyz: connection refused; ... (after 30 s)``."""
        path = self.request.settings.path
        failed = [(b.endpoint, self.waited.results[b].error) for b in self._unique() if not self.waited.results[b].ok]
        after = f" (after {self.request.wait_s:g} s)" if self.request.wait_s else ""
        if self.request.require == "any":
            given = ", ".join(b.endpoint for b in self._unique())
            return f"none of {given} answers {path}: " + "; ".join(f"{e}: {why}" for e, why in failed) + after
        return "; ".join(f"{e} does not answer {path}: {why}" for e, why in failed) + after


def run(params: Mapping[str, Any]) -> ReadyzOutcome:
    """Check the input, load the CA (and client certificate) once, then wait; ``ReadyzError`` unless satisfied."""
    request = parse_request(params)
    try:
        ssl_context(request.settings)  # a CA or client certificate that does not load fails before any probe
    except ProxyError as exc:
        raise ReadyzError(str(exc)) from None
    waited = wait_ready(request.backends, request.settings, request.wait_s, request.require, request.interval_s)
    outcome = ReadyzOutcome(request, waited)
    if not waited.satisfied:
        raise ReadyzError(outcome.failure(), outcome)
    return outcome
