# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Pure logic of module_utils/_yaml_in_place, the one in-place YAML editor: lines, scalars, block lists, the check.

The edits of its callers (kube-proxy's excludeCIDRs, kubeadm's certSANs, a kubeconfig's server) are tested with
them; here is what the editor does whoever calls it.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import yaml
from ansible_collections.kubeha.apiserver.plugins.module_utils import _yaml_in_place as yip
from ansible_collections.kubeha.apiserver.plugins.module_utils._yaml_in_place import (
    EditMismatchError,
    EditNotValidError,
    Lines,
    ListStyle,
    YamlEditError,
)

NULL = ListStyle(empty="null", inline=True, parent_first=False)  # as kubeadm writes kube-proxy's excludeCIDRs
OMIT = ListStyle(empty=None, inline=False, parent_first=True)  # as kubeadm writes apiServer.certSANs


def set_list(text: str, values: list[Any], style: ListStyle = NULL, what: str = "") -> str:
    """``a.b`` set to ``values``, checked to load as the document with that one value changed."""
    edited = yip.set_block_list(text, "a", "b", values, style, what)
    expected = copy.deepcopy(yaml.safe_load(text))
    parent = expected.get("a") or {}
    if values:
        parent["b"] = list(values)
    elif style.empty is None:
        parent.pop("b", None)
    elif "b" in parent:
        parent["b"] = yaml.safe_load(style.empty)
    if values or expected.get("a") is not None:
        expected["a"] = parent
    return yip.verified(edited, expected)


# --------------------------------------------------------------------------------------------------
# Lines
# --------------------------------------------------------------------------------------------------


def test_lines_keep_each_line_break_and_the_final_convention() -> None:
    text = "a: 1\r\nb: 2\nc: 3\rd: 4"
    lines = Lines.of(text)
    assert lines.lines == [("a: 1", "\r\n"), ("b: 2", "\n"), ("c: 3", "\r"), ("d: 4", "")]
    assert lines.eol == "\r\n"  # new lines take the text's first break
    assert lines.rebuild({}) == text
    assert lines.rebuild({1: ["x", "y"]}) == "a: 1\r\nx\r\ny\nc: 3\rd: 4"
    assert lines.rebuild({3: []}) == "a: 1\r\nb: 2\nc: 3"  # still no final break
    assert lines.rebuild({3: ["d: 4", "e: 5"]}) == "a: 1\r\nb: 2\nc: 3\rd: 4\r\ne: 5"
    assert Lines.of("a\n").rebuild({0: ["a", "b"]}) == "a\nb\n"


def test_lines_positions_comments_and_indentation() -> None:
    text = "a:\n  b: 1  # why\n  c: [x]\n"
    lines = Lines.of(text)
    b = text.index("b:")
    assert (lines.line_of(b), lines.before(b)) == (1, "  ")
    assert lines.comment_after(text.index("1  #") + 1) == "  # why"
    assert lines.comment_after(text.index("[x]")) == ""
    assert lines.comment_after(text.index("x]")) == ""
    node = yaml.compose("a: {b: 1}\n").value[0][1].value[0][0]
    with pytest.raises(YamlEditError, match=r"^t: line 1 is not laid out as a block mapping"):
        Lines.of("a: {b: 1}\n").indent_of(node, "t")


# --------------------------------------------------------------------------------------------------
# Nodes, errors, scalars and the check
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [(None, "t is not text but NoneType"), ("a: [\n", "t is not valid YAML"), ("- a\n", "t is not a YAML mapping")],
)
def test_compose_mapping_refuses(text: Any, message: str) -> None:
    with pytest.raises(YamlEditError, match=message):
        yip.compose_mapping(text, "t")


def test_reported_as_keeps_the_message_in_the_callers_error() -> None:
    class DomainError(Exception):
        pass

    with pytest.raises(DomainError, match=r"^t is not a YAML mapping$") as info, yip.reported_as(DomainError):
        yip.compose_mapping("- a\n", "t")
    assert isinstance(info.value.__cause__, YamlEditError)


