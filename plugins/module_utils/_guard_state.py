# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to the kubeha.apiserver collection: not a public API, may change without notice.
"""The guard's state file: the VIPs, the port and every backend with its health, written at each change.

At boot the guard applies it before any probe, so kubelet finds the data path as it was; ``--cleanup`` reads it
to remove services of a VIP or port the configuration no longer names.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ansible_collections.kubeha.apiserver.plugins.module_utils._files import atomic_write
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_config import GuardError
from ansible_collections.kubeha.apiserver.plugins.module_utils._proxy import Backend, ProxyError, sort_backends

STATE_VERSION = 1


@dataclass(frozen=True)
class GuardState:
    """What the last run knew: the VIPs and port, every backend and its health, and the mode of the data path it
    set up ("" in a file written before the mode was recorded)."""

    vips: tuple[str, ...]
    port: int
    backends: tuple[tuple[Backend, str], ...]
    mode: str = ""

    @property
    def health(self) -> dict[Backend, str]:
        return dict(self.backends)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            **({"mode": self.mode} if self.mode else {}),
            "vip": list(self.vips),
            "port": self.port,
            "backends": [
                {"address": b.address, "port": b.port, "health": health}
                for b, health in sorted(self.backends, key=lambda item: item[0].sort_key())
            ],
        }


def make_state(
    vips: Iterable[str], port: int, backends: Iterable[Backend], health: Mapping[Backend, str], mode: str = ""
) -> GuardState:
    return GuardState(
        vips=tuple(vips),
        port=port,
        backends=tuple((b, health.get(b, "unknown")) for b in sort_backends(backends)),
        mode=mode,
    )


def state_from_dict(doc: Any, source: str = "state") -> GuardState:
    if not isinstance(doc, Mapping) or doc.get("version") != STATE_VERSION:
        raise GuardError(f"{source} is not a version {STATE_VERSION} guard state")
    try:
        vips = tuple(str(ipaddress.ip_address(v)) for v in doc.get("vip") or [])
        port = int(doc["port"])
        backends = tuple(
            (Backend(str(item["address"]), int(item["port"])), str(item.get("health") or "unknown"))
            for item in doc.get("backends") or []
        )
    except (KeyError, TypeError, ValueError, ProxyError) as exc:
        raise GuardError(f"{source} is not a valid guard state: {exc}") from exc
    mode = doc.get("mode") or ""
    if not isinstance(mode, str):
        raise GuardError(f"{source} is not a valid guard state: mode {mode!r} is not a string")
    return GuardState(vips, port, backends, mode)


def write_state(path: str, state: GuardState) -> None:
    try:
        atomic_write(path, json.dumps(state.to_dict(), indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        raise GuardError(f"cannot write the state file {path}: {exc.strerror or exc}") from exc


def read_state(path: str) -> GuardState | None:
    """The state in ``path``; ``None`` when there is none; ``GuardError`` when it is unreadable."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise GuardError(f"cannot read the state file {path}: {exc.strerror or exc}") from exc
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise GuardError(f"the state file {path} is not valid JSON: {exc}") from exc
    return state_from_dict(doc, f"the state file {path}")
