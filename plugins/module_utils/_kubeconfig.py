# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to the kubeha.apiserver collection: not a public API, may change without notice.
"""Kubeconfig selection: the collection's one answer to "which context, cluster and user does this file use".

- ``select`` picks the context (the given name, else ``current-context``), its cluster and its user from a parsed
  kubeconfig (``yaml.safe_load``), with each one's index in its list for callers that edit the text in place;
- ``resolve_path`` / ``referenced_files``: file names in a kubeconfig are relative to its directory.

Pure logic: the callers read and parse the file (or the ConfigMap key). Errors are ``KubeconfigError``, one line
naming the file, the value and the reason.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SECTIONS = ("contexts", "clusters", "users")
# The keys whose value is a file name, per entry kind.
FILE_KEYS = {"cluster": ("certificate-authority",), "user": ("client-certificate", "client-key", "tokenFile")}


class KubeconfigError(Exception):
    """The one error of this domain; its message is meant for the user as is."""


@dataclass(frozen=True)
class Selection:
    """What one context of a kubeconfig uses. ``context`` is "" when there was none (cluster-info); ``user`` is
    ``None`` when the context names no user, or (``require_user=False``) one that is not defined."""

    source: str
    context: str
    cluster_name: str
    cluster_index: int
    cluster: Mapping[str, Any]
    user_name: str = ""
    user_index: int | None = None
    user: Mapping[str, Any] | None = None


def _name(entry: Mapping[str, Any]) -> Any:
    # A missing or null name is "", as kubectl reads it (cluster-info's one cluster is named "").
    name = entry.get("name")
    return "" if name is None else name


def _section(doc: Mapping[str, Any], section: str, source: str) -> list[tuple[int, Mapping[str, Any]]]:
    """The mapping entries of ``doc[section]`` with their index in the list; a name used twice is refused."""
    entries = doc.get(section)
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise KubeconfigError(f"{source}: {section} is not a list")
    found = [(index, entry) for index, entry in enumerate(entries) if isinstance(entry, Mapping)]
    names = [_name(entry) for _index, entry in found]
    for name in names:
        count = names.count(name)
        # Anywhere in the file, not only for the names in use: kubectl refuses such a file too, so no two
        # tools would agree on which entry is meant.
        if count > 1:
            raise KubeconfigError(
                f"{source}: {section} has {count} entries named {name!r}: which one is meant is ambiguous "
                "(kubectl refuses such a file too)"
            )
    return found


def _named(
    entries: list[tuple[int, Mapping[str, Any]]], name: str, inner: str, section: str, source: str
) -> tuple[int, Mapping[str, Any]]:
    """The index and the ``inner`` mapping of the entry ``name`` of ``section``."""
    for index, entry in entries:
        if _name(entry) == name:
            value = entry.get(inner)
            if value is None:
                return index, {}
            if not isinstance(value, Mapping):
                raise KubeconfigError(f"{source}: {section} entry {name!r} has a {inner} that is not a mapping")
            return index, value
    known = ", ".join(str(_name(entry)) for _index, entry in entries) or "none"
    raise KubeconfigError(f"{source}: {inner} {name!r} is not defined in {section} (defined: {known})")


def select(
    doc: Any,
    source: str,
    context: str | None = None,
    *,
    require_user: bool = True,
    allow_no_context: bool = False,
) -> Selection:
    """The context ``context`` (default: ``current-context``) of the kubeconfig ``doc`` read from ``source``.

    ``require_user=False``: the context may name no user, or one that is not defined (the caller edits or reads
    the cluster only). ``allow_no_context``: with no context given and no ``current-context``, the one cluster of
    the file (kube-public/cluster-info has no context); more than one is refused.
    """
    if not isinstance(doc, Mapping):
        raise KubeconfigError(
            f"{source} is not a kubeconfig: a YAML mapping with clusters, contexts and users is expected"
        )
    contexts, clusters, users = (_section(doc, section, source) for section in SECTIONS)
    name = context or doc.get("current-context")
    if not name:
        if not allow_no_context:
            raise KubeconfigError(f"{source}: no context was given and current-context is not set")
        if len(clusters) != 1:
            raise KubeconfigError(
                f"{source}: current-context is not set and clusters has {len(clusters)} entries: "
                "which one is meant is ambiguous"
            )
        index, entry = clusters[0]
        cluster = entry.get("cluster")
        if cluster is not None and not isinstance(cluster, Mapping):
            raise KubeconfigError(f"{source}: clusters entry {_name(entry)!r} has a cluster that is not a mapping")
        return Selection(source, "", str(_name(entry)), index, cluster or {})
    if not isinstance(name, str):
        raise KubeconfigError(f"{source}: current-context {name!r} is not a string")

    _context_index, ctx = _named(contexts, name, "context", "contexts", source)
    cluster_name = ctx.get("cluster")
    if not cluster_name:
        raise KubeconfigError(f"{source}: context {name!r} names no cluster")
    cluster_index, cluster = _named(clusters, str(cluster_name), "cluster", "clusters", source)
    user_name = str(ctx.get("user") or "")
    if not user_name:
        if require_user:
            raise KubeconfigError(f"{source}: context {name!r} names no user")
        return Selection(source, name, str(cluster_name), cluster_index, cluster)
    try:
        user_index, user = _named(users, user_name, "user", "users", source)
    except KubeconfigError:
        if require_user:
            raise
        return Selection(source, name, str(cluster_name), cluster_index, cluster, user_name)
    return Selection(source, name, str(cluster_name), cluster_index, cluster, user_name, user_index, user)


def resolve_path(source: str, value: str) -> str:
    """A file named in the kubeconfig ``source``: a relative name is relative to the kubeconfig's directory."""
    # As kubectl resolves them: not to the working directory, which is Ansible's temporary one on the node.
    return value if os.path.isabs(value) else os.path.join(os.path.dirname(os.path.abspath(source)), value)