def test_check_kind_accepts_the_kind_in_any_version_of_its_group() -> None:
    for version in ("v1alpha1", "v1beta4", "v1"):
        yip.check_kind({"kind": "K", "apiVersion": f"g.example/{version}"}, "K", "g.example", "t")


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"apiVersion": "g.example/v1"}, "t is of kind None, not K"),
        ({"kind": "Other", "apiVersion": "g.example/v1"}, "t is of kind 'Other', not K"),
        ({"kind": "k", "apiVersion": "g.example/v1"}, "t is of kind 'k', not K"),
        ({"kind": "K"}, "t has apiVersion None, not g.example/<version>"),
        ({"kind": "K", "apiVersion": "v1"}, "t has apiVersion 'v1', not g.example/<version>"),
        ({"kind": "K", "apiVersion": "g.example"}, "t has apiVersion 'g.example', not g.example/<version>"),
        ({"kind": "K", "apiVersion": "x.g.example/v1"}, "t has apiVersion 'x.g.example/v1', not g.example/<version>"),
        ({"kind": "K", "apiVersion": 1}, "t has apiVersion 1, not g.example/<version>"),
    ],
)
def test_check_kind_refuses_naming_the_value(document: dict[str, Any], message: str) -> None:
    with pytest.raises(YamlEditError, match=f"^{re.escape(message)}$"):
        yip.check_kind(document, "K", "g.example", "t")


def test_check_kind_is_reported_as_the_callers_error() -> None:
    class DomainError(Exception):
        pass

    with pytest.raises(DomainError, match=r"^t is of kind 'Pod', not K$"), yip.reported_as(DomainError):
        yip.check_kind({"kind": "Pod", "apiVersion": "v1"}, "K", "g.example", "t")


def test_plain_or_quoted() -> None:
    assert yip.plain_or_quoted("10.0.0.0/8") == "10.0.0.0/8"
    assert yip.plain_or_quoted("::1") == "::1"
    assert yip.plain_or_quoted("a: b") == '"a: b"'
    assert yip.plain_or_quoted("null") == '"null"'
    assert yip.plain_or_quoted("10") == '"10"'


def test_verified_tells_invalid_from_unintended() -> None:
    assert yip.verified("a: 1\n", {"a": 1}) == "a: 1\n"
    with pytest.raises(EditNotValidError):
        yip.verified("a: [\n", {"a": 1})
    with pytest.raises(EditMismatchError):
        yip.verified("a: 2\n", {"a": 1})


def test_replace_scalar_keeps_the_quoting_or_double_quotes_when_needed() -> None:
    text = "a: 'x'  # c\nb: {c: x}\n"
    root = yip.compose_mapping(text, "t")
    quoted, in_flow = root.value[0][1], root.value[1][1].value[0][1]
    assert yip.replace_scalar(text, quoted, "y", {"a": "y", "b": {"c": "x"}}) == "a: 'y'  # c\nb: {c: x}\n"
    assert (
        yip.replace_scalar(text, in_flow, "p, q", {"a": "x", "b": {"c": "p, q"}}) == "a: 'x'  # c\nb: {c: \"p, q\"}\n"
    )
    with pytest.raises(EditMismatchError):
        yip.replace_scalar(text, quoted, "y", {"a": "z", "b": {"c": "x"}})


# --------------------------------------------------------------------------------------------------
# set_block_list
# --------------------------------------------------------------------------------------------------


def test_entries_kept_stay_byte_for_byte_and_new_ones_follow_the_last() -> None:
    text = "a:\n  b:\n  - x  # first\n  # between\n  -   'y'\n\n  # after\n  c: 1\n"
    assert set_list(text, ["x", "y", "z"]) == (
        "a:\n  b:\n  - x  # first\n  # between\n  -   'y'\n  -   z\n\n  # after\n  c: 1\n"
    )
    assert set_list(text, ["y"]) == "a:\n  b:\n  # between\n  -   'y'\n\n  # after\n  c: 1\n"
    assert set_list(text, ["x", "w"]) == "a:\n  b:\n  - x  # first\n  # between\n  -   w\n\n  # after\n  c: 1\n"
    indented = "a:\n    b:\n        - x\n    c: 1\n"
    assert set_list(indented, ["x", "y"]) == "a:\n    b:\n        - x\n        - y\n    c: 1\n"


@pytest.mark.parametrize(
    ("style", "expected"),
    [
        (NULL, "a:\n  b: null  # why\n  c: 1\nd: 2"),
        (OMIT, "a:\n  c: 1\nd: 2"),
    ],
)
def test_an_emptied_list_is_written_as_the_style_says(style: ListStyle, expected: str) -> None:
    text = "a:\n  b:  # why\n  - x\n  - y\n  c: 1\nd: 2"
    assert set_list(text, [], style) == expected


