"""Every playbook fails before contacting any host when the inventory lacks kube_control_plane (check_inventory.yml).

The inventories' hosts are SSH targets on a closed local port: a play that reached one would report it
unreachable at once. The negative controls run the same hosts with the groups mapped: the check passes, and a
playbook that goes on does reach them (so the assertions that nothing was reached can fail).
"""

from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path

import pytest
import yaml
from example_inventory import PLAYBOOKS

MASTERS = ("cp1", "cp2")
WORKERS = ("w1",)
FAKE_HOSTS = (*MASTERS, *WORKERS, "lb1")
NO_MASTERS = "has no host in group kube_control_plane (groups found: masters, workers; hosts: 3)"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def show(proc: subprocess.CompletedProcess) -> str:
    return f"rc={proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def reached(proc: subprocess.CompletedProcess, host: str) -> bool:
    """A result line for `host` itself (not a task it delegated to the controller)."""
    return (
        re.search(rf"^\w+: \[{host}\]", proc.stdout, re.MULTILINE) is not None
        or f"[{host}]: UNREACHABLE" in proc.stdout
    )


def plays(proc: subprocess.CompletedProcess) -> list[str]:
    return re.findall(r"^PLAY \[(.*)\] \*+$", proc.stdout, re.MULTILINE)


