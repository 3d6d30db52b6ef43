# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the kubeha.apiserver collection: this is NOT a public API. It backs the
# kubeha.apiserver.kubeconfig_server module and may change in any release without notice.

"""The ``server`` of a kubeconfig file on a node: inspect, plan, verify with the file's own credentials, write.

Kept whole though a little over 500 lines: every part below serves only the kubeconfig_server module's one run.

- ``inspect`` checks that a text is a kubeconfig whose current context names a cluster with a server;
- ``plan_present`` / ``plan_absent`` decide from the texts alone (pure);
- ``review`` asks the apiserver who the credentials are (a SelfSubjectReview, allowed to any authenticated
  identity), through any object with ``post`` (a ``KubeClient`` with ``server_override``);
- ``Files`` is the thin file adapter (read, backup, atomic replace keeping mode and owner, a stable copy of
  the original), replaced in part by the module with AnsibleModule's own helpers;
- ``run`` is the module's whole run: validate, read, plan, verify, then write (never in check mode).

The text edit itself is the line-exact one of ``_configmap_server.set_server``: only the characters of the
server value of the current context's cluster change, and the result is parsed again and checked.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.kubeha.apiserver.plugins.module_utils._cluster_endpoint_input import (
    ClusterEndpointError,
    normalize_server,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._configmap_server import kubeconfig_server, set_server
from ansible_collections.kubeha.apiserver.plugins.module_utils._files import (
    adopt_marker,
    atomic_write,
    content_digest,
    fsync_directory,
    prune_backups,
    read_marker,
    restart_due,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._kubeapi import KubeAPIError, import_yaml
from ansible_collections.kubeha.apiserver.plugins.module_utils._kubeconfig import KubeconfigError, select

STATES = ("present", "absent")
ORIGINAL_SUFFIX = ".kubeha-orig"
REVIEW_PATHS = (
    ("/apis/authentication.k8s.io/v1/selfsubjectreviews", "authentication.k8s.io/v1"),
    ("/apis/authentication.k8s.io/v1beta1/selfsubjectreviews", "authentication.k8s.io/v1beta1"),
)
REDACTED = "<redacted by kubeha.apiserver.kubeconfig_server>"
# Keys of a kubeconfig whose value is a secret: never shown in a diff.
SECRET_KEYS = frozenset({"client-key-data", "token", "password"})
# Credential plugins: the parts of their settings that carry secrets (auth-provider's config holds id-token,
# refresh-token, client-secret; exec's args and env hold whatever the plugin is given). Every scalar under them goes.
SECRET_PARTS = {"auth-provider": frozenset({"config"}), "exec": frozenset({"args", "env"})}
# Not YAML: the block-style lines of the secret keys, and of the names auth-provider configs use.
_SECRET_LINE = re.compile(
    r"^([ \t]*(?:-[ \t]+)?(?:client-key-data|token|password|id-token|refresh-token|access-token|client-secret)"
    r"[ \t]*:[ \t]*)(\S[^\r\n]*)$",
    re.M,
)


class KubeconfigServerError(Exception):
    """The one error of this domain; its message is meant for the user as is."""


# --------------------------------------------------------------------------------------------------
# Reading a kubeconfig
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """What a kubeconfig's current context uses."""

    context: str
    cluster: str
    user: str
    server: str


def inspect(text: str, path: str) -> Layout:
    """The current context's cluster, user and server; ``KubeconfigServerError`` naming what is wrong."""
    yaml = import_yaml()
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise KubeconfigServerError(f"{path} is not a kubeconfig: it is not valid YAML: {exc}") from exc
    if not isinstance(doc, Mapping) or not ({"clusters", "contexts"} & set(doc)):
        raise KubeconfigServerError(
            f"{path} is not a kubeconfig: a YAML mapping with clusters, contexts, users and current-context is expected"
        )
    current = doc.get("current-context")
    if not current or not isinstance(current, str):
        raise KubeconfigServerError(
            f"{path} has no current-context: the server to change is the one of the cluster the current context uses"
        )
    try:
        selection = select(doc, path, require_user=False)
    except KubeconfigError as exc:
        raise KubeconfigServerError(str(exc)) from exc
    server = selection.cluster.get("server")
    if not server or not isinstance(server, str):
        raise KubeconfigServerError(f"{path}: cluster {selection.cluster_name!r} has no server")
    return Layout(context=current, cluster=selection.cluster_name, user=selection.user_name, server=server)