def test_a_parent_left_with_no_key_is_written_empty_keeping_its_comment() -> None:
    assert set_list("a:  # p\n  b:\n  - x\nd: 2\n", [], OMIT) == "a: {}  # p\nd: 2\n"
    assert set_list("a:\n  b: null\nd: 2\n", [], OMIT) == "a: {}\nd: 2\n"


@pytest.mark.parametrize("value", ["", " null", " ~", " []", " [x, 'y']"])
def test_a_value_on_the_key_line_becomes_a_block_list_keeping_the_comment(value: str) -> None:
    text = f"a:\n  b:{value}  # why\n  c: 1\n"
    assert set_list(text, ["x", "y"]) == "a:\n  b:  # why\n  - x\n  - y\n  c: 1\n"


def test_an_inline_list_is_refused_unless_the_style_rewrites_it() -> None:
    text = "a:\n  b: [x, y]\n"
    with pytest.raises(YamlEditError, match=r"^t: a\.b is written inline \(\[x, y\]\), .* write it as a block list$"):
        set_list(text, ["x", "y", "z"], OMIT, "t")
    assert set_list(text, ["x", "y", "z"], NULL) == "a:\n  b:\n  - x\n  - y\n  - z\n"


@pytest.mark.parametrize("text", ["a:\n  b: [x,\n    y]\n  c: 1\n", "a:\n  b:\n    [x]\n"])
def test_a_value_not_on_its_key_line_is_refused(text: str) -> None:
    with pytest.raises(YamlEditError, match=r"^editing a\.b in place: its value is not written on its key's line"):
        yip.set_block_list(text, "a", "b", ["z"], NULL)


def test_a_missing_key_goes_first_in_its_parent_after_the_parent_line() -> None:
    text = "a:  # p\n    # about c\n    c: 1\n"
    assert set_list(text, ["x"]) == "a:  # p\n    b:\n    - x\n    # about c\n    c: 1\n"
    assert yip.set_block_list(text, "a", "b", [], NULL) == text


@pytest.mark.parametrize("parent", ["a:", "a: null", "a: {}", "a: ~  # p"])
def test_an_empty_parent_gets_the_key(parent: str) -> None:
    comment = "  # p" if "#" in parent else ""
    assert set_list(f"{parent}\nd: 2\n", ["x"]) == f"a:{comment}\n  b:\n  - x\nd: 2\n"


def test_a_missing_parent_goes_where_the_style_says() -> None:
    text = "# head\nc: 1\nd: 2"
    assert set_list(text, ["x"], OMIT) == "# head\na:\n  b:\n  - x\nc: 1\nd: 2"
    assert set_list(text, ["x"], NULL) == "# head\nc: 1\nd: 2\na:\n  b:\n  - x"
    assert set_list(text + "\n", ["x"], NULL) == "# head\nc: 1\nd: 2\na:\n  b:\n  - x\n"
    assert yip.set_block_list(text, "a", "b", [], NULL) == text
    with pytest.raises(YamlEditError, match=r"^the text is not laid out as a block mapping"):
        yip.set_block_list("{c: 1}\n", "a", "b", ["x"], NULL)


def test_crlf_and_no_final_break_are_kept() -> None:
    text = "a:\r\n  b:\r\n  - x\r\n  c: 1"
    assert set_list(text, ["x", "y"]) == "a:\r\n  b:\r\n  - x\r\n  - y\r\n  c: 1"
    assert set_list("a:\r\n  b:\r\n  - x", ["y"]) == "a:\r\n  b:\r\n  - y"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: {b: [x]}\n", r"^t: a is written inline \(\{b: \[x\]\}\), which cannot be edited line by line"),
        ("a: 1\n", r"^t: a is not a mapping$"),
        ("a:\n  b: x\n", r"^t: a\.b is not a list$"),
        ("a:\n  b:\n  - [x]\n", r"^t: a\.b holds an entry this module cannot edit line by line \(line 3\)$"),
        ("a:\n  b:\n  - |\n    x\n", r"holds an entry this module cannot edit line by line"),
        ("a:\n  b: null\na:\n  c: 1\n", r"^t: there is more than one top-level a key$"),
        ("a:\n  b: null\n  b: [x]\n", r"^t: there is more than one a\.b key$"),
    ],
)
def test_layouts_it_cannot_edit_exactly_are_refused_naming_the_value(text: str, message: str) -> None:
    with pytest.raises(YamlEditError, match=message):
        yip.set_block_list(text, "a", "b", ["z"], NULL, "t")
