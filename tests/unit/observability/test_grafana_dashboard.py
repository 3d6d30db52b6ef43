# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Every metric the example Grafana dashboard and the example alert rules query is one the guard renders."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]
DASHBOARD = REPO / "examples" / "grafana" / "kubeha-apiserver.json"
ALERTS = REPO / "examples" / "prometheus" / "alerts.yml"
PROMETHEUS_OWN = frozenset({"up"})  # set by Prometheus on every scrape

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "inf", "nan"})


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers left once strings, label matchers, ranges and
    groupings are removed, that are not functions, aggregations or keywords."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = _GROUPING.sub("", text)
    names = set()
    for match in _IDENT.finditer(text):
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or match.group(0).lower() in _KEYWORDS:
            continue
        if match.start() and (text[match.start() - 1].isdigit() or text[match.start() - 1] == "$"):
            continue  # a unit of a duration or a number (5m, 1e3), or a Grafana variable
        names.add(match.group(0))
    return names


def dashboard_exprs(doc: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """``(where, expr)`` of every panel's targets (rows included) and of the query variables."""

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for item in items:
            yield item
            yield from panels(item.get("panels", []))

    for panel in panels(doc["panels"]):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} target {target['refId']}", target["expr"]
    for variable in doc.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = re.fullmatch(r"label_values\((.*),\s*\w+\)", query)
            assert match, f"variable {variable['name']}: unexpected query {query!r}"
            yield f"variable {variable['name']}", match.group(1)


def alert_exprs(doc: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for group in doc["groups"]:
        for rule in group["rules"]:
            yield f"alert {rule.get('alert') or rule.get('record')}", rule["expr"]


def unknown(exprs: Iterator[tuple[str, str]], rendered: set[str]) -> list[str]:
    problems = []
    for where, expr in exprs:
        names = metric_names(expr)
        if not names & (rendered | PROMETHEUS_OWN):
            problems.append(f"{where}: queries no metric of the guard: {expr}")
        strangers = sorted(names - rendered - PROMETHEUS_OWN)
        problems += [f"{where}: {name} is not a metric the guard renders" for name in strangers]
    return problems


def test_the_extractor_finds_metric_names_and_nothing_else() -> None:
    expr = (
        'sum by (instance, backend) (increase(kubeha_apiserver_backend_transitions_total{job="a_b",to=~"up|down"}'
        "[$__rate_interval])) > 0 and on (instance) time() - kubeha_apiserver_last_reconcile_timestamp_seconds "
        "offset 5m > 1e3 or max without (backend) (kubeha_apiserver_backend_up) == bool 0"
    )
    assert metric_names(expr) == {
        "kubeha_apiserver_backend_transitions_total",
        "kubeha_apiserver_last_reconcile_timestamp_seconds",
        "kubeha_apiserver_backend_up",
    }
    assert metric_names('up{job="kubeha-apiserver-guard"} == 0') == {"up"}


def test_every_dashboard_query_uses_rendered_metrics_and_covers_them_all(rendered_types: dict[str, str]) -> None:
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = list(dashboard_exprs(doc))
    assert len(exprs) >= 8
    assert unknown(iter(exprs), set(rendered_types)) == []
    used = set().union(*(metric_names(expr) for _where, expr in exprs))
    assert set(rendered_types) <= used


def test_every_alert_uses_rendered_metrics(rendered_types: dict[str, str]) -> None:
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    exprs = list(alert_exprs(doc))
    assert len(exprs) >= 4
    assert unknown(iter(exprs), set(rendered_types)) == []


def test_a_misspelt_metric_in_a_panel_or_an_alert_is_detected(rendered_types: dict[str, str]) -> None:
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    broken = copy.deepcopy(doc)
    target = broken["panels"][-1]["targets"][0]
    assert "kubeha_apiserver_apply_errors_total" in target["expr"]
    target["expr"] = target["expr"].replace("kubeha_apiserver_apply_errors_total", "kubeha_apiserver_apply_errors")
    where = f"panel {broken['panels'][-1]['title']!r} target A"
    assert unknown(dashboard_exprs(broken), set(rendered_types)) == [
        f"{where}: queries no metric of the guard: {target['expr']}",
        f"{where}: kubeha_apiserver_apply_errors is not a metric the guard renders",
    ]
    alerts = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    rule = alerts["groups"][0]["rules"][1]
    rule["expr"] = rule["expr"].replace("kubeha_apiserver_backend_up", "kubeha_apiserver_backends_up")
    assert unknown(alert_exprs(alerts), set(rendered_types)) == [
        f"alert {rule['alert']}: queries no metric of the guard: {rule['expr']}",
        f"alert {rule['alert']}: kubeha_apiserver_backends_up is not a metric the guard renders",
    ]