def same_server(current: str, wanted: str) -> bool:
    """Whether a kubeconfig's server is ``wanted`` (canonical): compared in canonical form when it has one."""
    try:
        return normalize_server(current) == wanted
    except ClusterEndpointError:
        return current == wanted


def edit(text: str, server: str, path: str) -> str:
    """``text`` with only the current context's cluster's server value replaced (line-exact, checked)."""
    inspect(text, path)  # the current context must exist: the edit never falls back to another cluster
    try:
        new_text = set_server(text, server, path)
        if kubeconfig_server(new_text, path) != server:
            raise ClusterEndpointError(f"{path}: the edited text does not name {server}")
    except ClusterEndpointError as exc:
        raise KubeconfigServerError(str(exc)) from exc
    return new_text


def _secret_spans(node: Any, yaml: Any, secret: bool = False) -> list[tuple[int, int]]:
    """Character spans of the secret scalars anywhere under ``node`` (all of them when ``secret``)."""
    if isinstance(node, yaml.ScalarNode):
        return (
            [(node.start_mark.index, node.end_mark.index)]
            if secret and node.end_mark.index > node.start_mark.index
            else []
        )
    spans: list[tuple[int, int]] = []
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else None
            if secret or name in SECRET_KEYS:
                spans.extend(_secret_spans(value, yaml, True))
            elif name in SECRET_PARTS and isinstance(value, yaml.MappingNode):
                for part, inner in value.value:
                    hidden = isinstance(part, yaml.ScalarNode) and part.value in SECRET_PARTS[name]
                    spans.extend(_secret_spans(inner, yaml, hidden))
            else:
                spans.extend(_secret_spans(value, yaml))
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            spans.extend(_secret_spans(item, yaml, secret))
    return spans


def redact(text: str) -> str:
    """The text with every secret value replaced, for diffs: client-key-data, token, password, and the settings of
    credential plugins (``auth-provider`` config, ``exec`` args and env)."""
    yaml = import_yaml()
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        root = None
    if root is None:  # not YAML: at least the block-style lines
        return _SECRET_LINE.sub(lambda match: match.group(1) + REDACTED, text)
    for start, end in sorted(_secret_spans(root, yaml), reverse=True):
        text = text[:start] + REDACTED + text[end:]
    return text


# --------------------------------------------------------------------------------------------------
# Plans (pure)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What to do with one file: ``write`` its new text, and/or ``remove_original``; ``warning`` when left."""

    before: str
    after: str
    text_before: str
    text_after: str
    verify_server: str | None
    remove_original: bool = False
    keep_original: bool = False
    warning: str = ""

    @property
    def write(self) -> bool:
        return self.text_after != self.text_before

    @property
    def changed(self) -> bool:
        return self.write or self.remove_original


def plan_present(text: str, server: str, path: str, original_exists: bool) -> Plan:
    """Point the file at ``server``; the original is kept (once) before the first write."""
    layout = inspect(text, path)
    if same_server(layout.server, server):
        return Plan(layout.server, layout.server, text, text, None)
    new_text = edit(text, server, path)
    return Plan(layout.server, server, text, new_text, server, keep_original=not original_exists)


def plan_absent(text: str, original: str | None, path: str, server: str | None) -> Plan:
    """Put back the original when the file differs from it only in the server line; else leave it."""
    layout = inspect(text, path)
    keep = Plan(layout.server, layout.server, text, text, None)
    original_path = path + ORIGINAL_SUFFIX
    if original is None:
        if server is not None and same_server(layout.server, server):
            return _with_warning(
                keep,
                f"{path} points at {server}, but {original_path} does not exist, so the server it had before is not "
                "known: left as it is",
            )
        return keep
    if text == original:
        return Plan(layout.server, layout.server, text, text, None, remove_original=True)
    original_server = inspect(original, original_path).server
    try:
        restorable = edit(text, original_server, path) == original
    except KubeconfigServerError:
        restorable = False
    if not restorable:
        return _with_warning(
            keep,
            f"{path} differs from {original_path} in more than the server line (it was changed since, by something "
            f"else): left as it is, and {original_path} kept; compare them and restore by hand",
        )
    return Plan(layout.server, original_server, text, original, original_server, remove_original=True)


def _with_warning(plan: Plan, warning: str) -> Plan:
    return Plan(plan.before, plan.after, plan.text_before, plan.text_after, None, warning=warning)


# --------------------------------------------------------------------------------------------------
# The apiserver: who are these credentials?
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    username: str
    groups: list[str] = field(default_factory=list)


