# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the kubeha.apiserver collection: this is NOT a public API. It backs the
# kubeha.apiserver.cluster_endpoint module and may change in any release without notice.

"""The cluster-side objects that name the apiserver endpoint: validation, pure planners, in-place edits, run.

Three ConfigMaps are handled:

- ``kube-public/cluster-info``, key ``kubeconfig``: the ``server`` of its cluster (kubeadm's discovery);
- ``kube-system/kube-proxy``, key ``kubeconfig.conf``: the same ``server``;
- ``kube-system/kubeadm-config``, key ``ClusterConfiguration``: entries of ``apiServer.certSANs``.

Texts are edited in place: the YAML is composed with PyYAML to find the exact characters of the value
(or the lines of the list items) to change, everything else stays byte-for-byte, and the edited text is
parsed again and must equal the intended document. The server a kubeconfig had before is kept in an
annotation of its ConfigMap so that ``absent`` puts it back exactly. Everything except ``run`` and
``wait_signed`` is pure logic.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import copy
import dataclasses
import datetime
import hashlib
import hmac
import ipaddress
import json
import re
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ansible_collections.kubeha.apiserver.plugins.module_utils._endpoint import EndpointError, parse_port
from ansible_collections.kubeha.apiserver.plugins.module_utils._kubeapi import (
    KubeAPIError,
    daemonset_path,
    daemonset_restart_due,
    import_yaml,
    object_path,
    record_running_configuration,
    restarted_for,
    rollout_restart,
    update_with_retry,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._kubeconfig import KubeconfigError, select
from ansible_collections.kubeha.apiserver.plugins.module_utils._san import (
    SanError,
    dns_name_problem,
    parse_san,
    san_key,
)

ANNOTATION = "kubeha.apiserver/original-server"
STATES = ("present", "absent")
CLUSTER_INFO, KUBEADM_CONFIG, KUBE_PROXY = "cluster_info", "kubeadm_config", "kube_proxy"
TARGETS = (CLUSTER_INFO, KUBEADM_CONFIG, KUBE_PROXY)
KUBEADM_API_GROUP = "kubeadm.k8s.io"
BOOTSTRAP_TOKEN_TYPE = "bootstrap.kubernetes.io/token"
JWS_PREFIX = "jws-kubeconfig-"

_LINE_BREAK = re.compile(r"\r\n|\n|\r")
_ITEM_PREFIX = re.compile(r"[ \t]*-[ \t]+")
_TOKEN_SECRET_NAME = re.compile(r"bootstrap-token-([a-z0-9]{6})")


class ClusterEndpointError(Exception):
    """The one error of this domain; its message is meant for the user as is."""


class AfterChangeError(ClusterEndpointError):
    """Something failed after objects were already changed; ``outcome`` says which."""

    def __init__(self, message: str, outcome: Outcome) -> None:
        super().__init__(message)
        self.outcome = outcome


@dataclass(frozen=True)
class Target:
    """One ConfigMap key this module edits."""

    name: str
    namespace: str
    configmap: str
    key: str

    @property
    def object(self) -> str:
        return f"{self.namespace}/{self.configmap}"

    @property
    def where(self) -> str:
        return f"ConfigMap {self.object}, key {self.key}"

    @property
    def path(self) -> str:
        return object_path("/api/v1", self.namespace, "configmaps", self.configmap)


TARGET_SPECS = {
    CLUSTER_INFO: Target(CLUSTER_INFO, "kube-public", "cluster-info", "kubeconfig"),
    KUBEADM_CONFIG: Target(KUBEADM_CONFIG, "kube-system", "kubeadm-config", "ClusterConfiguration"),
    KUBE_PROXY: Target(KUBE_PROXY, "kube-system", "kube-proxy", "kubeconfig.conf"),
}


# --------------------------------------------------------------------------------------------------
# Validation of the input
# --------------------------------------------------------------------------------------------------


def normalize_server(value: Any) -> str:
    """``https://<host>[:<port>]`` with the host in canonical form; ``ClusterEndpointError`` naming the problem."""
    example = "such as https://169.254.100.1:6444 or https://[fd6b:6861::1]:6444"
    if not isinstance(value, str) or not value.strip():
        raise ClusterEndpointError(f"server must be an https:// URL {example}, not {value!r}")
    text = value.strip()
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError as exc:
        raise ClusterEndpointError(f"server {text!r} is not a valid URL: {exc}") from exc
    if parts.scheme.lower() != "https":
        raise ClusterEndpointError(f"server {text!r} is not an https:// URL {example}")
    netloc = parts.netloc
    if "@" in netloc:
        raise ClusterEndpointError(f"server {text!r} carries user information, which a kubeconfig server cannot have")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ClusterEndpointError(f"server {text!r} has a path, query or fragment: give only https://<host>:<port>")
    if netloc.startswith("["):
        end = netloc.find("]")
        literal, port_part = netloc[1:end], netloc[end + 1 :]
        if "%" in literal:
            raise ClusterEndpointError(f"server {text!r} carries an IPv6 zone index, which TLS clients cannot use")
        try:
            host = f"[{ipaddress.IPv6Address(literal)}]"
        except ValueError as exc:
            raise ClusterEndpointError(f"server {text!r}: [{literal}] is not a valid IPv6 address") from exc
    else:
        name, colon, port = netloc.rpartition(":")
        name, port_part = (name, colon + port) if colon else (netloc, "")
        if ":" in name:
            raise ClusterEndpointError(
                f"server {text!r}: an IPv6 address must be written in brackets, as in https://[fd6b:6861::1]:6444"
            )
        host = name.lower()
        if not host:
            raise ClusterEndpointError(f"server {text!r} has no host")
        try:
            host = str(ipaddress.IPv4Address(host))
        except ValueError as exc:
            if dns_name_problem(host, wildcard=False):
                raise ClusterEndpointError(
                    f"server {text!r}: {name!r} is neither an IPv4 address nor a valid DNS name"
                ) from exc
    if port_part:
        digits = port_part[1:] if port_part.startswith(":") else None
        try:
            return f"https://{host}:{parse_port(digits or '')}"
        except EndpointError:
            raise ClusterEndpointError(
                f"server {text!r} has an invalid port {port_part.lstrip(':')!r} (1-65535)"
            ) from None
    return f"https://{host}"


