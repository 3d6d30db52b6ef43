"""The apiservers' endpoints the playbooks and roles write (the kubeha.apiserver.endpoint filter), rendered by the real
ansible-playbook from the files as they are: the local_proxy role's default backends, the day-2 playbooks' masters
(their first play's roles and first task, taken from add_master.yml and remove_master.yml), and the certificate role's
/readyz endpoints (its vars/main.yml: each master's own, and the other masters' that tasks/peers.yml probes).

An IPv4 master as it is, an IPv6 one in brackets (given with brackets and in capitals: canonical, never bracketed
twice), all at the apiservers' port: kubeha_defaults' 6443, or the inventory's local_proxy_apiserver_port, which every
one of them follows; the certificate role's follow a master's apiserver_cert_sans_address where it is set. A port out
of range stops the run with a message naming the address and the port.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
MASTERS = {"cp1": {"ansible_host": "192.0.2.11"}, "cp2": {"ansible_host": "fd00::12"},
           "cp3": {"ansible_host": "[2001:DB8:0::13]"}}  # fmt: skip
ADDRESSES = ["192.0.2.11", "[fd00::12]", "[2001:db8::13]"]


def show(label: str, expression: str) -> dict:
    msg = f"{label} {{{{ {expression} | to_json | b64encode }}}}"
    return {"name": f"Show {label}", "ansible.builtin.debug": {"msg": msg}}


def day2_play(playbook: str) -> dict:
    """The playbook's first play after the imports (its preflight), with its roles and its first task only."""
    plays = yaml.safe_load((REPO / "playbooks" / f"{playbook}.yml").read_text())
    play = next(play for play in plays if "hosts" in play)
    task = play["tasks"][0]
    assert "day2_masters" in task["ansible.builtin.set_fact"], task
    return {
        "name": f"{playbook} masters",
        "hosts": "w1",
        "gather_facts": False,
        "roles": play["roles"],
        "tasks": [task, show(f"DAY2-{playbook}", "day2_masters")],
    }


def plays() -> list[dict]:
    probe = yaml.safe_load((REPO / "roles" / "apiserver_cert_sans" / "tasks" / "peers.yml").read_text())[0]
    assert probe["kubeha.apiserver.apiserver_readyz"]["endpoints"] == "{{ apiserver_cert_sans_peer_endpoints }}"
    return [
        day2_play("add_master"),
        day2_play("remove_master"),
        {
            "name": "The local proxy's default backends",
            "hosts": "w1",
            "gather_facts": False,
            "roles": [{"role": "kubeha.apiserver.local_proxy", "when": False}],
            "tasks": [show("BACKENDS", "local_proxy_backends")],
        },
        {
            "name": "The certificate role's /readyz endpoints",
            "hosts": "w1",
            "gather_facts": False,
            "roles": [{"role": "kubeha.apiserver.apiserver_cert_sans", "when": False}],
            "tasks": [
                {
                    "name": "Each master's own endpoint",
                    "ansible.builtin.debug": {"msg": "MASTER {{ apiserver_cert_sans_master_endpoint }}"},
                    "vars": {"apiserver_cert_sans_master": "{{ item }}"},
                    "loop": "{{ groups['kube_control_plane'] }}",
                },
                {
                    "name": "Each master's peers' endpoints, which tasks/peers.yml probes",
                    "ansible.builtin.debug": {
                        "msg": "PEERS {{ apiserver_cert_sans_peers | zip(apiserver_cert_sans_peer_endpoints) | to_json"
                        " | b64encode }}"
                    },
                    "vars": {"apiserver_cert_sans_master": "{{ item }}"},
                    "loop": "{{ groups['kube_control_plane'] }}",
                },
            ],
        },
    ]


def inventory(masters: dict | None = None, **variables) -> dict:
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable, "ansible_become": False}
    masters = masters or MASTERS
    groups = {"kube_control_plane": {"hosts": masters}, "kube_node": {"hosts": {"w1": {"ansible_host": "192.0.2.41"}}}}
    return {"all": {"vars": local | variables, "children": groups}}


