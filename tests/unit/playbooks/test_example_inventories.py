"""examples/inventory: each layout maps its masters into kube_control_plane and its workers into kube_node, every
playbook parses with it, the inventory check passes on it (and fails once the mapping is gone), and its settings
are variables the collection really reads."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from example_inventory import EXAMPLES, LAYOUTS, PLAYBOOKS, group_members, write_example_inventory

REPO = Path(__file__).resolve().parents[3]
EXPECTED = {
    "kubeadm": ({"cp1", "cp2", "cp3"}, {"w1", "w2"}),
    "kubespray": ({"node1", "node2", "node3"}, {"node4", "node5"}),
}
HELPER_MASTERS = {"m1": "10.88.0.11", "m2": "10.88.0.12"}
HELPER_WORKERS = {"n1": "10.88.0.21"}


def show(proc: subprocess.CompletedProcess) -> str:
    return f"rc={proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def unmap(layout: str, root: Path) -> None:
    """Undo the layout's mapping into the collection's groups, as an inventory that never had it."""
    path = root / LAYOUTS[layout].hosts_file
    inv = yaml.safe_load(path.read_text())
    children = inv["all"]["children"]
    if layout == "kubeadm":
        del children["kube_control_plane"], children["kube_node"]
    else:  # kubespray's group names before 2.22
        children["kube-master"] = children.pop("kube_control_plane")
        children["kube-node"] = children.pop("kube_node")
        children["k8s_cluster"]["children"] = {"kube-master": None, "kube-node": None}
    path.write_text(yaml.safe_dump(inv))


@pytest.fixture(scope="module")
def results(tmp_path_factory, run_many) -> dict[str, subprocess.CompletedProcess]:
    commands: dict[str, list[str]] = {}
    for layout, spec in LAYOUTS.items():
        inv = str(EXAMPLES / layout / spec.hosts_file)
        commands[f"{layout}-list"] = ["ansible-inventory", "-i", inv, "--list"]
        commands[f"{layout}-syntax"] = [
            "ansible-playbook",
            "--syntax-check",
            "-i",
            inv,
            *(f"kubeha.apiserver.{pb}" for pb in PLAYBOOKS),
        ]
        commands[f"{layout}-check"] = ["ansible-playbook", "-i", inv, "kubeha.apiserver.check_inventory"]
        unmapped = tmp_path_factory.mktemp(f"{layout}-unmapped")
        shutil.copytree(EXAMPLES / layout, unmapped, dirs_exist_ok=True)
        unmap(layout, unmapped)
        commands[f"{layout}-unmapped"] = [
            "ansible-playbook",
            "-i",
            str(unmapped / spec.hosts_file),
            "kubeha.apiserver.check_inventory",
        ]
        written = write_example_inventory(
            tmp_path_factory.mktemp(f"{layout}-written"),
            layout,
            HELPER_MASTERS,
            HELPER_WORKERS,
            all_vars={"ansible_user": "root"},
            host_vars={"n1": {"kubeha_lab_kind": "qemu"}},
            settings={"local_proxy_mode": "haproxy"},
        )
        commands[f"{layout}-written"] = ["ansible-inventory", "-i", str(written), "--list"]
    return run_many(commands)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_groups_are_mapped(results, layout):
    proc = results[f"{layout}-list"]
    assert proc.returncode == 0, show(proc)
    listing = json.loads(proc.stdout)
    masters, workers = EXPECTED[layout]
    assert group_members(listing, "kube_control_plane") == masters
    assert group_members(listing, "kube_node") == workers
    # The layout's settings file is read for every node (group_vars beside the hosts file).
    hostvars = listing["_meta"]["hostvars"]
    assert all(hostvars[h]["local_proxy_port"] == 6444 for h in masters | workers), hostvars


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_playbook_parses_with_it(results, layout):
    proc = results[f"{layout}-syntax"]
    assert proc.returncode == 0, show(proc)
    assert len(re.findall(r"^playbook: ", proc.stdout, re.MULTILINE)) == len(PLAYBOOKS), show(proc)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_inventory_check_passes_and_fails_without_the_mapping(results, layout):
    masters, workers = EXPECTED[layout]
    proc = results[f"{layout}-check"]
    assert proc.returncode == 0, show(proc)
    assert f"kube_control_plane: {', '.join(sorted(masters))}; kube_node: {', '.join(sorted(workers))}" in proc.stdout
    unmapped = results[f"{layout}-unmapped"]
    assert unmapped.returncode != 0, show(unmapped)
    assert "has no host in group kube_control_plane (groups found: " in unmapped.stdout + unmapped.stderr


def known_variables() -> set[str]:
    """Every role variable (argument_specs, any entry point) and every variable a playbook reads with a default."""
    names: set[str] = set()
    for spec in REPO.glob("roles/*/meta/argument_specs.yml"):
        for entry in yaml.safe_load(spec.read_text())["argument_specs"].values():
            names |= set(entry.get("options", {}))
    for playbook in REPO.glob("playbooks/*.yml"):
        names |= set(re.findall(r"\b([a-z][a-z0-9_]*) \| default\(", playbook.read_text()))
    return names


def unknown_settings(path: Path, known: set[str]) -> list[str]:
    return sorted(set(yaml.safe_load(path.read_text())) - known)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_settings_are_real_variables(layout, tmp_path):
    known = known_variables()
    settings = EXAMPLES / layout / LAYOUTS[layout].settings_file
    assert unknown_settings(settings, known) == []
    assert {"local_proxy_pip_index_url", "local_proxy_pip_find_links", "local_proxy_vip4"} <= set(
        yaml.safe_load(settings.read_text())
    )
    # Negative control: a misspelt name is caught.
    typo = tmp_path / "typo.yml"
    typo.write_text(settings.read_text() + "local_proxy_vip: 169.254.100.2\n")
    assert unknown_settings(typo, known) == ["local_proxy_vip"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_write_example_inventory_puts_the_given_hosts_in_the_layout(results, layout):
    proc = results[f"{layout}-written"]
    assert proc.returncode == 0, show(proc)
    listing = json.loads(proc.stdout)
    assert group_members(listing, "kube_control_plane") == set(HELPER_MASTERS)
    assert group_members(listing, "kube_node") == set(HELPER_WORKERS)
    hostvars = listing["_meta"]["hostvars"]
    assert {h: hostvars[h]["ansible_host"] for h in HELPER_MASTERS} == HELPER_MASTERS
    assert hostvars["n1"]["kubeha_lab_kind"] == "qemu"
    assert hostvars["n1"]["ansible_user"] == "root"
    assert hostvars["m1"]["local_proxy_mode"] == "haproxy"  # settings merged into the layout's file
    assert hostvars["m1"]["local_proxy_port"] == 6444  # the rest of it kept
    assert not set(EXPECTED[layout][0] | EXPECTED[layout][1]) & set(hostvars)  # the example's own hosts are gone
