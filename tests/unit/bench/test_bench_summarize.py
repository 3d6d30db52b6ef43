# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""What `make bench` keeps of one failover run (tests/bench/bench.py summarize() and dumps()): the aggregates of
the table, and the timeline the picture is drawn from, in seconds from the event."""

from __future__ import annotations

import json

import bench

EVENT = 1_700_000_100.0


def conn(pinned: bool, closed: float | None = None, again: float | None = None) -> dict:
    return {"pinned": pinned, "backends": ["cp2" if pinned else "cp1"], "closed_at": closed, "error": "",
            "answered_again_at": again}  # fmt: skip


RUN = {
    "start": EVENT - 4.0,
    "steady": [
        [EVENT - 1.25, True, "", 0.01234],
        [EVENT - 0.004, False, "ConnectionError: closed by peer", 0.03],  # in flight when the event struck
        [EVENT + 0.1004, False, "ConnectionRefusedError: refused", 0.00106],
        [EVENT + 2.5, True, "", 0.2],
    ],
    "long_lived": [conn(True, EVENT + 0.2, EVENT + 0.35), conn(True, EVENT + 0.3, None), conn(False)],
}


def test_the_timeline_is_every_steady_request_in_seconds_from_the_event():
    outcome = bench.summarize(RUN, EVENT)
    assert outcome["timeline"] == [[-1.25, True, 0.0123], [-0.004, False, 0.03], [0.1, False, 0.0011],
                                   [2.5, True, 0.2]]  # fmt: skip
    # Negative control: a request sent before the event is before it on the timeline, not at its epoch time.
    assert outcome["timeline"][0][0] < 0


def test_the_pinned_long_lived_connections_are_kept_one_by_one_and_the_maxima_stay():
    outcome = bench.summarize(RUN, EVENT)
    assert outcome["long_lived_timeline"] == [
        {"closed_s": 0.2, "answered_again_s": 0.35},
        {"closed_s": 0.3, "answered_again_s": None},  # hung: closed, never answered again
    ]
    assert (outcome["long_lived_pinned"], outcome["long_lived_hung"], outcome["long_lived_closed_max_s"]) == (2, 1, 0.3)
    assert outcome["long_lived_answered_again_max_s"] is None  # one pinned connection never came back


def test_the_table_figures_are_unchanged_by_the_timeline():
    outcome = bench.summarize(RUN, EVENT)
    assert (outcome["requests"], outcome["failed"], outcome["failed_in_flight"]) == (4, 1, 1)
    assert (outcome["last_failure_s"], outcome["failed_after_2s"], outcome["slowest_after_2s_s"]) == (0.1, 0, 0.2)


def test_dumps_keeps_the_data_and_puts_each_timeline_row_on_one_line():
    results = {"failover": {"killed": {"ipvs": bench.summarize(RUN, EVENT)}}}
    text = bench.dumps(results)
    assert json.loads(text) == results
    rows = [line.strip() for line in text.splitlines() if line.strip().startswith("[") and "true" in line]
    assert rows == ["[-1.25, true, 0.0123],", "[2.5, true, 0.2]"]
    # Strings are left alone, even one that looks like a list of numbers.
    odd = {"errors": ["[1,2]", "a,\\nb"], "blocks": [1.0, 2.5]}
    assert json.loads(bench.dumps(odd)) == odd
    assert '"blocks": [1.0, 2.5]' in bench.dumps(odd)
