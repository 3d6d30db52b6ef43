# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to the kubeha.apiserver collection: not a public API, may change without notice.
"""The client certificate and key a node's probes present, found in a kubeconfig on that node.

Decided on the node, so that no task reads the kubeconfig into Ansible (whose output shows what a task
returns). The user is the one of the current context (``_kubeconfig.select``):

- ``client-certificate`` and ``client-key`` file names (kubelet's rotating ``kubelet-client-current.pem``):
  those files as they are, so a rotation is followed; a copy left in ``dest`` by an earlier run is removed;
- embedded ``client-certificate-data``/``client-key-data`` (or one embedded, one a file): both written into
  ``dest``, one private file (mode 0600), replaced atomically only when its bytes or mode differ.

The certificate and key are proven to belong together before anything is written, without writing the key
anywhere (an anonymous memory file). ``plan`` reads, ``apply`` writes. No return value or message holds a secret.
"""

from __future__ import annotations

import hashlib
import os
import re
import ssl
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.kubeha.apiserver.plugins.module_utils._files import atomic_write, fsync_directory
from ansible_collections.kubeha.apiserver.plugins.module_utils._kubeapi import import_yaml, memory_files
from ansible_collections.kubeha.apiserver.plugins.module_utils._kubeconfig import (
    KubeconfigError,
    embedded_data,
    load_selection,
)

_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----\s.*?-----END CERTIFICATE-----", re.S)
_PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----")
DEST_MODE = 0o600


class ClientCertError(Exception):
    """The one error of this domain; its message names the file and the reason and never holds a secret."""


@dataclass(frozen=True)
class ClientCertPlan:
    """Which files the probes use and what, if anything, is to change in ``dest``."""

    kubeconfig: str
    dest: str
    user: str
    source: str  # "files" or "embedded"
    cert_file: str
    key_file: str | None  # None: ``cert_file`` holds the key too
    fingerprint: str  # sha256 of the (first) certificate, as openssl x509 -fingerprint -sha256 prints it
    before: str  # what dest holds now, described without its secret
    content: bytes | None = field(default=None, repr=False)  # embedded: what dest must hold
    write: bool = False
    remove: bool = False

    @property
    def changed(self) -> bool:
        return self.write or self.remove

    @property
    def after(self) -> str:
        if self.source == "files":
            return "absent"
        return f"certificate {self.fingerprint} and its key, mode {DEST_MODE:04o}"

    def result(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "cert_file": self.cert_file,
            "key_file": self.key_file,
            "source": self.source,
            "user": self.user,
            "fingerprint": self.fingerprint,
        }

    def diff(self) -> dict[str, str]:
        return {
            "before_header": self.dest,
            "after_header": self.dest,
            "before": self.before + "\n",
            "after": self.after + "\n",
        }