def server_host(server: str) -> str:
    """The host of a normalized server URL, without brackets."""
    netloc = urllib.parse.urlsplit(server).netloc
    if netloc.startswith("["):
        return netloc[1 : netloc.index("]")]
    return netloc.rpartition(":")[0] if ":" in netloc else netloc


def normalize_san(value: Any) -> str:
    """One certificate SAN: an IP address (canonical) or a DNS name, possibly a ``*.`` wildcard (lower case)."""
    if not isinstance(value, str) or not value.strip():
        raise ClusterEndpointError(f"cert_sans: {value!r} is not an IP address or a DNS name")
    text = value.strip()
    try:
        return parse_san(text, prefixes=False).value
    except SanError as exc:
        # "'10.0.0.0/8' is a network": the reason's subject is the value named before it.
        raise ClusterEndpointError(f"cert_sans: {text!r} {str(exc).removeprefix('it ')}") from None


def normalize_sans(values: Any) -> list[str]:
    """Canonical SANs in order, without duplicates (``[]`` for none)."""
    if values is None:
        return []
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise ClusterEndpointError(f"cert_sans must be a list of IP addresses and DNS names, not {values!r}")
    result: list[str] = []
    for value in values:
        san = normalize_san(value)
        if san_key(san) not in {san_key(s) for s in result}:
            result.append(san)
    return result


def normalize_targets(values: Any) -> list[str]:
    """The targets in the module's fixed order; unknown names are refused."""
    if values is None:
        return list(TARGETS)
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise ClusterEndpointError(f"targets must be a list of {', '.join(TARGETS)}, not {values!r}")
    wanted = [str(v) for v in values]
    unknown = [v for v in wanted if v not in TARGETS]
    if unknown:
        raise ClusterEndpointError(f"unknown target {unknown[0]!r}: targets are {', '.join(TARGETS)}")
    if not wanted:
        raise ClusterEndpointError(f"targets is empty: name at least one of {', '.join(TARGETS)}")
    return [t for t in TARGETS if t in wanted]


# --------------------------------------------------------------------------------------------------
# Text helpers: lines, positions, scalars
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Lines:
    """A text as ``(content, break)`` lines, with the character offset where each line starts."""

    lines: list[tuple[str, str]]
    starts: list[int]
    eol: str

    @classmethod
    def of(cls, text: str) -> _Lines:
        lines: list[tuple[str, str]] = []
        starts: list[int] = []
        pos = 0
        for match in _LINE_BREAK.finditer(text):
            starts.append(pos)
            lines.append((text[pos : match.start()], match.group()))
            pos = match.end()
        if pos < len(text):
            starts.append(pos)
            lines.append((text[pos:], ""))
        eol = next((brk for _content, brk in lines if brk), "\n")
        return cls(lines, starts, eol)

    def line_of(self, index: int) -> int:
        """The number of the line holding character ``index``."""
        return max(bisect.bisect_right(self.starts, index) - 1, 0)

    def before(self, index: int) -> str:
        """The text of ``index``'s line before ``index``."""
        number = self.line_of(index)
        return self.lines[number][0][: index - self.starts[number]]

    def rebuild(self, edits: Mapping[int, list[str]]) -> str:
        """The text with line ``n`` replaced by the contents ``edits[n]`` (none: the line is removed).

        New lines get the text's line break; the last line of a replacement keeps the replaced line's.
        The text keeps its convention for a final line break.
        """
        out: list[tuple[str, str]] = []
        for number, (content, brk) in enumerate(self.lines):
            new = edits.get(number, [content])
            out.extend((line, brk if i == len(new) - 1 else self.eol) for i, line in enumerate(new))
        if out and self.lines and self.lines[-1][1] == "" and out[-1][1] != "":
            out[-1] = (out[-1][0], "")
        return "".join(content + brk for content, brk in out)


def _compose(text: Any, what: str) -> Any:
    """The YAML node tree of ``text`` (PyYAML's ``compose``)."""
    if not isinstance(text, str):
        raise ClusterEndpointError(f"{what} is not text but {type(text).__name__}")
    yaml = import_yaml()
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ClusterEndpointError(f"{what} is not valid YAML: {exc}") from exc
    if node is None or not isinstance(node, yaml.MappingNode):
        raise ClusterEndpointError(f"{what} is not a YAML mapping")
    return node


def _load(text: str) -> Any:
    yaml = import_yaml()
    return yaml.safe_load(text)


def _member(node: Any, key: str) -> tuple[Any, Any] | None:
    """``(key node, value node)`` of ``key`` in a mapping node, or ``None``."""
    yaml = import_yaml()
    if not isinstance(node, yaml.MappingNode):
        return None
    for key_node, value_node in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
            return key_node, value_node
    return None