@pytest.fixture(scope="module")
def results(tmp_path_factory, run_many) -> dict[str, subprocess.CompletedProcess]:
    d = tmp_path_factory.mktemp("endpoints")
    (d / "play.yml").write_text(yaml.safe_dump(plays(), sort_keys=False))
    commands = {}
    for name, variables in (("default", {}), ("port", {"local_proxy_apiserver_port": 8443}),
                            ("bad-port", {"local_proxy_apiserver_port": 70000})):  # fmt: skip
        (d / f"{name}.yml").write_text(yaml.safe_dump(inventory(**variables)))
        commands[name] = ["ansible-playbook", "-i", str(d / f"{name}.yml"), str(d / "play.yml")]
    # The certificate role reaches cp3 at its apiserver_cert_sans_address (the others as before).
    moved = MASTERS | {"cp3": MASTERS["cp3"] | {"apiserver_cert_sans_address": "[2001:DB8::99]"}}
    (d / "moved.yml").write_text(yaml.safe_dump(inventory(moved)))
    commands["moved"] = ["ansible-playbook", "-i", str(d / "moved.yml"), str(d / "play.yml")]
    return run_many(commands)


def shown(proc: subprocess.CompletedProcess, label: str) -> list:
    return [json.loads(base64.b64decode(value)) for value in re.findall(rf'"msg": "{label} ([\w+/=]+)"', proc.stdout)]


def endpoints(port: int) -> list[str]:
    return [f"{address}:{port}" for address in ADDRESSES]


def peers(endpoint_of: dict[str, str]) -> list[list[list[str]]]:
    """For each master, each other master with its endpoint (sorted: apiserver_cert_sans_peers has no fixed order)."""
    return [[[peer, endpoint_of[peer]] for peer in MASTERS if peer != own] for own in MASTERS]


def shown_peers(proc: subprocess.CompletedProcess) -> list[list[list[str]]]:
    """Each master's (peer, endpoint) pairs as the role pairs them (apiserver_cert_sans_peers with the endpoints)."""
    return [sorted(pairs) for pairs in shown(proc, "PEERS")]


@pytest.mark.parametrize("port", [6443, 8443])
def test_every_endpoint_is_the_address_bracketed_if_ipv6_and_the_apiservers_port(results, port):
    run = results["default" if port == 6443 else "port"]
    assert run.returncode == 0, run.stdout + run.stderr
    assert shown(run, "DAY2-add_master") == [endpoints(port)], run.stdout
    assert shown(run, "DAY2-remove_master") == [endpoints(port)], run.stdout
    assert shown(run, "BACKENDS") == [endpoints(port)], run.stdout
    assert re.findall(r'"msg": "MASTER (\S+)"', run.stdout) == endpoints(port), run.stdout
    assert shown_peers(run) == peers(dict(zip(MASTERS, endpoints(port), strict=True))), run.stdout


def test_the_certificate_role_reaches_a_master_at_its_apiserver_cert_sans_address(results):
    run = results["moved"]
    assert run.returncode == 0, run.stdout + run.stderr
    every = [*endpoints(6443)[:2], "[2001:db8::99]:6443"]
    assert re.findall(r'"msg": "MASTER (\S+)"', run.stdout) == every, run.stdout
    assert shown_peers(run) == peers(dict(zip(MASTERS, every, strict=True))), run.stdout
    assert shown(run, "BACKENDS") == [endpoints(6443)], run.stdout  # the proxies' backends do not follow it


def test_a_port_out_of_range_stops_the_run_naming_the_address_and_the_port(results):
    run = results["bad-port"]
    assert run.returncode != 0, run.stdout
    assert "endpoint: '192.0.2.11': port '70000' is not 1-65535" in run.stdout, run.stdout
    assert shown(run, "DAY2-add_master") == [], run.stdout  # the set_fact failed: nothing went on with a bad value
