"""A preflight that fails on some hosts only stops every host before any change (issue: half-applied clusters).

The playbooks' own preflight plays (taken from their files as they are) run with the real proxy_preflight module on
this machine, through hosts with a local connection: the masters' addresses are documentation addresses that no one
contacts. One master gets a VIP that preflight refuses (a loopback address); the others are fine. A second play that
only says "reached" stands for the rest of the playbook. Negative control: the same preflight play without
``any_errors_fatal`` lets the good hosts go on to it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
# The playbooks whose first play after the inventory check is a preflight a single host can fail.
PREFLIGHT_PLAYBOOKS = ("site", "add_master", "prepare_node")
GOOD_HOSTS = ("cp1", "w1")
MARKER = "The rest of the playbook"


def preflight_play(playbook: str) -> dict:
    plays = yaml.safe_load((REPO / "playbooks" / f"{playbook}.yml").read_text())
    return next(play for play in plays if play.get("name", "").startswith("Preflight"))


def reached_marker(proc: subprocess.CompletedProcess) -> list[str]:
    """The hosts that ran a task of the marker play."""
    _before, _header, after = proc.stdout.partition(f"PLAY [{MARKER}]")
    return sorted(set(re.findall(r"^ok: \[(\w+)\]", after, re.M)))


@pytest.fixture(scope="module")
def results(tmp_path_factory, run_many) -> dict[str, subprocess.CompletedProcess]:
    d = tmp_path_factory.mktemp("preflight")
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable, "ansible_become": False}
    inventory = {
        "all": {
            "vars": local,
            "children": {
                "kube_control_plane": {
                    "hosts": {
                        "cp1": {"ansible_host": "192.0.2.11"},
                        # Refused by preflight on cp2 alone: a loopback VIP.
                        "cp2": {"ansible_host": "192.0.2.12", "local_proxy_vip4": "127.0.0.2"},
                    }
                },
                "kube_node": {"hosts": {"w1": {"ansible_host": "192.0.2.21"}}},
            },
        }
    }
    (d / "inventory.yml").write_text(yaml.safe_dump(inventory))
    marker = {
        "name": MARKER,
        "hosts": "kube_control_plane:kube_node",
        "gather_facts": False,
        "tasks": [{"name": "Reached", "ansible.builtin.debug": {"msg": "reached"}}],
    }
    commands = {}
    for playbook in PREFLIGHT_PLAYBOOKS:
        play = preflight_play(playbook)
        unguarded = {key: value for key, value in play.items() if key != "any_errors_fatal"}
        for kind, first in (("as-is", play), ("unguarded", unguarded)):
            path = d / f"{playbook}-{kind}.yml"
            path.write_text(yaml.safe_dump([first, marker], sort_keys=False))
            commands[f"{playbook}-{kind}"] = ["ansible-playbook", "-i", str(d / "inventory.yml"), str(path)]
    return run_many(commands)


@pytest.mark.parametrize("playbook", PREFLIGHT_PLAYBOOKS)
def test_one_hosts_bad_value_stops_every_host(results, playbook):
    run = results[f"{playbook}-as-is"]
    assert run.returncode != 0, run.stdout
    assert "VIP 127.0.0.2 is a loopback address" in run.stdout, run.stdout  # the failing host, named with its value
    assert reached_marker(run) == [], run.stdout


@pytest.mark.parametrize("playbook", PREFLIGHT_PLAYBOOKS)
def test_negative_control_without_any_errors_fatal_the_others_go_on(results, playbook):
    run = results[f"{playbook}-unguarded"]
    assert "VIP 127.0.0.2 is a loopback address" in run.stdout, run.stdout
    assert reached_marker(run) == sorted(GOOD_HOSTS), run.stdout  # preflight passed there: they would be changed


def test_remove_master_stops_every_node_when_one_cannot_reach_a_master():
    """Its first play probes the remaining masters from every node (no local stand-in): the keyword is checked."""
    plays = yaml.safe_load((REPO / "playbooks" / "remove_master.yml").read_text())
    first = next(play for play in plays if "hosts" in play)
    assert first["name"] == "Every node must reach a remaining master before any change"
    assert first.get("any_errors_fatal") is True