def _is_null(node: Any) -> bool:
    yaml = import_yaml()
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _render_scalar(value: str, style: str | None) -> list[str]:
    """Spellings of ``value`` to try, in the given scalar style first (plain, ``'`` or ``"``)."""
    double = json.dumps(value)
    if style == '"':
        return [double]
    if style == "'":
        return ["'" + value.replace("'", "''") + "'", double]
    return [value, double]


# --------------------------------------------------------------------------------------------------
# kubeconfig ``server``: read, plan, edit
# --------------------------------------------------------------------------------------------------


def _server_node(text: Any, what: str) -> tuple[Any, int]:
    """The scalar node of the server of the kubeconfig's cluster, and that cluster's index in ``clusters``.

    The cluster is the one ``_kubeconfig.select`` picks: the current context's (kube-proxy's kubeconfig), else
    the only one (cluster-info, whose current-context is empty, as kubeadm's discovery reads it).
    """
    yaml = import_yaml()
    root = _compose(text, what)
    clusters = _member(root, "clusters")
    if clusters is None or not isinstance(clusters[1], yaml.SequenceNode) or not clusters[1].value:
        raise ClusterEndpointError(f"{what} has no clusters")
    # The selection reads the parsed document; the index finds the same entry among the nodes, to edit in place.
    try:
        doc = _load(text)
    except yaml.YAMLError as exc:
        raise ClusterEndpointError(f"{what} is not valid YAML: {exc}") from exc
    try:
        index = select(doc, what, require_user=False, allow_no_context=True).cluster_index
    except KubeconfigError as exc:
        raise ClusterEndpointError(str(exc)) from exc
    if index >= len(clusters[1].value):  # a second top-level clusters key: the parse and the nodes disagree
        raise ClusterEndpointError(f"{what}: clusters is not laid out in a way this module can edit")
    entry = clusters[1].value[index]
    cluster = _member(entry, "cluster")
    server = _member(cluster[1], "server") if cluster else None
    if server is None:
        raise ClusterEndpointError(f"{what}: clusters[{index}].cluster has no server")
    node = server[1]
    if (
        not isinstance(node, yaml.ScalarNode)
        or node.tag != "tag:yaml.org,2002:str"
        or node.style not in (None, "'", '"')
        or node.start_mark.line != node.end_mark.line
    ):
        raise ClusterEndpointError(
            f"{what}: clusters[{index}].cluster.server is not a one-line string, which this module cannot edit"
        )
    return node, index


def kubeconfig_server(text: Any, what: str = "the kubeconfig") -> str:
    """The server of the kubeconfig text (see ``_server_node`` for which cluster)."""
    node, _index = _server_node(text, what)
    return str(node.value)


def set_server(text: str, server: str, what: str = "the kubeconfig") -> str:
    """``text`` with only the characters of the server's value replaced; verified by parsing it again."""
    node, index = _server_node(text, what)
    if node.value == server:
        return text
    expected = _load(text)
    expected["clusters"][index]["cluster"]["server"] = server
    start, end = node.start_mark.index, node.end_mark.index
    yaml = import_yaml()
    for spelling in _render_scalar(server, node.style):
        candidate = text[:start] + spelling + text[end:]
        try:
            reparsed = _load(candidate)
        except yaml.YAMLError:
            continue  # not valid there (a plain scalar in a flow mapping, say): the next spelling
        if reparsed == expected:
            return candidate
    raise ClusterEndpointError(
        f"{what}: setting clusters[{index}].cluster.server in place did not give the intended kubeconfig; it is "
        "laid out in a way this module does not handle"
    )


@dataclass(frozen=True)
class ServerPlan:
    """What a kubeconfig key's ``server`` is and is to be, with the annotation that remembers the original."""

    target: Target
    before: str
    after: str
    original_before: str | None
    original_after: str | None
    text_before: str
    text_after: str
    message: str = ""
    warning: str = ""

    @property
    def changed(self) -> bool:
        return self.text_before != self.text_after or self.original_before != self.original_after

    def result(self) -> dict[str, Any]:
        return {
            "object": self.target.object,
            "key": self.target.key,
            "changed": self.changed,
            "skipped": False,
            "before": self.before,
            "after": self.after,
            "original_server": self.original_after,
            "message": self.message,
        }

    def diff(self) -> dict[str, Any]:
        header = f"{self.target.where} (and annotation {ANNOTATION})"
        return {
            "before": _annotated(self.text_before, self.original_before),
            "after": _annotated(self.text_after, self.original_after),
            "before_header": header,
            "after_header": header,
        }


def _annotated(text: str, original: str | None) -> str:
    head = f"# metadata.annotations[{ANNOTATION}]: {original}\n" if original is not None else ""
    return head + text + ("" if text.endswith(("\n", "\r")) else "\n")


def _data(obj: Mapping[str, Any], target: Target) -> str:
    data = obj.get("data") or {}
    if target.key not in data:
        keys = ", ".join(sorted(data)) or "none"
        raise ClusterEndpointError(f"ConfigMap {target.object} has no key {target.key!r} (keys: {keys})")
    return data[target.key]


def _annotations(obj: Mapping[str, Any]) -> dict[str, Any]:
    return dict((obj.get("metadata") or {}).get("annotations") or {})


