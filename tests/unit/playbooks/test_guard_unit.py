# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The guard's systemd unit as the local_proxy role writes it (its template, rendered with Jinja2 and the role's
defaults): systemd never gives up restarting it, and its watchdog leaves room for the rounds the guard is set to run.
The lab shows systemd acting on it (tests/integration/test_local_proxy.py, a wedged guard is restarted)."""

from __future__ import annotations

import configparser
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

ROLE = Path(__file__).resolve().parents[3] / "roles" / "local_proxy"


def render_unit(**overrides: Any) -> configparser.ConfigParser:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    variables = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text(encoding="utf-8"))
    variables.update(ansible_managed="managed", local_proxy_node_mode="ipvs", **overrides)
    text = env.from_string((ROLE / "templates" / "kubeha-apiserver-guard.service.j2").read_text()).render(variables)
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # systemd's keys are case-sensitive
    unit.read_string(text)
    return unit


def test_systemd_never_gives_up_and_watches_the_rounds():
    unit = render_unit()
    assert unit["Unit"]["StartLimitIntervalSec"] == "0"
    assert unit["Service"]["Restart"] == "always"
    assert unit["Service"]["Type"] == "notify"  # WATCHDOG=1 goes over the notify socket
    assert unit["Service"]["WatchdogSec"] == "15"
    assert unit["Service"]["TimeoutAbortSec"] == "5"


@pytest.mark.parametrize(
    ("interval", "timeout", "watchdog"),
    [(1.0, 1.0, "15"), (0.5, 0.25, "15"), (5, 2, "29"), (10.0, 3.5, "57")],
)
def test_the_watchdog_outlasts_five_rounds_and_two_timeouts(interval, timeout, watchdog):
    # A slow round (every probe timing out) must never look wedged.
    unit = render_unit(local_proxy_interval=interval, local_proxy_timeout=timeout)
    assert unit["Service"]["WatchdogSec"] == watchdog
