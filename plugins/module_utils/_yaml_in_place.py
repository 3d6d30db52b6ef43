# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the kubeha.apiserver collection: this is NOT a public API. It backs the kubeha.apiserver
# cluster_endpoint, kubeconfig_server and kubeproxy_exclude_cidr modules and may change in any release without notice.

"""The one in-place YAML editor: a value changed, every other byte of the text kept.

PyYAML's ``compose`` gives the node tree with the position of every node; ``Lines`` splits a text into lines that
keep their own line breaks and rebuilds it with some lines replaced. On these:

- ``replace_scalar`` respells the characters of one scalar (a kubeconfig's ``server``);
- ``set_block_list`` sets ``<parent>.<key>`` to a list written as a block sequence by adding and removing whole
  lines (kubeadm's ``apiServer.certSANs``, kube-proxy's ``ipvs.excludeCIDRs``); a ``ListStyle`` says how the program
  that owns the text writes what the edit creates, so that the result looks as that program would have written it;
- ``verified`` is the check every edit ends with: the edited text must load to exactly the intended document;
- ``check_kind`` checks the ``kind`` and ``apiVersion`` of a configuration document to be edited (kubeadm's
  ClusterConfiguration, kube-proxy's KubeProxyConfiguration).

Errors are ``YamlEditError`` (``EditNotValidError`` and ``EditMismatchError`` when the check fails), naming the
path of the value; each caller turns them into its own error (``reported_as``). Pure logic.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ansible_collections.kubeha.apiserver.plugins.module_utils._kubeapi import import_yaml

_LINE_BREAK = re.compile(r"\r\n|\n|\r")
_COMMENT = re.compile(r"(?:^|[ \t]+)#.*$")
_ITEM_PREFIX = re.compile(r"[ \t]*-[ \t]+")


class YamlEditError(Exception):
    """A document or an in-place edit refused; the message names the value, for the caller to put in its context."""


class EditNotValidError(YamlEditError):
    """The edited text is not valid YAML (the message is PyYAML's)."""


class EditMismatchError(YamlEditError):
    """The edited text is valid YAML but not the intended document."""


@contextlib.contextmanager
def reported_as(error: type[Exception]) -> Iterator[None]:
    """A ``YamlEditError`` raised inside becomes the caller's ``error``, with the same message."""
    try:
        yield
    except YamlEditError as exc:
        raise error(str(exc)) from exc


def _at(what: str, problem: str) -> str:
    return f"{what}: {problem}" if what else problem


@dataclass(frozen=True)
class Lines:
    """A text as ``(content, break)`` lines, with the character offset where each line starts."""

    lines: list[tuple[str, str]]
    starts: list[int]
    eol: str

    @classmethod
    def of(cls, text: str) -> Lines:
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

    def comment_after(self, index: int) -> str:
        """The comment that ends ``index``'s line after ``index``, with the blanks before it (``"  # why"``)."""
        number = self.line_of(index)
        match = _COMMENT.search(self.lines[number][0][index - self.starts[number] :])
        return match.group() if match else ""

    def indent_of(self, node: Any, what: str = "") -> str:
        """The blanks before ``node`` on its line; refused when something else comes first (a flow collection)."""
        head = self.before(node.start_mark.index)
        if head.strip():
            raise YamlEditError(
                _at(what, f"line {node.start_mark.line + 1} is not laid out as a block mapping this module can edit")
            )
        return head

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


# --------------------------------------------------------------------------------------------------
# Nodes
# --------------------------------------------------------------------------------------------------


def compose_mapping(text: Any, what: str) -> Any:
    """The YAML node tree of ``text`` (PyYAML's ``compose``), which must be a mapping."""
    if not isinstance(text, str):
        raise YamlEditError(f"{what} is not text but {type(text).__name__}")
    yaml = import_yaml()
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise YamlEditError(f"{what} is not valid YAML: {exc}") from exc
    if node is None or not isinstance(node, yaml.MappingNode):
        raise YamlEditError(f"{what} is not a YAML mapping")
    return node


def load(text: str) -> Any:
    """The document of ``text`` (PyYAML's ``safe_load``)."""
    yaml = import_yaml()
    return yaml.safe_load(text)


def check_kind(document: Mapping[str, Any], kind: str, api_group: str, what: str) -> None:
    """``document`` must be of ``kind`` and have an ``apiVersion`` of ``<api_group>/<version>``.

    The one check of a Kubernetes configuration document's type (kubeadm's ClusterConfiguration, kube-proxy's
    KubeProxyConfiguration) before it is read and edited; ``YamlEditError`` naming the value found otherwise.
    """
    found = document.get("kind")
    if found != kind:
        raise YamlEditError(f"{what} is of kind {found!r}, not {kind}")
    api_version = document.get("apiVersion")
    if not isinstance(api_version, str) or not api_version.startswith(f"{api_group}/"):
        raise YamlEditError(f"{what} has apiVersion {api_version!r}, not {api_group}/<version>")


def member(node: Any, key: str) -> tuple[Any, Any] | None:
    """``(key node, value node)`` of the first ``key`` in a mapping node, or ``None``."""
    found = _members(node, key)
    return found[0] if found else None


def _members(node: Any, key: str) -> list[tuple[Any, Any]]:
    yaml = import_yaml()
    if not isinstance(node, yaml.MappingNode):
        return []
    return [(k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == key]


def _only_member(node: Any, key: str, where: str, what: str) -> tuple[Any, Any] | None:
    """As ``member``, refusing a key given twice (PyYAML would keep the last, this editor would see the first)."""
    found = _members(node, key)
    if len(found) > 1:
        raise YamlEditError(_at(what, f"there is more than one {where} key"))
    if not found:
        return None
    key_node, value = found[0]
    return key_node, value


def is_null(node: Any) -> bool:
    yaml = import_yaml()
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _source(text: str, node: Any) -> str:
    return text[node.start_mark.index : node.end_mark.index]


def _inline(text: str, node: Any, ellipsis: str) -> str:
    """The text of an inline collection, or ``ellipsis`` (``[...]``) when it spans several lines."""
    return _source(text, node) if node.start_mark.line == node.end_mark.line else ellipsis


# --------------------------------------------------------------------------------------------------
# Scalars, and the check every edit ends with
# --------------------------------------------------------------------------------------------------


def plain_or_quoted(value: str) -> str:
    """``value`` as a plain YAML scalar when it reads back as the same string, else double-quoted."""
    yaml = import_yaml()
    try:
        if load(f"- {value}") == [value]:
            return value
    except yaml.YAMLError:
        pass
    return json.dumps(value)


def _spellings(value: str, style: str | None) -> list[str]:
    """Spellings of ``value`` to try, in the given scalar style first (plain, ``'`` or ``"``)."""
    double = json.dumps(value)
    if style == '"':
        return [double]
    if style == "'":
        return ["'" + value.replace("'", "''") + "'", double]
    return [value, double]


def verified(text: str, expected: Any) -> str:
    """``text`` when it loads to exactly ``expected``; ``EditNotValidError`` or ``EditMismatchError`` otherwise."""
    yaml = import_yaml()
    try:
        document = load(text)
    except yaml.YAMLError as exc:
        raise EditNotValidError(str(exc)) from exc
    if document != expected:
        raise EditMismatchError("the edited text does not load to the intended document")
    return text


def replace_scalar(text: str, node: Any, value: str, expected: Any) -> str:
    """``text`` with the characters of the scalar ``node`` replaced by ``value``, checked against ``expected``.

    ``value`` keeps the node's quoting when that reads back right, else it is double-quoted (a plain scalar that
    would not be valid there, in a flow mapping say).
    """
    start, end = node.start_mark.index, node.end_mark.index
    for spelling in _spellings(value, node.style):
        try:
            return verified(text[:start] + spelling + text[end:], expected)
        except YamlEditError:
            continue
    raise EditMismatchError("no spelling of the new value gives the intended document")


# --------------------------------------------------------------------------------------------------
# A block list under a top-level key
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ListStyle:
    """How the program that owns a text writes a list, for ``set_block_list`` to write the same.

    ``empty``: the value an empty list is written as (``"null"``), or ``None`` when the key is left out, and a
    parent left with no key written ``{}``. ``inline``: a list written inline on its key's line (``[a, b]``) is
    rewritten as a block list; otherwise it is refused. ``parent_first``: a missing parent goes before the first
    top-level key; otherwise after the last line.
    """

    empty: str | None = None
    inline: bool = False
    parent_first: bool = True


def _block(indent: str, name: str, values: list[Any], comment: str) -> list[str]:
    return [f"{indent}{name}:{comment}"] + [f"{indent}- {plain_or_quoted(str(v))}" for v in values]


def set_block_list(text: str, parent: str, key: str, values: list[Any], style: ListStyle, what: str = "") -> str:
    """``text`` with ``<parent>.<key>`` set to ``values`` by adding, removing and replacing whole lines.

    Entries kept stay byte for byte; new ones go after the last entry, in its indentation. A missing key is
    written first in its parent (as the Kubernetes tools sort keys), a missing parent where ``style`` says. Only
    the layouts this can edit exactly are accepted, each refused with a ``YamlEditError`` naming the value
    (``what``, the text's name, first). The result is not checked here: callers end with ``verified``.
    """
    yaml = import_yaml()
    root = compose_mapping(text, what or "the text")
    lines = Lines.of(text)
    new = list(values)
    path = f"{parent}.{key}"
    found_parent = _only_member(root, parent, f"top-level {parent}", what)
    if found_parent is None:
        return _add_parent(lines, root, parent, key, new, style, what) if new else text

    parent_key, mapping = found_parent
    parent_line = lines.line_of(parent_key.start_mark.index)
    if is_null(mapping) or (isinstance(mapping, yaml.MappingNode) and not mapping.value):
        # "parent:", "parent: null" or "parent: {}"
        if not new:
            return text
        _on_key_line(parent_key, mapping, parent, "mapping", what)
        indent = lines.indent_of(parent_key, what)
        head = f"{indent}{_source(text, parent_key)}:{lines.comment_after(mapping.end_mark.index)}"
        return lines.rebuild({parent_line: [head, *_block(indent + "  ", key, new, "")]})
    if not isinstance(mapping, yaml.MappingNode):
        raise YamlEditError(_at(what, f"{parent} is not a mapping"))
    if mapping.flow_style:
        raise YamlEditError(
            _at(
                what,
                f"{parent} is written inline ({_inline(text, mapping, '{...}')}), which cannot be edited line by line: "
                "write it as a block mapping",
            )
        )

    found = _only_member(mapping, key, path, what)
    if found is None:
        if not new:
            return text
        indent = lines.indent_of(mapping.value[0][0], what)
        return lines.rebuild({parent_line: [lines.lines[parent_line][0], *_block(indent, key, new, "")]})

    key_node, value = found
    indent = lines.indent_of(key_node, what)
    key_line = lines.line_of(key_node.start_mark.index)
    name = _source(text, key_node)
    edits: dict[int, list[str]] = {}
    if isinstance(value, yaml.SequenceNode) and value.value and not value.flow_style:
        edits = _list_edits(text, lines, value, parent, key, new, what)
        comment = lines.comment_after(key_node.end_mark.index)
    else:
        if isinstance(value, yaml.SequenceNode) and value.value and not style.inline:
            raise YamlEditError(
                _at(
                    what,
                    f"{path} is written inline ({_inline(text, value, '[...]')}), which cannot be edited line by line: "
                    "write it as a block list",
                )
            )
        if not (is_null(value) or isinstance(value, yaml.SequenceNode)):
            raise YamlEditError(_at(what, f"{path} is not a list"))
        _on_key_line(key_node, value, path, "list", what)
        comment = lines.comment_after(value.end_mark.index)
        edits[key_line] = _block(indent, name, new, comment)
    if not new:
        if style.empty is not None:
            edits[key_line] = [f"{indent}{name}: {style.empty}{comment}"]
        else:
            edits[key_line] = []
            if len(mapping.value) == 1:
                head = lines.indent_of(parent_key, what) + _source(text, parent_key)
                edits[parent_line] = [f"{head}: {{}}{lines.comment_after(parent_key.end_mark.index)}"]
    return lines.rebuild(edits)


def _on_key_line(key_node: Any, value: Any, path: str, kind: str, what: str) -> None:
    """Refuses a value that is not on its key's line: the edit replaces that line."""
    if value.start_mark.line != key_node.start_mark.line or value.end_mark.line != key_node.start_mark.line:
        raise YamlEditError(
            _at(
                what,
                f"editing {path} in place: its value is not written on its key's line, which cannot be edited line by "
                f"line: write it as a block {kind}",
            )
        )


def _list_edits(
    text: str, lines: Lines, sequence: Any, parent: str, key: str, new: list[Any], what: str
) -> dict[int, list[str]]:
    """The line edits that turn the block sequence's entries into ``new``: entries removed, others appended.

    The entries kept are the longest run of ``new``'s first values found in order among the current ones; the rest
    of ``new`` is appended after the last entry, in its indentation.
    """
    yaml = import_yaml()
    path = f"{parent}.{key}"
    items: list[tuple[Any, int]] = []
    for item in sequence.value:
        if (
            not isinstance(item, yaml.ScalarNode)
            or item.start_mark.line != item.end_mark.line
            or not _ITEM_PREFIX.fullmatch(lines.before(item.start_mark.index))
        ):
            raise YamlEditError(
                _at(
                    what,
                    f"{path} holds an entry this module cannot edit line by line (line {item.start_mark.line + 1})",
                )
            )
        items.append((item, lines.line_of(item.start_mark.index)))
    try:
        current = ((load(text) or {}).get(parent) or {}).get(key)
    except yaml.YAMLError as exc:  # composed but not constructed (a key that is a list, say)
        raise YamlEditError(_at(what, f"{path}: the text does not load: {exc}")) from exc
    if not isinstance(current, list) or len(current) != len(items):
        raise YamlEditError(_at(what, f"{path} is laid out in a way this module does not handle"))
    edits: dict[int, list[str]] = {}
    kept = 0
    for (_item, line), entry in zip(items, current, strict=True):
        if kept < len(new) and new[kept] == entry:
            kept += 1
        else:
            edits[line] = []
    if kept < len(new):
        last_item, last = items[-1]
        prefix = lines.before(last_item.start_mark.index)
        appended = [prefix + plain_or_quoted(str(v)) for v in new[kept:]]
        edits[last] = [*edits.get(last, [lines.lines[last][0]]), *appended]
    return edits


def _add_parent(lines: Lines, root: Any, parent: str, key: str, new: list[Any], style: ListStyle, what: str) -> str:
    """The text with ``parent:`` and its list added, before the first top-level key or after the last line."""
    if root.flow_style or not root.value:
        raise YamlEditError(f"{what or 'the text'} is not laid out as a block mapping this module can edit")
    first = root.value[0][0]
    indent = lines.indent_of(first, what)
    added = [f"{indent}{parent}:", *_block(indent + "  ", key, new, "")]
    if style.parent_first:
        line = lines.line_of(first.start_mark.index)
        return lines.rebuild({line: [*added, lines.lines[line][0]]})
    last = len(lines.lines) - 1
    return lines.rebuild({last: [lines.lines[last][0], *added]})