def review(client: Any) -> Identity:
    """POST a SelfSubjectReview (v1, else v1beta1 on older apiservers); the user the apiserver authenticated."""
    answer: Mapping[str, Any] = {}
    for api_path, api_version in REVIEW_PATHS:
        try:
            answer = client.post(api_path, {"apiVersion": api_version, "kind": "SelfSubjectReview"})
            break
        except KubeAPIError as exc:
            if exc.status != 404 or api_path == REVIEW_PATHS[-1][0]:
                raise
    user = (answer.get("status") or {}).get("userInfo") or {}
    username = user.get("username")
    if not username:
        raise KubeAPIError("the apiserver answered the SelfSubjectReview without a user name")
    return Identity(str(username), [str(g) for g in user.get("groups") or []])


def verify(client_factory: Callable[[str, str], Any], path: str, server: str, layout_user: str) -> Identity:
    """One authenticated request to ``server`` with the credentials of ``path``; an error names both."""
    client = None
    try:
        client = client_factory(path, server)
        return review(client)
    except KubeAPIError as exc:
        who = f"user {layout_user!r} of " if layout_user else "the credentials of "
        raise KubeconfigServerError(
            f"verification failed: {server} did not accept an authenticated request with {who}{path}: {exc}"
        ) from exc
    finally:
        close = getattr(client, "close", None)
        if callable(close):
            close()


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


class Files:
    """Reading and writing the kubeconfig and its copies; the module replaces ``backup`` and ``move``."""

    def read(self, path: str, what: str = "") -> str:
        if not os.path.lexists(path):
            raise KubeconfigServerError(f"{what or path} does not exist")
        if not os.path.isfile(path):
            raise KubeconfigServerError(f"{what or path} is not a regular file")
        try:
            with open(path, encoding="utf-8", newline="") as handle:
                return handle.read()
        except PermissionError as exc:
            raise KubeconfigServerError(f"cannot read {path}: {exc.strerror} (run the task with become)") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise KubeconfigServerError(f"cannot read {path}: {exc}") from exc

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)

    def backup(self, path: str) -> str:
        """A timestamped copy next to the file (``<path>.<pid>.<YYYY-MM-DD@HH:MM:SS>~``), as Ansible names them."""
        dest = f"{path}.{os.getpid()}.{time.strftime('%Y-%m-%d@%H:%M:%S~')}"
        self.copy(path, dest)
        return dest

    def prune_backups(self, path: str) -> list[str]:
        """Only the newest ``BACKUPS_KEPT`` timestamped backups stay (the ``.kubeha-orig`` copy is another name)."""
        return prune_backups(path)

    def move(self, src: str, dest: str) -> None:
        os.replace(src, dest)

    def _temp_like(self, like: str, text: str) -> str:
        """A temporary file in ``like``'s directory holding ``text``, with ``like``'s mode and owner."""
        info = os.stat(like)
        fd, tmp = tempfile.mkstemp(prefix=".kubeha-", dir=os.path.dirname(os.path.abspath(like)))
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, info.st_mode & 0o7777)
            if os.geteuid() == 0:
                os.chown(tmp, info.st_uid, info.st_gid)
        except BaseException:
            os.unlink(tmp)
            raise
        return tmp

    def replace(self, path: str, text: str) -> None:
        """Atomically and durably replace ``path`` with ``text``, keeping its mode and owner."""
        tmp = self._temp_like(path, text)
        try:
            self.move(tmp, path)
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)
        fsync_directory(os.path.dirname(os.path.abspath(path)))

    def copy(self, src: str, dest: str) -> None:
        """``dest`` as an atomic, durable copy of ``src`` (mode and owner too); never visible half written."""
        atomic_write(dest, self.read(src), like=src)

    def remove(self, path: str) -> None:
        os.unlink(path)
        fsync_directory(os.path.dirname(os.path.abspath(path)))


# --------------------------------------------------------------------------------------------------
# The module's whole run
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    changed: bool
    path: str
    server: str | None
    before: str
    after: str
    verified: bool
    username: str | None
    groups: list[str]
    backup_file: str | None
    original_file: str
    diff: dict[str, str]
    warnings: list[str] = field(default_factory=list)
    restart_due: bool = False
    digest: str = ""

    def result(self) -> dict[str, Any]:
        """The module's return values (without ``diff`` and ``warnings``)."""
        return {
            "changed": self.changed,
            "path": self.path,
            "server": self.server,
            "before": self.before,
            "after": self.after,
            "verified": self.verified,
            "username": self.username,
            "groups": list(self.groups),
            "backup_file": self.backup_file,
            "original_file": self.original_file,
            "restart_due": self.restart_due,
            "digest": self.digest,
        }


