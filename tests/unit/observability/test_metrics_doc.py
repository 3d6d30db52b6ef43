# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""docs/metrics.md documents exactly the metrics the guard renders, each with its type."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[3] / "docs" / "metrics.md"
_ROW = re.compile(r"^\| `([a-zA-Z_:][a-zA-Z0-9_:]*)` \| (\w+) \|")


def documented(text: str) -> dict[str, str]:
    """``{metric name: type}`` from the table whose header starts ``| metric | type |``."""
    rows: dict[str, str] = {}
    in_table = False
    for line in text.splitlines():
        if line.startswith("| metric | type |"):
            in_table = True
            continue
        if in_table and not line.startswith("|"):
            break
        match = _ROW.match(line)
        if in_table and match:
            assert match.group(1) not in rows, f"{match.group(1)} documented twice"
            rows[match.group(1)] = match.group(2)
    return rows


def differences(rendered: dict[str, str], doc: dict[str, str]) -> list[str]:
    problems = [f"{name} ({kind}) is rendered but not documented" for name, kind in rendered.items() if name not in doc]
    problems += [f"{name} is documented but not rendered" for name in doc if name not in rendered]
    problems += [
        f"{name} is a {rendered[name]}, documented as a {doc[name]}"
        for name in doc
        if name in rendered and doc[name] != rendered[name]
    ]
    return sorted(problems)


def test_the_realistic_snapshot_has_samples_of_every_family(metrics_text: str, rendered_types: dict[str, str]) -> None:
    samples = {line.split("{")[0].split(" ")[0] for line in metrics_text.splitlines() if not line.startswith("#")}
    assert samples == set(rendered_types)
    assert len(rendered_types) >= 8


def test_the_doc_table_lists_exactly_the_rendered_metrics_and_types(rendered_types: dict[str, str]) -> None:
    doc = documented(DOC.read_text(encoding="utf-8"))
    assert differences(rendered_types, doc) == []
    assert set(doc) == set(rendered_types)


def test_a_row_removed_from_the_doc_is_detected(rendered_types: dict[str, str]) -> None:
    text = DOC.read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| `kubeha_apiserver_apply_errors_total` |"))
    assert differences(rendered_types, documented(text.replace(row + "\n", ""))) == [
        "kubeha_apiserver_apply_errors_total (counter) is rendered but not documented"
    ]


def test_a_wrong_type_or_a_metric_the_guard_does_not_render_is_detected(rendered_types: dict[str, str]) -> None:
    text = DOC.read_text(encoding="utf-8")
    wrong = text.replace("| `kubeha_apiserver_fail_open` | gauge |", "| `kubeha_apiserver_fail_open` | counter |")
    assert differences(rendered_types, documented(wrong)) == [
        "kubeha_apiserver_fail_open is a gauge, documented as a counter"
    ]
    renamed = text.replace("`kubeha_apiserver_backend_weight` |", "`kubeha_apiserver_backend_weights` |")
    assert differences(rendered_types, documented(renamed)) == [
        "kubeha_apiserver_backend_weight (gauge) is rendered but not documented",
        "kubeha_apiserver_backend_weights is documented but not rendered",
    ]
