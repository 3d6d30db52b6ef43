# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to the kubeha.apiserver collection: not a public API, may change without notice.
"""The haproxy data path: a haproxy (its own systemd unit) bound to the VIPs, with every backend and its own checks.

The guard writes haproxy's configuration (only once ``haproxy -c`` accepts it) and the combined client PEM, and
reloads haproxy when either changed; a failed reload is retried at a slower pace. When a backend goes down for a
reason haproxy's checks would take seconds to see (black-holed, hung, not ready), the guard marks it down on the
stats socket and shuts its sessions at once.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ansible_collections.kubeha.apiserver.plugins.module_utils._datapath import Action, DataPath, Desired
from ansible_collections.kubeha.apiserver.plugins.module_utils._files import atomic_write, fsync_directory
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_config import LOG, GuardError, read_bytes
from ansible_collections.kubeha.apiserver.plugins.module_utils._haproxy_config import (
    HAPROXY_BACKEND,
    haproxy_server_name,
    render_haproxy,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._node_plumbing import command_error
from ansible_collections.kubeha.apiserver.plugins.module_utils._probe import file_stamp
from ansible_collections.kubeha.apiserver.plugins.module_utils._proxy import Backend

RELOAD_RETRY_S = 30.0  # a failed haproxy reload (or a refused configuration) is retried at this pace, not every round


@dataclass(frozen=True)
class WritePem:
    """The client certificate and key, combined into the one PEM file haproxy reads."""

    path: str
    text: str
    stamp: Any  # the certificate files' stamp it was made from

    def describe(self) -> str:
        return f"write {self.path}"


@dataclass(frozen=True)
class WriteConfig:
    path: str
    text: str
    backends: int

    def describe(self) -> str:
        return f"write {self.path} ({self.backends} backends)"


@dataclass(frozen=True)
class Reload:
    command: tuple[str, ...]

    def describe(self) -> str:
        return "reload haproxy"


class HaproxyDataPath(DataPath):
    mode = "haproxy"
    label = "the haproxy configuration"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._applied: str | None = None  # the configuration text last found or put in place
        self._refusal: tuple[str, str] | None = None  # the last text haproxy's check refused, and why
        self._check_retry_at = 0.0
        self._reload_pending = False
        self._reload_retry_at = 0.0
        self._pem_stamp: Any = None

    def reconfigure(self, cfg: Any) -> None:
        super().reconfigure(cfg)
        self._pem_stamp = None  # the certificate's paths may have changed: read them again

    def _combined_pem(self) -> tuple[str, Any] | None:
        """The PEM haproxy should have, when the certificate files changed since the last one; else None."""
        cfg = self.cfg
        if not cfg.client_cert_file:
            return None
        files = [cfg.client_cert_file, cfg.client_key_file or cfg.client_cert_file]
        stamp = file_stamp(files)
        if stamp == self._pem_stamp:
            return None
        cert = read_bytes(files[0], "the client certificate").decode("ascii", "replace")
        key = read_bytes(files[1], "the client key").decode("ascii", "replace") if files[1] != files[0] else ""
        combined = cert if cert.endswith("\n") or not key else cert + "\n"
        return combined + key, stamp

    def plan(self, desired: Desired) -> list[Action]:
        """The PEM and the configuration where they differ from the files, and a reload after them (or a failed
        reload's retry, when due). The files are only read; what was found equal is remembered, so a round does
        not read them again."""
        hap = self.cfg.haproxy
        actions: list[Action] = []
        pem = self._combined_pem()
        if pem is not None:
            if _read(hap.pem_path) == pem[0]:
                self._pem_stamp = pem[1]
            else:
                actions.append(WritePem(hap.pem_path, pem[0], pem[1]))
        text = render_haproxy(self.cfg.haproxy_settings(), desired.backends, desired.local_addresses,
                              desired.prefer_local)  # fmt: skip
        if text != self._applied:
            if _read(hap.config_path) == text:
                self._applied = text
            else:
                actions.append(WriteConfig(hap.config_path, text, len(desired.backends)))
        if actions or (self._reload_pending and self.hooks.monotonic() >= self._reload_retry_at):
            actions.append(Reload(tuple(hap.reload_command)))
        return actions

    def apply(self, actions: Sequence[Action]) -> None:
        for action in actions:
            if isinstance(action, WritePem):
                try:
                    atomic_write(action.path, action.text, 0o600)
                except OSError as exc:
                    raise GuardError(f"cannot write {action.path}: {exc.strerror or exc}") from exc
                self._pem_stamp = action.stamp
                self._reload_pending = True
            elif isinstance(action, WriteConfig):
                self._replace_config(action.text)
                LOG.info("haproxy: wrote %s (%d backends)", action.path, action.backends)
                self._applied = action.text
                self._reload_pending = True
            elif isinstance(action, Reload):
                self._reload_retry_at = self.hooks.monotonic() + RELOAD_RETRY_S
                rc, _out, err = self.hooks.runner(list(action.command))
                if rc != 0:
                    self.refused += 1
                    raise GuardError(
                        "reloading haproxy (the running one keeps its configuration): "
                        f"{command_error(action.command, rc, err)}"
                    )
                self._reload_pending = False
                LOG.info("haproxy: reloaded")

    def _replace_config(self, text: str) -> None:
        """Put `text` in place of the configuration file only once haproxy's own check accepts it: a refused one
        never reaches the file that a reload or the next start of haproxy reads. A refused text is checked again
        at the reload retry pace (the cause, say a missing CA file, may be fixed outside), not every round."""
        hap = self.cfg.haproxy
        now = self.hooks.monotonic()
        if self._refusal and self._refusal[0] == text and now < self._check_retry_at:
            raise GuardError(self._refusal[1])
        candidate = hap.config_path + ".new"
        try:
            atomic_write(candidate, text, 0o644)
        except OSError as exc:
            raise GuardError(f"cannot write {candidate}: {exc.strerror or exc}") from exc
        try:
            rc, out, err = self.hooks.runner([*hap.check_command, candidate])
            if rc != 0:
                self.refused += 1
                said = (err + out).splitlines()
                alerts = [line for line in said if "[ALERT]" in line] or said  # not its version NOTICEs
                message = (
                    f"haproxy refuses the new configuration, {hap.config_path} keeps the one in use: "
                    f"{command_error((*hap.check_command, candidate), rc, ' '.join(alerts))}"
                )
                self._refusal, self._check_retry_at = (text, message), now + RELOAD_RETRY_S
                raise GuardError(message)
            try:
                os.replace(candidate, hap.config_path)
                fsync_directory(os.path.dirname(os.path.abspath(hap.config_path)))
            except OSError as exc:
                raise GuardError(f"cannot replace {hap.config_path}: {exc.strerror or exc}") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(candidate)
        self._refusal = None

    def pending(self) -> bool:
        return self._reload_pending

    def snapshot(self) -> dict[str, Any]:
        return {"haproxy": _read(self.cfg.haproxy.config_path)}

    def went_down(self, backend: Backend, refused: bool) -> None:
        """Mark a failed master down in haproxy at once and shut its sessions.

        Not for a refused master: the kernel resets its connections, and haproxy redispatches the sessions
        that were connecting to it; shutting those would fail them. Otherwise (black-holed, hung, not ready)
        haproxy's own checks would take up to 2.5 s more and, without this, leave its sessions open. Its
        checks bring the server back when it answers again.
        """
        if refused:
            return
        name = f"{HAPROXY_BACKEND}/{haproxy_server_name(backend)}"
        for command in (f"set server {name} health down", f"shutdown sessions server {name}"):
            try:
                answer = self.hooks.haproxy_command(self.cfg.haproxy.stats_socket, command)
            except OSError as exc:
                LOG.error("haproxy: %s: %s", command, exc.strerror or exc)
                return
            if answer:
                LOG.error("haproxy: %s: %s", command, answer)
                return
            LOG.info("haproxy: %s", command)

    def remove(self, pairs: Iterable[tuple[str, int]]) -> list[str]:
        """haproxy's configuration and PEM (its unit is the role's to stop)."""
        removed = []
        for path in (self.cfg.haproxy.pem_path, self.cfg.haproxy.config_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise GuardError(f"cannot remove {path}: {exc.strerror or exc}") from exc
            removed.append(path)
        return removed


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError:
        return None