def plan_server(obj: Mapping[str, Any], target: Target, server: str | None, state: str) -> ServerPlan:
    """The plan for one ConfigMap whose key is a kubeconfig (pure).

    ``present``: point the server at ``server``; the server found first is kept in the annotation
    (an existing annotation is kept: it already holds the original). ``absent``: put the annotated
    server back and drop the annotation; without the annotation nothing is changed.
    """
    text = _data(obj, target)
    what = target.where
    current = kubeconfig_server(text, what)
    original = _annotations(obj).get(ANNOTATION)
    if original is not None and not isinstance(original, str):
        raise ClusterEndpointError(f"ConfigMap {target.object}: annotation {ANNOTATION} is not a string")
    if state == "present":
        if server is None:
            raise ClusterEndpointError("server is required with state=present")
        if original is None and current == server:
            warning = (
                f"{what} already points at {server} but has no {ANNOTATION} annotation: the server it had before "
                "is unknown, so state=absent will leave it as it is"
            )
            return ServerPlan(target, current, current, None, None, text, text, warning=warning)
        keep = original if original is not None else current
        new_text = set_server(text, server, what)
        return ServerPlan(target, current, server, original, keep, text, new_text)
    if original is None:
        message = f"no {ANNOTATION} annotation: nothing to restore"
        warning = ""
        if server is not None and current == server:
            warning = f"{what} points at {server} but has no {ANNOTATION} annotation: it is left as it is"
        return ServerPlan(target, current, current, None, None, text, text, message=message, warning=warning)
    new_text = set_server(text, original, what)
    return ServerPlan(target, current, original, original, None, text, new_text)


def apply_server(obj: dict[str, Any], plan: ServerPlan) -> dict[str, Any]:
    """``obj`` (a ConfigMap) changed as ``plan`` says: its key's text and the annotation."""
    obj.setdefault("data", {})[plan.target.key] = plan.text_after
    metadata = obj.setdefault("metadata", {})
    annotations = dict(metadata.get("annotations") or {})
    if plan.original_after is None:
        annotations.pop(ANNOTATION, None)
    else:
        annotations[ANNOTATION] = plan.original_after
    if annotations:
        metadata["annotations"] = annotations
    else:
        metadata.pop("annotations", None)
    return obj


# --------------------------------------------------------------------------------------------------
# kubeadm ClusterConfiguration ``apiServer.certSANs``: read, plan, edit
# --------------------------------------------------------------------------------------------------


def parse_cluster_configuration(text: Any, what: str = "ClusterConfiguration") -> dict[str, Any]:
    """The kubeadm ClusterConfiguration in ``text``, checked for the fields this module reads."""
    _compose(text, what)
    config = _load(text)
    if config.get("kind") != "ClusterConfiguration":
        raise ClusterEndpointError(f"{what} is of kind {config.get('kind')!r}, not ClusterConfiguration")
    api_version = config.get("apiVersion")
    if not isinstance(api_version, str) or not api_version.startswith(f"{KUBEADM_API_GROUP}/"):
        raise ClusterEndpointError(f"{what} has apiVersion {api_version!r}, not {KUBEADM_API_GROUP}/<version>")
    api_server = config.get("apiServer")
    if api_server is not None and not isinstance(api_server, dict):
        raise ClusterEndpointError(f"{what}: apiServer is {api_server!r}, not a mapping")
    sans = (api_server or {}).get("certSANs")
    if sans is not None and not isinstance(sans, list):
        raise ClusterEndpointError(f"{what}: apiServer.certSANs is {sans!r}, not a list")
    return config


def current_sans(config: Mapping[str, Any]) -> list[Any]:
    return list((config.get("apiServer") or {}).get("certSANs") or [])


def plan_sans(existing: list[Any], sans: list[str], state: str) -> tuple[list[Any], list[str], list[Any]]:
    """``(new list, added, removed)``: existing entries keep their spelling and order (pure)."""
    have = {san_key(entry) for entry in existing}
    if state == "present":
        added = [san for san in sans if san_key(san) not in have]
        return existing + added, added, []
    unwanted = {san_key(san) for san in sans}
    removed = [entry for entry in existing if san_key(entry) in unwanted]
    return [entry for entry in existing if san_key(entry) not in unwanted], [], removed


def _scalar(value: str) -> str:
    """A plain YAML scalar when it reads back as the same string, else a double-quoted one."""
    yaml = import_yaml()
    try:
        if _load(f"- {value}") == [value]:
            return value
    except yaml.YAMLError:
        pass
    return json.dumps(value)


