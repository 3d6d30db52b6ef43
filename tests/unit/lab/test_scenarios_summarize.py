# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""How the drills count failed requests around an event (pure logic of tests/lab/scenarios.py)."""

from __future__ import annotations

import time

from scenarios import strike, summarize

EVENT = 100.0


def request(t: float, ok: bool, took: float = 0.01, error: str = "") -> list:
    return [t, ok, error, took]


def test_a_request_running_when_the_event_struck_counts_apart():
    results = [request(99.0, True), request(99.99, False, took=0.02, error="EOF"), request(100.1, True)]
    outcome = summarize(results, EVENT)
    assert (outcome["failed"], outcome["failed_in_flight"]) == (0, 1)


def test_a_request_sent_after_the_event_counts_as_failed():
    outcome = summarize([request(100.001, False, error="refused"), request(100.5, True)], EVENT)
    assert (outcome["failed"], outcome["failed_in_flight"]) == (1, 0)
    assert outcome["first_failure_s"] == outcome["last_failure_s"] == 0.001


def test_a_request_that_failed_and_ended_before_the_event_is_not_excused():
    # Negative control of the rule above: a failure that was over before the event is not the event's.
    outcome = summarize([request(98.0, False, took=0.05, error="refused")], EVENT)
    assert (outcome["failed"], outcome["failed_in_flight"]) == (1, 0)
    assert outcome["last_failure_s"] == -2.0


def test_a_request_that_began_while_the_victim_was_dying_counts_apart():
    # A kill lasts from the signal to the closed socket (kill_apiserver): a connection made in between fails.
    results = [request(100.024, False, took=0.03, error="SSLEOFError"), request(100.2, True)]
    outcome = summarize(results, EVENT, event_end=100.08)
    assert (outcome["failed"], outcome["failed_in_flight"], outcome["event_lasted_s"]) == (0, 1, 0.08)


def test_a_request_that_began_after_the_victim_was_gone_is_not_excused():
    # Negative control of the window: the same failure, sent once the socket was closed, is a failure.
    results = [request(100.09, False, took=0.03, error="refused"), request(100.2, True)]
    outcome = summarize(results, EVENT, event_end=100.08)
    assert (outcome["failed"], outcome["failed_in_flight"]) == (1, 0)
    # And without a window, the instant of the signal alone is the event (the rule of the tests above).
    assert summarize([request(100.024, False, took=0.03)], EVENT)["failed"] == 1


def test_the_slowest_request_is_taken_from_settle_s_on():
    results = [request(100.5, True, took=1.5), request(102.0, True, took=0.3), request(103.0, True, took=0.2)]
    assert summarize(results, EVENT)["slowest_after_settle_s"] == 0.3


def test_an_event_that_knows_its_instant_gives_it_else_its_start_counts():
    assert strike(lambda: 1234.5, offset=0.25) == (1234.75, 1234.75)
    assert strike(lambda: (1234.5, 1234.625), offset=0.25) == (1234.75, 1234.875)
    before = time.time()
    start, end = strike(lambda: None, offset=0.0)
    assert before <= start == end <= time.time()