@pytest.fixture(scope="module")
def inventories(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inventories")
    port = closed_port()

    def host() -> dict:
        return {"ansible_host": "127.0.0.1", "ansible_port": port}

    base_vars = {"ansible_connection": "ssh", "ansible_user": "nobody", "ansible_ssh_common_args": "-o BatchMode=yes"}
    wrong = {
        "all": {
            "vars": base_vars,
            "children": {
                "masters": {"hosts": {h: host() for h in MASTERS}},
                "workers": {"hosts": {h: host() for h in WORKERS}},
            },
        }
    }
    mapped = yaml.safe_load(yaml.safe_dump(wrong))
    mapped["all"]["children"] |= {
        "kube_control_plane": {"children": {"masters": None}},
        "kube_node": {"children": {"workers": None}},
        "loadbalancers": {"hosts": {"lb1": host()}},
    }
    no_address = yaml.safe_load(yaml.safe_dump(mapped))
    del no_address["all"]["children"]["masters"]["hosts"]["cp2"]["ansible_host"]
    with_backends = yaml.safe_load(yaml.safe_dump(no_address))
    with_backends["all"]["vars"]["local_proxy_backends"] = ["10.0.0.11:6443", "10.0.0.12:6443"]
    by_name = yaml.safe_load(yaml.safe_dump(mapped))
    by_name["all"]["children"]["masters"]["hosts"]["cp1"]["ansible_host"] = "localhost"
    by_name["all"]["children"]["masters"]["hosts"]["cp2"] |= {"access_ip": "192.0.2.12", "ip": "192.0.2.22"}
    files = {"wrong": wrong, "mapped": mapped, "no_address": no_address, "with_backends": with_backends,
             "by_name": by_name}  # fmt: skip
    paths = {}
    for name, data in files.items():
        paths[name] = d / f"{name}.yml"
        paths[name].write_text(yaml.safe_dump(data))
    paths["empty"] = d / "empty.yml"
    paths["empty"].write_text("all: {}\n")
    return paths


@pytest.fixture(scope="module")
def results(inventories, run_many) -> dict[str, subprocess.CompletedProcess]:
    def play(inv: str, playbook: str, *extra: str) -> list[str]:
        return ["ansible-playbook", "-i", str(inventories[inv]), f"kubeha.apiserver.{playbook}", *extra]

    commands = {f"wrong-{pb}": play("wrong", pb) for pb in PLAYBOOKS}
    commands |= {
        "wrong-check-limit": play("wrong", "site", "--check", "--diff", "--limit", "w1"),
        "mapped-site-check-only": play("mapped", "site", "--check", "--tags", "check_inventory"),
        "mapped-limit": play("mapped", "check_inventory", "--check", "--limit", "w1"),
        "mapped-site": play("mapped", "site", "--check"),
        "no_address": play("no_address", "check_inventory"),
        "with_backends": play("with_backends", "check_inventory"),
        "by_name": play("by_name", "check_inventory"),
        "empty": play("empty", "check_inventory"),
    }
    return run_many(commands)


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_wrong_groups_fail_before_any_host(results, playbook):
    proc = results[f"wrong-{playbook}"]
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, show(proc)
    assert NO_MASTERS in text, show(proc)
    assert "map your groups with children: see examples/inventory" in text, show(proc)
    assert not [h for h in FAKE_HOSTS if reached(proc, h)], show(proc)
    # The run stopped at the check: no later play even started.
    assert plays(proc) == ["The inventory names the masters (kube_control_plane) and the nodes (kube_node)"], show(proc)


def test_wrong_groups_fail_in_check_mode_with_a_limit_that_leaves_out_every_master(results):
    proc = results["wrong-check-limit"]
    assert proc.returncode != 0, show(proc)
    assert NO_MASTERS in proc.stdout + proc.stderr, show(proc)
    assert "fatal: [w1 -> localhost]" in proc.stdout, show(proc)  # on the controller, for the limited host
    assert not [h for h in FAKE_HOSTS if reached(proc, h)], show(proc)
    assert len(plays(proc)) == 1, show(proc)


def test_mapped_groups_pass_the_check_of_site(results):
    proc = results["mapped-site-check-only"]
    assert proc.returncode == 0, show(proc)
    assert "kube_control_plane: cp1, cp2; kube_node: w1" in proc.stdout, show(proc)
    # The host in neither group is named, as a warning only.
    assert re.search(r"WARNING: in neither kube_control_plane nor kube_node, left alone: lb1\b", proc.stdout), show(
        proc
    )
    # rc 0 with every host an SSH target on a closed port: nothing connected to one (the roles' argument checks,
    # tagged always like the check, run on the controller).
    assert "UNREACHABLE" not in proc.stdout, show(proc)
    assert len(plays(proc)) > 1, show(proc)  # the check let site.yml go on


def test_a_limit_does_not_narrow_the_check(results):
    proc = results["mapped-limit"]
    assert proc.returncode == 0, show(proc)
    assert "ok: [w1 -> localhost]" in proc.stdout, show(proc)
    assert "kube_control_plane: cp1, cp2; kube_node: w1" in proc.stdout, show(proc)


def test_negative_control_with_mapped_groups_site_reaches_the_hosts(results):
    """What the other tests rule out does show when the check passes: site.yml's next play tries every host."""
    proc = results["mapped-site"]
    assert proc.returncode != 0, show(proc)
    assert [h for h in (*MASTERS, *WORKERS) if reached(proc, h)] == [*MASTERS, *WORKERS], show(proc)
    assert not reached(proc, "lb1"), show(proc)  # in neither group: left alone, as the warning says


def test_a_master_whose_name_does_not_resolve_fails_unless_backends_are_set(results):
    """cp2 has no address variable: its inventory name is its address, and "cp2" resolves nowhere."""
    proc = results["no_address"]
    assert proc.returncode != 0, show(proc)
    assert "host cp2 (inventory_hostname): cannot resolve 'cp2' on the controller" in proc.stdout, show(proc)
    assert not [h for h in FAKE_HOSTS if reached(proc, h)], show(proc)
    assert results["with_backends"].returncode == 0, show(results["with_backends"])


def test_masters_by_dns_name_and_kubesprays_variables_resolved_once_and_shown(results):
    """cp1 by a DNS name (resolved by this machine's resolver), cp2 by kubespray's access_ip over its ansible_host."""
    proc = results["by_name"]
    assert proc.returncode == 0, show(proc)
    assert "the masters' addresses: cp1 at 127.0.0.1, cp2 at 192.0.2.12" in proc.stdout, show(proc)


def test_an_empty_inventory_fails(results):
    proc = results["empty"]
    assert proc.returncode != 0, show(proc)
    assert "has no host in group kube_control_plane (groups found: none; hosts: 0)" in proc.stdout + proc.stderr, show(
        proc
    )