def _edit_sans(text: str, new_sans: list[Any], what: str) -> str:
    """``text`` with ``apiServer.certSANs`` set to ``new_sans`` by adding or removing whole lines.

    Additions go after the last entry (in its indentation) or into a new ``certSANs:`` block, which
    is the first key of ``apiServer`` as kubeadm sorts them. Removing the last entry removes the key,
    and ``apiServer`` left with no key is written ``apiServer: {}`` as kubeadm writes it.
    """
    yaml = import_yaml()
    root = _compose(text, what)
    lines = _Lines.of(text)
    api = _member(root, "apiServer")
    sans = _member(api[1], "certSANs") if api else None

    def indent_of(node: Any) -> str:
        head = lines.before(node.start_mark.index)
        if head.strip():
            raise ClusterEndpointError(
                f"{what}: line {node.start_mark.line + 1} is not laid out as a block mapping this module can edit"
            )
        return head

    def block(indent: str, values: list[Any]) -> list[str]:
        return [f"{indent}certSANs:"] + [f"{indent}- {_scalar(str(v))}" for v in values]

    if sans is not None and isinstance(sans[1], yaml.SequenceNode) and sans[1].value:
        if sans[1].flow_style:
            raise ClusterEndpointError(
                f"{what}: apiServer.certSANs is written inline ([...]), which cannot be edited line by line: write "
                "it as a block list"
            )
        items: list[tuple[Any, int]] = []
        for item in sans[1].value:
            if (
                not isinstance(item, yaml.ScalarNode)
                or item.start_mark.line != item.end_mark.line
                or not _ITEM_PREFIX.fullmatch(lines.before(item.start_mark.index))
            ):
                raise ClusterEndpointError(
                    f"{what}: apiServer.certSANs holds an entry this module cannot edit line by line "
                    f"(line {item.start_mark.line + 1})"
                )
            items.append((item, lines.line_of(item.start_mark.index)))
        old_keys = {san_key(item.value) for item, _line in items}
        new_keys = {san_key(v) for v in new_sans}
        edits: dict[int, list[str]] = {}
        for item, line in items:
            if san_key(item.value) not in new_keys:
                edits[line] = []
        added = [v for v in new_sans if san_key(v) not in old_keys]
        if added:
            last_item, last = items[-1]
            prefix = lines.before(last_item.start_mark.index)
            edits[last] = [*edits.get(last, [lines.lines[last][0]]), *(prefix + _scalar(str(v)) for v in added)]
        if not new_sans:
            edits[lines.line_of(sans[0].start_mark.index)] = []
            if len(api[1].value) == 1:
                edits[lines.line_of(api[0].start_mark.index)] = [f"{indent_of(api[0])}apiServer: {{}}"]
        return lines.rebuild(edits)
    if sans is not None and not (_is_null(sans[1]) or isinstance(sans[1], yaml.SequenceNode)):
        raise ClusterEndpointError(f"{what}: apiServer.certSANs is not a list")

    # No entries yet: nothing to remove, and a new block to write for additions.
    if not new_sans:
        return text
    if sans is not None:  # "certSANs:", "certSANs: null" or "certSANs: []"
        return lines.rebuild({lines.line_of(sans[0].start_mark.index): block(indent_of(sans[0]), new_sans)})
    if api is not None and isinstance(api[1], yaml.MappingNode) and api[1].value:
        if api[1].flow_style:
            raise ClusterEndpointError(
                f"{what}: apiServer is written inline ({{...}}), which cannot be edited line by line: write it as "
                "a block mapping"
            )
        first = api[1].value[0][0]
        line = lines.line_of(first.start_mark.index)
        return lines.rebuild({line: [*block(indent_of(first), new_sans), lines.lines[line][0]]})
    if api is not None:  # "apiServer:", "apiServer: null" or "apiServer: {}"
        if not (_is_null(api[1]) or isinstance(api[1], yaml.MappingNode)):
            raise ClusterEndpointError(f"{what}: apiServer is not a mapping")
        indent = indent_of(api[0])
        line = lines.line_of(api[0].start_mark.index)
        return lines.rebuild({line: [f"{indent}apiServer:", *block(indent + "  ", new_sans)]})
    if root.flow_style or not root.value:
        raise ClusterEndpointError(f"{what} is not laid out as a block mapping this module can edit")
    first = root.value[0][0]
    indent_of(first)
    line = lines.line_of(first.start_mark.index)
    return lines.rebuild({line: ["apiServer:", *block("  ", new_sans), lines.lines[line][0]]})


def render_sans(text: str, config: Mapping[str, Any], new_sans: list[Any], what: str = "ClusterConfiguration") -> str:
    """``text`` with ``apiServer.certSANs`` equal to ``new_sans`` (the key removed when empty), verified."""
    if list(new_sans) == current_sans(config):
        return text
    new_text = _edit_sans(text, list(new_sans), what)
    expected = copy.deepcopy(dict(config))
    api_server = dict(expected.get("apiServer") or {})
    if new_sans:
        api_server["certSANs"] = list(new_sans)
    else:
        api_server.pop("certSANs", None)
    if new_sans or expected.get("apiServer") is not None:
        expected["apiServer"] = api_server
    yaml = import_yaml()
    try:
        reparsed = _load(new_text)
    except yaml.YAMLError as exc:
        raise ClusterEndpointError(f"{what}: editing apiServer.certSANs in place produced invalid YAML: {exc}") from exc
    if reparsed != expected:
        raise ClusterEndpointError(
            f"{what}: editing apiServer.certSANs in place did not give the intended configuration; the text is laid "
            "out in a way this module does not handle: set the value by hand"
        )
    return new_text


@dataclass(frozen=True)
class SansPlan:
    """What ``apiServer.certSANs`` is and is to be; ``skipped`` when the cluster has no kubeadm-config."""

    target: Target
    before: list[Any] = field(default_factory=list)
    after: list[Any] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[Any] = field(default_factory=list)
    text_before: str = ""
    text_after: str = ""
    control_plane_endpoint: str | None = None
    skipped: bool = False
    message: str = ""

    @property
    def changed(self) -> bool:
        return self.text_before != self.text_after

    def result(self) -> dict[str, Any]:
        return {
            "object": self.target.object,
            "key": self.target.key,
            "changed": self.changed,
            "skipped": self.skipped,
            "before": [str(v) for v in self.before],
            "after": [str(v) for v in self.after],
            "added": list(self.added),
            "removed": [str(v) for v in self.removed],
            "control_plane_endpoint": self.control_plane_endpoint,
            "message": self.message,
        }

    def diff(self) -> dict[str, Any]:
        header = self.target.where
        return {
            "before": self.text_before,
            "after": self.text_after,
            "before_header": header,
            "after_header": header,
        }


