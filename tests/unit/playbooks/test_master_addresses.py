"""The masters' addresses the proxies get (kubespray's access_ip and ip, ansible_host, a DNS name), and groups
named by the inventory (kubeha_control_plane_group, kubeha_node_group).

check_inventory.yml (from the collection, as every playbook imports it) resolves the masters once on the controller
and shows them; then site.yml's own preflight play runs the real proxy_preflight module through local connections,
and its answer lists the backends the role computed. cp3 is given by a DNS name that this machine's resolver knows
(localhost); the other masters by kubespray's variables, which win over ansible_host. Negative control: the same
inventory without the kubespray variables gives the ansible_host addresses, so the assertion can tell them apart.
Groups named otherwise: with the two variables set, the preflight play (kube_control_plane:kube_node, as the playbook
has it) runs on the inventory's own groups; without them the run fails at the check (test_inventory_check.py).
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from .test_preflight_stops_every_host import preflight_play

SHOW_BACKENDS = "BACKENDS {{ local_proxy_preflight.backends | join(',') }}"
MASTERS = {
    "cp1": {"ansible_host": "192.0.2.11", "ip": "192.0.2.21"},
    "cp2": {"ansible_host": "192.0.2.12", "ip": "192.0.2.22", "access_ip": "192.0.2.32"},
    "cp3": {"ansible_host": "localhost"},
}


def inventory(masters: dict, master_group: str = "kube_control_plane", node_group: str = "kube_node") -> dict:
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable, "ansible_become": False}
    if master_group != "kube_control_plane":
        local |= {"kubeha_control_plane_group": master_group, "kubeha_node_group": node_group}
    groups = {master_group: {"hosts": masters}, node_group: {"hosts": {"w1": {"ansible_host": "192.0.2.41"}}}}
    return {"all": {"vars": local, "children": groups}}


def backends(proc: subprocess.CompletedProcess) -> list[str]:
    found = re.findall(r'"msg": "BACKENDS ([^"]*)"', proc.stdout)
    assert len(found) == 1, proc.stdout
    return found[0].split(",")


@pytest.fixture(scope="module")
def results(tmp_path_factory, run_many) -> dict[str, subprocess.CompletedProcess]:
    d = tmp_path_factory.mktemp("addresses")
    plain = {name: {"ansible_host": values["ansible_host"]} for name, values in MASTERS.items()}
    show = {"hosts": "w1", "gather_facts": False,
            "tasks": [{"ansible.builtin.debug": {"msg": SHOW_BACKENDS}}]}  # fmt: skip
    play = preflight_play("site") | {"hosts": "w1"}
    commands = {}
    for name, masters in (("kubespray", MASTERS), ("plain", plain)):
        (d / f"{name}.yml").write_text(yaml.safe_dump(inventory(masters)))
        path = d / f"{name}-play.yml"
        path.write_text(yaml.safe_dump([{"import_playbook": "kubeha.apiserver.check_inventory"}, play, show],
                                       sort_keys=False))  # fmt: skip
        commands[name] = ["ansible-playbook", "-i", str(d / f"{name}.yml"), str(path)]
    (d / "named.yml").write_text(yaml.safe_dump(inventory(plain, "masters", "workers")))
    (d / "named-play.yml").write_text(
        yaml.safe_dump(
            [{"import_playbook": "kubeha.apiserver.check_inventory"}, preflight_play("site"), show], sort_keys=False
        )
    )
    commands["named"] = ["ansible-playbook", "-i", str(d / "named.yml"), str(d / "named-play.yml")]
    return run_many(commands)


def test_access_ip_then_ip_then_a_dns_name_resolved_on_the_controller(results):
    run = results["kubespray"]
    assert run.returncode == 0, run.stdout
    assert "the masters' addresses: cp1 at 192.0.2.21, cp2 at 192.0.2.32, cp3 at 127.0.0.1" in run.stdout, run.stdout
    assert backends(run) == ["192.0.2.21:6443", "192.0.2.32:6443", "127.0.0.1:6443"]


def test_negative_control_without_kubesprays_variables_ansible_host(results):
    run = results["plain"]
    assert run.returncode == 0, run.stdout
    assert backends(run) == ["192.0.2.11:6443", "192.0.2.12:6443", "127.0.0.1:6443"]


def test_groups_named_by_the_inventory_are_the_ones_the_plays_run_on(results):
    run = results["named"]
    assert run.returncode == 0, run.stdout
    assert "masters: cp1, cp2, cp3; workers: w1" in run.stdout, run.stdout
    # The preflight play, whose hosts are kube_control_plane:kube_node, ran on the inventory's masters and workers.
    task = "TASK [kubeha.apiserver.local_proxy : Check the settings"
    preflight = run.stdout.partition(task)[2].partition("\nTASK [")[0].partition("PLAY [")[0]
    assert sorted(re.findall(r"^ok: \[(\w+)\]", preflight, re.M)) == ["cp1", "cp2", "cp3", "w1"], run.stdout
    assert backends(run) == ["192.0.2.11:6443", "192.0.2.12:6443", "127.0.0.1:6443"]
