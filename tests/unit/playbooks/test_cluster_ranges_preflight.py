"""Preflight refuses a VIP inside the cluster's service or pod ranges as the first master's read found them.

site.yml's own preflight play runs the real proxy_preflight module through a local connection; the first master
carries the result of playbooks/cluster_networks.yml (`cluster_networks_read`) as the read leaves it. The read
itself runs against the lab's clusters (tests/integration/test_kubeadm_join_through_vip.py) and in unit tests
(tests/unit/plugins/modules/test_cluster_networks_info.py). Negative control: the same VIP without the read passes
preflight, and says that the ranges were not read.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from .test_preflight_stops_every_host import preflight_play

VIP = "198.51.100.10"
READ = {"ranges": ["198.51.100.0/24", "203.0.113.0/24"]}


@pytest.fixture(scope="module")
def results(tmp_path_factory, run_many) -> dict[str, subprocess.CompletedProcess]:
    d = tmp_path_factory.mktemp("ranges")
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable, "ansible_become": False,
             "local_proxy_vip4": VIP}  # fmt: skip
    commands = {}
    for name, first in (("read", {"ansible_host": "192.0.2.11", "cluster_networks_read": READ}),
                        ("not-read", {"ansible_host": "192.0.2.11"})):  # fmt: skip
        groups = {"kube_control_plane": {"hosts": {"cp1": first}},
                  "kube_node": {"hosts": {"w1": {"ansible_host": "192.0.2.21"}}}}  # fmt: skip
        inventory = {"all": {"vars": local, "children": groups}}
        (d / f"{name}.yml").write_text(yaml.safe_dump(inventory))
        (d / "play.yml").write_text(yaml.safe_dump([preflight_play("site") | {"hosts": "w1"}], sort_keys=False))
        commands[name] = ["ansible-playbook", "-i", str(d / f"{name}.yml"), str(d / "play.yml")]
    return run_many(commands)


def test_a_vip_inside_a_range_the_cluster_uses_is_refused_naming_both(results):
    run = results["read"]
    assert run.returncode != 0, run.stdout
    assert f"VIP {VIP} is inside 198.51.100.0/24, a node, pod or service range" in run.stdout, run.stdout
    assert "WARNING: the cluster's service and pod ranges were not read" not in run.stdout, run.stdout


def test_negative_control_without_the_read_the_same_vip_passes_and_preflight_says_so(results):
    run = results["not-read"]
    assert run.returncode == 0, run.stdout
    assert "WARNING: the cluster's service and pod ranges were not read" in run.stdout, run.stdout