def plan_kubeadm_config(obj: Mapping[str, Any] | None, target: Target, sans: list[str], state: str) -> SansPlan:
    """The plan for kubeadm-config (pure); ``obj`` is ``None`` when the ConfigMap does not exist."""
    if obj is None:
        return SansPlan(target, skipped=True, message=_no_kubeadm_config(target, "does not exist"))
    data = obj.get("data") or {}
    if target.key not in data:
        return SansPlan(target, skipped=True, message=_no_kubeadm_config(target, f"has no key {target.key}"))
    text = data[target.key]
    config = parse_cluster_configuration(text, target.where)
    endpoint = config.get("controlPlaneEndpoint")
    endpoint = None if endpoint is None else str(endpoint)
    existing = current_sans(config)
    new_sans, added, removed = plan_sans(existing, sans, state)
    new_text = render_sans(text, config, new_sans, target.where) if (added or removed) else text
    return SansPlan(target, existing, new_sans, added, removed, text, new_text, endpoint)


def _no_kubeadm_config(target: Target, why: str) -> str:
    return (
        f"ConfigMap {target.object} {why}: the cluster was not set up with kubeadm (or its configuration was not "
        "uploaded), so its certSANs were not checked; add the SANs to the apiserver certificates by the means that "
        "made them"
    )


# --------------------------------------------------------------------------------------------------
# Bootstrap-token signatures of cluster-info (what kubeadm's discovery checks)
# --------------------------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def detached_jws(content: str, token_id: str, token_secret: str) -> str:
    """The detached JWS (HS256) the bootstrapsigner writes as ``jws-kubeconfig-<token_id>``.

    ``<header>..<signature>``: the compact serialization with the payload (``content``) left out, the
    header being ``{"alg":"HS256","kid":"<token_id>"}`` and the key the token secret.
    """
    header = _b64url(json.dumps({"alg": "HS256", "kid": token_id}, separators=(",", ":")).encode("utf-8"))
    signing_input = f"{header}.{_b64url(content.encode('utf-8'))}".encode("ascii")
    signature = hmac.new(token_secret.encode("utf-8"), signing_input, hashlib.sha256).digest()
    return f"{header}..{_b64url(signature)}"


def signature_valid(detached: Any, content: str, token_id: str, token_secret: str) -> bool:
    """Whether ``detached`` is the signature of ``content`` by that token, as kubeadm's discovery decides."""
    if not isinstance(detached, str):
        return False
    return hmac.compare_digest(detached.encode(), detached_jws(content, token_id, token_secret).encode())


def _secret_value(secret: Mapping[str, Any], key: str) -> str:
    raw = (secret.get("data") or {}).get(key)
    if not raw:
        return ""
    try:
        return base64.b64decode(raw, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return ""


def _expired(expiration: str, now: datetime.datetime) -> bool:
    """As the bootstrapsigner decides: an expiration that cannot be parsed counts as expired."""
    if not expiration:
        return False
    try:
        moment = datetime.datetime.fromisoformat(expiration.replace("Z", "+00:00"))
    except ValueError:
        return True
    if moment.tzinfo is None:
        return True
    return moment <= now


def signing_tokens(secrets: Iterable[Mapping[str, Any]], now: datetime.datetime) -> dict[str, str]:
    """``{token id: token secret}`` of the tokens the bootstrapsigner signs cluster-info with.

    Those are the secrets of type bootstrap.kubernetes.io/token named ``bootstrap-token-<id>`` with that
    ``token-id``, a ``token-secret``, ``usage-bootstrap-signing: "true"`` and no past expiration.
    """
    tokens: dict[str, str] = {}
    for secret in secrets:
        if secret.get("type") != BOOTSTRAP_TOKEN_TYPE:
            continue
        match = _TOKEN_SECRET_NAME.fullmatch(str((secret.get("metadata") or {}).get("name") or ""))
        token_id = _secret_value(secret, "token-id")
        token_secret = _secret_value(secret, "token-secret")
        if not match or token_id != match.group(1) or not token_secret:
            continue
        if _secret_value(secret, "usage-bootstrap-signing") != "true":
            continue
        if _expired(_secret_value(secret, "expiration"), now):
            continue
        tokens[token_id] = token_secret
    return tokens


def unsigned_tokens(configmap: Mapping[str, Any], tokens: Mapping[str, str], key: str = "kubeconfig") -> list[str]:
    """The ids of ``tokens`` whose ``jws-kubeconfig-<id>`` does not validate against the ConfigMap's ``key``."""
    data = configmap.get("data") or {}
    content = data.get(key)
    if not isinstance(content, str):
        return sorted(tokens)
    return sorted(
        tid for tid, secret in tokens.items() if not signature_valid(data.get(JWS_PREFIX + tid), content, tid, secret)
    )


TOKEN_SECRETS_PATH = "/api/v1/namespaces/kube-system/secrets?fieldSelector=" + urllib.parse.quote(
    f"type={BOOTSTRAP_TOKEN_TYPE}", safe=""
)


def wait_signed(
    client: Any,
    expected: str,
    timeout: float,
    interval: float = 1.0,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], None] | None = None,
    now: Callable[[], datetime.datetime] | None = None,
) -> list[str]:
    """Poll until every signing token's JWS in cluster-info validates against ``expected``; their ids.

    The tokens are read again each round (one may be created or expire meanwhile). Raises
    ``ClusterEndpointError`` naming the token ids on timeout, or when cluster-info no longer holds
    ``expected`` (someone else changed it).
    """
    target = TARGET_SPECS[CLUSTER_INFO]
    clock = clock or time.monotonic
    sleep = sleep or time.sleep
    now = now or (lambda: datetime.datetime.now(datetime.UTC))
    deadline = clock() + timeout
    while True:
        configmap = client.get(target.path)
        content = (configmap.get("data") or {}).get(target.key)
        if content != expected:
            raise ClusterEndpointError(
                f"ConfigMap {target.object} was changed by someone else while waiting for its signatures: its "
                f"{target.key} is no longer what this task wrote"
            )
        tokens = signing_tokens(client.get(TOKEN_SECRETS_PATH).get("items") or [], now())
        pending = unsigned_tokens(configmap, tokens, target.key)
        if not pending:
            return sorted(tokens)
        remaining = deadline - clock()
        if remaining <= 0:
            ids = ", ".join(pending)
            raise ClusterEndpointError(
                f"timed out after {timeout:g}s waiting for the bootstrapsigner to re-sign ConfigMap {target.object}: "
                f"{', '.join(JWS_PREFIX + t for t in pending)} does not validate against the new {target.key} "
                f"for bootstrap token {ids}; is kube-controller-manager running with the bootstrapsigner controller?"
            )
        sleep(min(interval, remaining))