def referenced_files(selection: Selection) -> dict[str, str]:
    """The files the selected cluster and user name, absolute, by key (``certificate-authority``,
    ``client-certificate``, ``client-key``, ``tokenFile``); keys that are unset are left out."""
    files: dict[str, str] = {}
    for kind, name, entry in (
        ("cluster", selection.cluster_name, selection.cluster),
        ("user", selection.user_name, selection.user or {}),
    ):
        for key in FILE_KEYS[kind]:
            value = entry.get(key)
            if not value:
                continue
            if not isinstance(value, str):
                raise KubeconfigError(f"{selection.source}: {kind}s[{name}].{key} {value!r} is not a file name")
            files[key] = resolve_path(selection.source, value)
    return files


def embedded_data(entry: Mapping[str, Any], key: str, where: str) -> bytes | None:
    """The bytes of ``<key>-data`` (base64, line breaks allowed) in a cluster or user entry; ``None`` when unset.

    ``where`` names the entry in messages (``admin.conf: users[admin]``).
    """
    data = entry.get(f"{key}-data")
    if not data:
        return None
    if not isinstance(data, str):
        raise KubeconfigError(f"{where}.{key}-data is not a base64 string")
    try:
        return base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KubeconfigError(f"{where}.{key}-data is not valid base64") from exc


def load_selection(path: str, context: str | None, yaml: Any) -> tuple[Selection, dict[str, str]]:
    """Read and parse the kubeconfig file ``path`` (with the PyYAML module ``yaml``), select ``context`` (default:
    ``current-context``): the selection and the files it names (``referenced_files``). The one reader of a kubeconfig
    file for the apiserver client and kubeconfig_client_cert."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        hint = " (run the task with become)" if isinstance(exc, PermissionError) else ""
        raise KubeconfigError(f"cannot read the kubeconfig {path}: {exc.strerror or exc}{hint}") from exc
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise KubeconfigError(f"{path} is not valid YAML: {exc}") from exc
    selection = select(doc, path, context)
    return selection, referenced_files(selection)
