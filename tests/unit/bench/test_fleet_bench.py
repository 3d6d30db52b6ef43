# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""How `make bench-fleet` turns the masters' samples into a fleet's cost (pure logic of tests/bench/fleet_bench.py)."""

from __future__ import annotations

import pytest
from fleet_bench import extrapolated, rates, row


def sample(t: float, ticks: float, opens: float, log_lines: float, rss_kb: float = 300 * 1024) -> dict:
    return {"t": t, "ticks": ticks, "opens": opens, "log_lines": log_lines, "rss_kb": rss_kb, "hz": 100.0}


def test_rates_per_second_and_cpu_in_cores():
    r = rates(sample(0, 1000, 50, 10), sample(40, 1800, 450, 30, rss_kb=400 * 1024))
    assert r == {"cpu_cores": 0.2, "accepted_per_s": 10.0, "log_lines_per_min": 30.0, "rss_mb": 400.0}


def run(pattern: str, nodes: int, cpu: float, accepted: float, established: int, kept_up: bool = True) -> dict:
    per = {"cpu_cores": cpu, "accepted_per_s": accepted, "log_lines_per_min": 1.0, "rss_mb": 300.0,
           "established": established}  # fmt: skip
    sim = {"per_apiserver": {"requests_per_s": nodes * 1.0, "new_connections_per_s": nodes * 4.0}, "kept_up": kept_up}
    return {"pattern": pattern, "nodes": nodes, "per_master": {"cp1": per, "cp2": dict(per)}, "simulator": sim}


def test_a_row_is_what_the_run_adds_to_the_idle_cluster():
    idle = run("idle", 0, 0.05, 3.0, 20)
    idle["simulator"] = None
    r = row(run("guard", 100, 0.25, 403.0, 120), idle)
    assert r["cpu_cores_per_apiserver"] == pytest.approx(0.2)
    assert (r["accepted_per_s"], r["established"], r["log_lines_per_min"]) == (400.0, 100.0, 0.0)
    assert (r["requests_per_s"], r["new_connections_per_s"], r["kept_up"]) == (100.0, 400.0, True)


def test_the_extrapolation_leaves_out_runs_the_simulator_could_not_drive():
    idle = run("idle", 0, 0.0, 0.0, 0)
    rows = [row(run("guard", 50, 0.01, 0, 0), idle), row(run("guard", 100, 0.02, 0, 0), idle),
            row(run("guard", 200, 0.9, 0, 0, kept_up=False), idle)]  # fmt: skip
    (line,) = extrapolated(rows)
    assert line["cpu_cores_per_apiserver"] == pytest.approx(1.0)  # 0.0002 core per node, not the late run's
    assert line["requests_per_s"] == pytest.approx(5000.0)