# --------------------------------------------------------------------------------------------------
# The module's whole run
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    server: str | None
    objects: dict[str, dict[str, Any]]
    diff: list[dict[str, Any]]
    signed_tokens: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    kube_proxy_restarted: bool = False

    @property
    def changed(self) -> bool:
        return self.kube_proxy_restarted or any(obj["changed"] for obj in self.objects.values())

    def result(self) -> dict[str, Any]:
        """The module's return values (without ``diff`` and ``warnings``)."""
        return {
            "changed": self.changed,
            "server": self.server,
            "objects": copy.deepcopy(self.objects),
            "changed_objects": [obj["object"] for obj in self.objects.values() if obj["changed"]],
            "signed_tokens": list(self.signed_tokens),
            "kube_proxy_restarted": self.kube_proxy_restarted,
        }


def _plan(
    target: Target, obj: Mapping[str, Any] | None, server: str | None, sans: list[str], state: str
) -> ServerPlan | SansPlan:
    if target.name == KUBEADM_CONFIG:
        return plan_kubeadm_config(obj, target, sans, state)
    if obj is None:
        raise ClusterEndpointError(f"ConfigMap {target.object} was not found")
    return plan_server(obj, target, server, state)


def _apply(obj: dict[str, Any], plan: ServerPlan | SansPlan) -> dict[str, Any]:
    if isinstance(plan, ServerPlan):
        return apply_server(obj, plan)
    obj.setdefault("data", {})[plan.target.key] = plan.text_after
    return obj


def _missing(target: Target) -> ClusterEndpointError:
    hints = {
        CLUSTER_INFO: "the cluster has no kubeadm discovery information (kubeadm init phase bootstrap-token "
        "creates it)",
        KUBE_PROXY: "kube-proxy is not managed by kubeadm here: point its own kubeconfig at the endpoint",
    }
    return ClusterEndpointError(
        f"ConfigMap {target.object} was not found: {hints.get(target.name, '')}; leave {target.name} out of "
        "targets to go on without it. Nothing was changed"
    )


