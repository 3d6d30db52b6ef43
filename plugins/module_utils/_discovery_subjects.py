# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the kubeha.apiserver collection: this is NOT a public API. It backs the
# kubeha.apiserver.discovery_access module and may change in any release without notice.

"""Who the discovery access is granted to, and under which names: the validation of discovery_access's input (pure).

Subjects that would give the grant to everyone (``system:authenticated``, ``system:unauthenticated``,
``system:anonymous``, every service account) are refused; names are checked as the apiserver checks them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

RBAC_GROUP = "rbac.authorization.k8s.io"
DEFAULT_NAME = "kubeha-apiserver:discovery"
DEFAULT_NAMESPACE = "default"
DEFAULT_SUBJECTS = ({"kind": "Group", "name": "system:nodes"},)
# Subjects that stand for everyone (or every workload): the grant is the nodes', never theirs.
BROAD_SUBJECTS = {
    ("Group", "system:authenticated"),
    ("Group", "system:unauthenticated"),
    ("User", "system:anonymous"),
    ("Group", "system:serviceaccounts"),
}
SUBJECT_KINDS = ("User", "Group", "ServiceAccount")

# What the apiserver accepts (k8s.io/apimachinery validation): a namespace is a DNS-1123 label, a service
# account name a DNS-1123 subdomain, an RBAC object name any path segment.
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


class DiscoveryAccessError(Exception):
    """The one error of this domain; its message is meant for the user as is."""


def validate_namespace(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise DiscoveryAccessError(f"namespace must be a non-empty string, not {value!r}")
    if len(value) > 63 or not _DNS_LABEL.fullmatch(value):
        raise DiscoveryAccessError(
            f"namespace {value!r} is not a valid namespace name (lower case letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters)"
        )
    return value


def validate_name(value: Any) -> str:
    """The Role and RoleBinding name: what the apiserver accepts for RBAC objects (a path segment)."""
    if not isinstance(value, str) or not value:
        raise DiscoveryAccessError(f"name must be a non-empty string, not {value!r}")
    if value in (".", "..") or "/" in value or "%" in value:
        raise DiscoveryAccessError(
            f"name {value!r} is not a valid Role name: it may not be '.' or '..' or hold '/' or '%'"
        )
    if value != value.strip() or len(value) > 253:
        raise DiscoveryAccessError(
            f"name {value!r} is not a valid Role name: no surrounding spaces, at most 253 characters"
        )
    return value


@dataclass(frozen=True, order=True)
class Subject:
    """A RoleBinding subject; ``namespace`` is set for a ServiceAccount only."""

    kind: str
    name: str
    namespace: str = ""

    @property
    def api_group(self) -> str:
        return "" if self.kind == "ServiceAccount" else RBAC_GROUP

    def to_api(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"kind": self.kind, "apiGroup": self.api_group, "name": self.name}
        if self.namespace:
            entry["namespace"] = self.namespace
        return entry

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"


def normalize_subjects(values: Any, namespace: str) -> list[Subject]:
    """The subjects, validated, in order and without duplicates.

    A ServiceAccount without a namespace is in the RoleBinding's ``namespace`` (as the RBAC authorizer
    reads it), and is written so. ``namespace`` is refused for a User or Group, where it means nothing.
    """
    if isinstance(values, (str, Mapping)) or not isinstance(values, Iterable):
        raise DiscoveryAccessError(f"subjects must be a list of {{kind, name, namespace}} mappings, not {values!r}")
    result: list[Subject] = []
    for index, value in enumerate(values):
        where = f"subjects[{index}]"
        if not isinstance(value, Mapping):
            raise DiscoveryAccessError(f"{where} must be a mapping with kind and name, not {value!r}")
        unknown = sorted(str(k) for k in value if k not in ("kind", "name", "namespace"))
        if unknown:
            raise DiscoveryAccessError(f"{where} has unknown keys {', '.join(unknown)} (known: kind, name, namespace)")
        kind = value.get("kind")
        if kind not in SUBJECT_KINDS:
            raise DiscoveryAccessError(f"{where}.kind {kind!r} is not one of {', '.join(SUBJECT_KINDS)}")
        name = value.get("name")
        if not isinstance(name, str) or not name.strip():
            raise DiscoveryAccessError(f"{where} ({kind}) has no name")
        if name != name.strip():
            raise DiscoveryAccessError(f"{where}.name {name!r} has leading or trailing spaces")
        subject_ns = value.get("namespace") or ""
        if not isinstance(subject_ns, str):
            raise DiscoveryAccessError(f"{where}.namespace must be a string, not {subject_ns!r}")
        if kind == "ServiceAccount":
            if len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name):
                raise DiscoveryAccessError(f"{where}.name {name!r} is not a valid ServiceAccount name")
            try:
                subject_ns = validate_namespace(subject_ns or namespace)
            except DiscoveryAccessError as exc:
                raise DiscoveryAccessError(f"{where}: {exc}") from exc
        elif subject_ns:
            raise DiscoveryAccessError(
                f"{where}: namespace is only meaningful for a ServiceAccount, not for {kind} {name!r}"
            )
        if (kind, name) in BROAD_SUBJECTS or (kind == "Group" and name.startswith("system:serviceaccounts:")):
            raise DiscoveryAccessError(
                f"{where} {kind} {name!r} stands for more than the nodes (everyone, or every workload): the "
                "discovery grant is for the nodes' identity (system:nodes) or a dedicated one"
            )
        subject = Subject(kind, name, subject_ns)
        if subject not in result:
            result.append(subject)
    if not result:
        raise DiscoveryAccessError("subjects is empty: give at least one subject, or use state=absent")
    return result