def fingerprint(pem: bytes, what: str) -> str:
    """``SHA256:AB:CD:...`` of the first certificate of ``pem``; a text without one is refused."""
    match = _CERTIFICATE.search(pem)
    if match is None:
        raise ClientCertError(f"{what} holds no PEM certificate")
    try:
        der = ssl.PEM_cert_to_DER_cert(match.group(0).decode("ascii"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ClientCertError(f"{what} holds a PEM certificate that cannot be decoded") from exc
    digest = hashlib.sha256(der).hexdigest().upper()
    return "SHA256:" + ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        hint = " (run the task with become)" if isinstance(exc, PermissionError) else ""
        raise ClientCertError(f"cannot read {what} {path}: {exc.strerror or exc}{hint}") from exc


def _embedded(user: dict[str, Any], key: str, where: str) -> bytes | None:
    try:
        return embedded_data(user, key, where)
    except KubeconfigError as exc:
        raise ClientCertError(str(exc)) from exc


def prove_pair(cert: bytes | str, key: bytes | str, what: str) -> None:
    """Fails unless the certificate and key load together: both bytes (held in memory files, never on a disk) or
    both file names."""
    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if isinstance(cert, bytes) and isinstance(key, bytes):
            with memory_files(cert, key) as (cert_name, key_name):
                context.load_cert_chain(cert_name, key_name, password=lambda: b"")
        elif isinstance(cert, str) and isinstance(key, str):
            context.load_cert_chain(cert, key, password=lambda: b"")
        else:
            raise TypeError("prove_pair takes two byte strings or two file names")
    except ssl.SSLError as exc:
        raise ClientCertError(
            f"{what}: the client certificate and key do not load together: {exc.reason or exc}"
        ) from exc
    except OSError as exc:
        raise ClientCertError(f"{what}: cannot load the client certificate and key: {exc.strerror or exc}") from exc


def describe(dest: str) -> str:
    """What ``dest`` holds now, told without its key."""
    if not os.path.lexists(dest):
        return "absent"
    if os.path.islink(dest) or not os.path.isfile(dest):
        raise ClientCertError(f"{dest} exists and is not a regular file: refusing to replace it")
    mode = stat.S_IMODE(os.stat(dest).st_mode)
    try:
        held = f"certificate {fingerprint(_read(dest, 'the file'), dest)} and its key"
    except ClientCertError:
        held = "no certificate"
    return f"{held}, mode {mode:04o}"


def plan(kubeconfig: str, dest: str, context: str | None = None) -> ClientCertPlan:
    """Which certificate and key the kubeconfig's current (or given) context presents, and what dest needs."""
    try:
        selection, files = load_selection(kubeconfig, context, import_yaml())
    except KubeconfigError as exc:
        raise ClientCertError(str(exc)) from exc
    user = dict(selection.user or {})
    where = f"{kubeconfig}: users[{selection.user_name}]"
    cert_data = _embedded(user, "client-certificate", where)
    key_data = _embedded(user, "client-key", where)
    cert_path = None if cert_data else files.get("client-certificate")
    key_path = None if key_data else files.get("client-key")
    if not (cert_data or cert_path):
        other = next((name for name in ("token", "tokenFile", "exec", "auth-provider") if user.get(name)), None)
        has = f" (it has {other})" if other else ""
        raise ClientCertError(
            f"{where} has no client certificate{has}: client-certificate-data or client-certificate is needed, "
            "since the probes authenticate with a certificate"
        )
    if not (key_data or key_path):
        raise ClientCertError(f"{where} has a client certificate but no client-key-data or client-key")

    before = describe(dest)
    if cert_path and key_path:
        # Files on the node: used as they are (kubelet rotates them in place), never copied.
        cert_print = fingerprint(_read(cert_path, f"{where}.client-certificate"), cert_path)
        prove_pair(cert_path, key_path, where)
        return ClientCertPlan(
            kubeconfig,
            dest,
            selection.user_name,
            "files",
            cert_path,
            None if os.path.realpath(key_path) == os.path.realpath(cert_path) else key_path,
            cert_print,
            before,
            # A copy an earlier run wrote from embedded data would be a stale key on disk.
            remove=before != "absent"
            and os.path.realpath(dest)
            not in {
                os.path.realpath(cert_path),
                os.path.realpath(key_path),
            },
        )
    cert = cert_data if cert_data is not None else _read(str(cert_path), f"{where}.client-certificate")
    key = key_data if key_data is not None else _read(str(key_path), f"{where}.client-key")
    cert_print = fingerprint(cert, f"{where}.client-certificate")
    if not _PRIVATE_KEY.search(key):
        raise ClientCertError(f"{where}.client-key holds no PEM private key")
    prove_pair(cert, key, where)
    content = cert.rstrip(b"\n") + b"\n" + key.rstrip(b"\n") + b"\n"
    current = _read(dest, "the file") if before != "absent" else None
    unchanged = current == content and stat.S_IMODE(os.stat(dest).st_mode) == DEST_MODE
    return ClientCertPlan(
        kubeconfig, dest, selection.user_name, "embedded", dest, None, cert_print, before, content, write=not unchanged
    )


def apply(planned: ClientCertPlan) -> None:
    """Carry the plan out: dest written atomically (mode 0600 before it is visible) or removed, durably."""
    if planned.remove:
        os.unlink(planned.dest)
        fsync_directory(os.path.dirname(os.path.abspath(planned.dest)))
    elif planned.write and planned.content is not None:
        atomic_write(planned.dest, planned.content, mode=DEST_MODE)


@dataclass(frozen=True)
class Outcome:
    """The module's outcome: the plan, carried out unless in check mode."""

    plan: ClientCertPlan
    warnings: list[str] = field(default_factory=list)

    @property
    def diff(self) -> dict[str, str]:
        return self.plan.diff()

    def result(self) -> dict[str, Any]:
        return self.plan.result()


def run(params: Mapping[str, Any], check_mode: bool) -> Outcome:
    """The module's whole run: plan, then apply unless ``check_mode``; a failed write is a ``ClientCertError``."""
    try:
        planned = plan(params["kubeconfig"], params["dest"], params.get("context"))
        if not check_mode:
            apply(planned)
    except OSError as exc:
        raise ClientCertError(f"cannot write {params['dest']}: {exc.strerror or exc}") from exc
    return Outcome(planned)