def run(
    params: Mapping[str, Any],
    client_factory: Callable[[], Any],
    check_mode: bool,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> Outcome:
    """Validate, read every target, plan them all, then write the changed ones (unless ``check_mode``).

    Nothing is written unless every target could be read and planned. ``client_factory()`` returns an
    object with ``get`` and ``put`` (a ``KubeClient``); ``close()`` is called on it at the end when it has
    one. All input is validated before it is called.
    """
    state = params.get("state") or "present"
    if state not in STATES:
        raise ClusterEndpointError(f"state {state!r} is not one of {', '.join(STATES)}")
    raw_server = params.get("server")
    server = normalize_server(raw_server) if raw_server is not None or state == "present" else None
    sans = normalize_sans(params.get("cert_sans"))
    targets = [TARGET_SPECS[name] for name in normalize_targets(params.get("targets"))]
    kubeadm_required = bool(params.get("kubeadm_config_required"))
    wait = bool(params.get("wait_signed"))
    restart_daemonset = params.get("restart_kube_proxy") or ""
    timeout = params.get("timeout")
    timeout = 120 if timeout is None else int(timeout)
    if timeout < 0:
        raise ClusterEndpointError(f"timeout must be 0 or more seconds, not {timeout}")

    client = client_factory()
    try:
        pods: dict[str, Any] = {}  # kube-proxy's DaemonSet, with restart_kube_proxy
        if restart_daemonset:
            try:
                pods = client.get(daemonset_path("kube-system", restart_daemonset))
            except KubeAPIError as exc:
                raise ClusterEndpointError(
                    f"cannot read DaemonSet kube-system/{restart_daemonset} (restart_kube_proxy): {exc}; nothing was "
                    "changed"
                ) from exc
        plans: dict[str, ServerPlan | SansPlan] = {}
        read: dict[str, dict[str, Any]] = {}
        for target in targets:
            try:
                obj = client.get(target.path)
            except KubeAPIError as exc:
                if exc.status != 404:
                    raise
                if target.name != KUBEADM_CONFIG:
                    raise _missing(target) from exc
                obj = None
            if obj is not None:
                read[target.name] = obj
            plan = _plan(target, obj, server, sans, state)
            if isinstance(plan, SansPlan) and plan.skipped and kubeadm_required:
                raise ClusterEndpointError(f"kubeadm_config_required is set, but {plan.message}; nothing was changed")
            plans[target.name] = plan

        warnings = _warnings(plans, server, state)
        written: dict[str, ServerPlan | SansPlan] = {}

        def outcome(signed: list[str] | None = None, restarted: bool = False) -> Outcome:
            shown = plans if check_mode else {n: written.get(n) or _unchanged(p) for n, p in plans.items()}
            objects = {name: plan.result() for name, plan in shown.items()}
            diff = [plan.diff() for plan in shown.values() if not (isinstance(plan, SansPlan) and plan.skipped)]
            return Outcome(server, objects, diff, signed or [], warnings, restarted)

        # kube-proxy reads kubeconfig.conf only when it starts: its DaemonSet is rolled when its pods run another
        # ConfigMap than the one there now (the marker on the DaemonSet, recorded before a change), so a run that
        # died between the change and the restart is completed by the next one.
        proxy_before = read.get(KUBE_PROXY)
        restart_due_now = bool(restart_daemonset and proxy_before is not None)
        if check_mode:
            if restart_due_now:
                proxy_after = _apply(copy.deepcopy(proxy_before), plans[KUBE_PROXY])
                return replace(outcome(), kube_proxy_restarted=daemonset_restart_due(pods, proxy_before, proxy_after))
            return outcome()
        if restart_due_now and plans[KUBE_PROXY].changed and restarted_for(pods) is None:
            pods = record_running_configuration(client, "kube-system", restart_daemonset, pods, proxy_before)
        for target in targets:
            if not plans[target.name].changed:
                continue
            seen: list[ServerPlan | SansPlan] = []
            try:
                update_with_retry(client, target.path, _mutator(target, server, sans, state, seen))
            except (KubeAPIError, ClusterEndpointError) as exc:
                raise AfterChangeError(_after_change(f"{target.where}: {exc}", written), outcome()) from exc
            if seen:
                written[target.name] = seen[-1]

        signed: list[str] = []
        info = written.get(CLUSTER_INFO) or plans.get(CLUSTER_INFO)
        if wait and isinstance(info, ServerPlan):
            try:
                signed = wait_signed(client, info.text_after, timeout, clock=clock, sleep=sleep)
            except (KubeAPIError, ClusterEndpointError) as exc:
                raise AfterChangeError(_after_change(str(exc), written), outcome()) from exc
            if not signed:
                warnings.append(
                    "no bootstrap token is marked for signing (usage-bootstrap-signing), so cluster-info carries no "
                    "signature to wait for; kubeadm join --discovery-token needs one"
                )
        restarted = False
        proxy_now = client.get(TARGET_SPECS[KUBE_PROXY].path) if restart_due_now else None
        if proxy_now is not None and daemonset_restart_due(pods, proxy_before, proxy_now):
            try:
                rollout_restart(client, "kube-system", restart_daemonset, configmap=proxy_now)
            except KubeAPIError as exc:
                raise AfterChangeError(
                    _after_change(f"restarting DaemonSet kube-system/{restart_daemonset}: {exc}", written),
                    outcome(signed),
                ) from exc
            restarted = True
        return outcome(signed, restarted)
    finally:
        close = getattr(client, "close", None)
        if callable(close):
            close()


def _mutator(
    target: Target, server: str | None, sans: list[str], state: str, seen: list[ServerPlan | SansPlan]
) -> Callable[[dict[str, Any]], dict[str, Any] | None]:
    """The ``mutate`` of ``update_with_retry``: plan again on the fresh object, note the plan in ``seen``."""

    def mutate(obj: dict[str, Any]) -> dict[str, Any] | None:
        plan = _plan(target, obj, server, sans, state)
        seen.append(plan)
        return _apply(obj, plan) if plan.changed else None

    return mutate


def _unchanged(plan: ServerPlan | SansPlan) -> ServerPlan | SansPlan:
    """The plan as it stands when nothing was written for it."""
    if isinstance(plan, ServerPlan):
        return dataclasses.replace(
            plan, after=plan.before, original_after=plan.original_before, text_after=plan.text_before
        )
    if plan.skipped:
        return plan
    return dataclasses.replace(plan, after=list(plan.before), added=[], removed=[], text_after=plan.text_before)


def _after_change(message: str, written: Mapping[str, ServerPlan | SansPlan]) -> str:
    changed = [plan.target.object for plan in written.values() if plan.changed]
    if not changed:
        return f"{message}; nothing was changed"
    return f"{message}; already changed: {', '.join(changed)}"


def _warnings(plans: Mapping[str, ServerPlan | SansPlan], server: str | None, state: str) -> list[str]:
    warnings = [plan.warning for plan in plans.values() if isinstance(plan, ServerPlan) and plan.warning]
    kubeadm = plans.get(KUBEADM_CONFIG)
    if isinstance(kubeadm, SansPlan) and kubeadm.skipped:
        warnings.append(kubeadm.message)
    elif isinstance(kubeadm, SansPlan) and state == "present" and server is not None:
        host = server_host(server)
        if san_key(host) not in {san_key(v) for v in kubeadm.after}:
            warnings.append(
                f"{host} is not in apiServer.certSANs of ConfigMap {kubeadm.target.object}: clients reaching the "
                f"apiservers through {server} verify that name, so add it to cert_sans and reissue the apiserver "
                "certificates"
            )
    return warnings
