# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The Node-Ready judge's timeline (pure logic of tests/lab/node_observer.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from node_observer import analyze, timestamp

T0 = 1_800_000_000.0  # the event


def at(seconds: float) -> str:
    """An API MicroTime `seconds` after the event."""
    return datetime.fromtimestamp(T0 + seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def line(t: float, leases: dict, ready: dict | None = None, events: list | None = None, server: str = "a") -> dict:
    return {"t": T0 + t, "server": server, "leases": {n: at(s) for n, s in leases.items()},
            "ready": ready or {}, "not_ready_events": events or []}  # fmt: skip


def test_api_times_with_and_without_microseconds():
    assert timestamp("2027-01-15T08:00:00Z") == timestamp("2027-01-15T08:00:00.000000Z")
    assert timestamp("2027-01-15T08:00:00.250000Z") - timestamp("2027-01-15T08:00:00Z") == 0.25
    assert timestamp(None) is None


def test_gaps_come_from_kubelets_own_renew_times_whatever_the_polling():
    # Polled every 3 s (and two apiservers answering the same renewal): the gaps are still the renewals' own.
    lines = [line(-3, {"w2": -5.5}), line(0, {"w2": -5.5}, server="b"), line(3, {"w2": 4.5}),
             line(6, {"w2": 4.5}, server="b"), line(15, {"w2": 14.6}), line(18, {"w2": 14.6})]  # fmt: skip
    report = analyze(lines, T0, T0 + 18)["w2"]
    assert report["gaps_s"] == [10.0, 10.1]
    assert report["renewals"] == [4.5, 14.6]
    assert report["longest_gap_s"] == 10.1
    assert report["not_ready_seen"] is False


def test_a_kubelet_that_stopped_renewing_has_a_gap_growing_to_the_end_of_the_window():
    lines = [line(0, {"w1": -2}), line(30, {"w1": -2}), line(60, {"w1": -2})]
    report = analyze(lines, T0, T0 + 60)["w1"]
    assert report["gaps_s"] == []  # no renewal at all after the one before the event
    assert report["open_gap_s"] == 62
    assert report["longest_gap_s"] == 62


def test_not_ready_from_any_apiserver_and_events_in_the_window_only():
    lines = [
        line(0, {"w1": -2}, ready={"w1": ["True", None, None]}),
        line(50, {"w1": -2}, ready={"w1": ["Unknown", None, None]}, server="b",
             events=[["w1", at(49)], ["w1", at(-100)]]),
        line(51, {"w1": -2}, ready={"w1": ["Unknown", None, None]}, events=[["w1", at(49)]]),
    ]  # fmt: skip
    report = analyze(lines, T0, T0 + 60)["w1"]
    assert report["not_ready_seen"] is True
    assert report["first_not_ready_s"] == 50
    assert report["not_ready_events"] == 1  # the same event from two apiservers, and an older one left out


def test_a_status_seen_outside_the_window_does_not_count():
    lines = [
        line(-20, {"w2": -2}, ready={"w2": ["False", None, None]}),
        line(5, {"w2": 8}, ready={"w2": ["True", None, None]}),
    ]
    assert analyze(lines, T0, T0 + 10)["w2"]["not_ready_seen"] is False