def _failed_after(path: str, step: str, exc: Exception) -> KubeconfigServerError:
    return KubeconfigServerError(f"{path}: {step} failed: {exc}")


def run(
    params: Mapping[str, Any],
    client_factory: Callable[[str, str], Any],
    check_mode: bool,
    files: Files | None = None,
) -> Outcome:
    """Validate, read, plan, verify (also in check mode), then write (unless ``check_mode``).

    ``client_factory(path, server)`` returns an object with ``post`` for the credentials of the kubeconfig
    ``path`` sent to ``server``; it is called only to verify. Nothing is written when anything before the
    write fails.
    """
    files = files or Files()
    state = params.get("state") or "present"
    if state not in STATES:
        raise KubeconfigServerError(f"state {state!r} is not one of {', '.join(STATES)}")
    path = params.get("path")
    if not path or not isinstance(path, str):
        raise KubeconfigServerError("path is required: the kubeconfig file to change")
    if params.get("verify_always") and params.get("verify", True) is False:
        raise KubeconfigServerError("verify_always needs verify=true")
    timeout = params.get("timeout")
    if timeout is not None and timeout < 1:
        raise KubeconfigServerError(f"timeout must be 1 or more seconds, not {timeout}")
    raw_server = params.get("server")
    if state == "present" and raw_server is None:
        raise KubeconfigServerError("server is required with state=present")
    try:
        server = normalize_server(raw_server) if raw_server is not None else None
    except ClusterEndpointError as exc:
        raise KubeconfigServerError(str(exc)) from exc
    do_verify = params.get("verify", True) is not False
    verify_always = bool(params.get("verify_always"))
    do_backup = params.get("backup", True) is not False
    marker_path = params.get("restart_marker") or None
    original_path = path + ORIGINAL_SUFFIX

    text = files.read(path)
    layout = inspect(text, path)
    if server is not None and state == "present":
        plan = plan_present(text, server, path, files.exists(original_path))
        if verify_always and plan.verify_server is None:
            plan = Plan(plan.before, plan.after, plan.text_before, plan.text_after, server)
    else:
        original = files.read(original_path) if files.exists(original_path) else None
        plan = plan_absent(text, original, path, server)

    identity = None
    if do_verify and plan.verify_server is not None:
        identity = verify(client_factory, path, plan.verify_server, layout.user)
    warnings = [plan.warning] if plan.warning else []
    diff = {
        "before_header": path,
        "after_header": path,
        "before": redact(plan.text_before),
        "after": redact(plan.text_after),
    }

    digest_before = content_digest(plan.text_before)
    digest_after = content_digest(plan.text_after)
    marker = read_marker(marker_path) if marker_path else None

    def outcome(backup_file: str | None) -> Outcome:
        return Outcome(
            changed=plan.changed,
            path=path,
            server=server,
            before=plan.before,
            after=plan.after,
            verified=identity is not None,
            username=identity.username if identity else None,
            groups=identity.groups if identity else [],
            backup_file=backup_file,
            original_file=original_path,
            diff=diff,
            warnings=warnings,
            restart_due=bool(marker_path) and restart_due(marker, digest_before, digest_after),
            digest=digest_after,
        )

    if check_mode or not plan.changed:
        return outcome(None)
    if marker_path and plan.write:
        try:
            adopt_marker(marker_path, digest_before)
        except OSError as exc:
            raise KubeconfigServerError(
                f"{path}: recording in {marker_path} what the unit reads now failed: {exc}; nothing was changed"
            ) from exc
    backup_file = None
    if plan.keep_original:
        try:
            files.copy(path, original_path)
        except (OSError, KubeconfigServerError) as exc:
            raise _failed_after(path, f"keeping the original as {original_path}", exc) from exc
    if plan.write:
        if do_backup:
            try:
                backup_file = files.backup(path)
                files.prune_backups(path)
            except Exception as exc:  # AnsibleModule.backup_local raises a bare Exception
                raise _failed_after(path, "the backup", exc) from exc
        try:
            files.replace(path, plan.text_after)
        except Exception as exc:  # AnsibleModule.atomic_move raises a bare Exception
            raise _failed_after(path, "writing", exc) from exc
    if plan.remove_original:
        try:
            files.remove(original_path)
        except OSError as exc:
            raise _failed_after(path, f"removing {original_path} (the file itself is restored)", exc) from exc
    return outcome(backup_file)
