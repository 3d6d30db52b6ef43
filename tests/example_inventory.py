"""The example inventories of examples/inventory, written anew with other hosts (for tests that run playbooks).

`write_example_inventory(dest, "kubeadm", masters={"cp1": "10.88.0.11"}, workers={"w1": "10.88.0.21"})` copies
examples/inventory/kubeadm into `dest` with those hosts in place of the example's, in the same groups, and returns
the inventory file to pass to `ansible-playbook -i`. Every other file of the layout (its group_vars) is copied as it
is, with `settings` merged into the layout's kubeha.apiserver settings file; `all_vars` go under `all: vars:` of the
hosts file, `host_vars` into each host's entry. The tests of the examples use the same layouts, so a layout that
stops mapping its groups fails there first.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "inventory"
# The collection's playbooks a user runs, each against these inventories (each imports check_inventory.yml first).
# Not the two that every playbook imports first.
IMPORTED = ("check_inventory", "cluster_networks")
PLAYBOOKS = tuple(sorted(p.stem for p in (EXAMPLES.parents[1] / "playbooks").glob("*.yml") if p.stem not in IMPORTED))


@dataclass(frozen=True)
class Layout:
    hosts_file: str  # the inventory file, relative to the layout's directory
    settings_file: str  # the group_vars file that holds kubeha.apiserver's settings
    master_groups: tuple[str, ...]  # the groups that list the masters by name
    worker_groups: tuple[str, ...]  # the groups that list the other nodes by name
    hosts_under_all: bool  # kubespray: every host's variables under all: hosts:, the groups name them only


LAYOUTS: dict[str, Layout] = {
    "kubeadm": Layout("hosts.yml", "group_vars/all.yml", ("masters",), ("workers",), hosts_under_all=False),
    "kubespray": Layout(
        "inventory/mycluster/hosts.yaml",
        "inventory/mycluster/group_vars/k8s_cluster/kubeha-apiserver.yml",
        ("kube_control_plane", "etcd"),
        ("kube_node",),
        hosts_under_all=True,
    ),
}


def _host_entry(layout: Layout, address: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {"ansible_host": address}
    if layout.hosts_under_all:
        entry.update(ip=address, access_ip=address)
    entry.update(extra)
    return entry


def write_example_inventory(
    dest: Path,
    layout_name: str,
    masters: Mapping[str, str],
    workers: Mapping[str, str],
    *,
    all_vars: Mapping[str, Any] | None = None,
    host_vars: Mapping[str, Mapping[str, Any]] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Path:
    """Write the example layout `layout_name` into `dest` with these hosts (name -> address); return its -i path."""
    layout = LAYOUTS[layout_name]
    if not masters:
        raise ValueError("an inventory needs at least one master")
    dest = Path(dest)
    shutil.copytree(EXAMPLES / layout_name, dest, dirs_exist_ok=True)
    hosts_path = dest / layout.hosts_file
    inventory = yaml.safe_load(hosts_path.read_text())
    top = inventory["all"]
    groups = top["children"]
    host_vars = host_vars or {}

    def entries(hosts: Mapping[str, str]) -> dict[str, Any]:
        return {name: _host_entry(layout, addr, host_vars.get(name, {})) for name, addr in hosts.items()}

    if layout.hosts_under_all:
        top["hosts"] = entries({**masters, **workers})
        for group in layout.master_groups:
            groups[group] = {"hosts": dict.fromkeys(masters)}
        for group in layout.worker_groups:
            groups[group] = {"hosts": dict.fromkeys(workers)} if workers else {}
    else:
        for group in layout.master_groups:
            groups[group] = {"hosts": entries(masters)}
        for group in layout.worker_groups:
            groups[group] = {"hosts": entries(workers)} if workers else {}
    if all_vars:
        top.setdefault("vars", {}).update(all_vars)
    header = f"# Written from examples/inventory/{layout_name}/{layout.hosts_file} with this run's hosts.\n"
    hosts_path.write_text(header + yaml.safe_dump(inventory, sort_keys=False, default_flow_style=False))
    if settings:
        settings_path = dest / layout.settings_file
        current = yaml.safe_load(settings_path.read_text()) or {}
        current.update(settings)
        settings_path.write_text(
            f"# examples/inventory/{layout_name}/{layout.settings_file}, with this run's settings.\n"
            + yaml.safe_dump(current, sort_keys=False, default_flow_style=False)
        )
    return hosts_path


def group_members(listing: Mapping[str, Any], group: str) -> set[str]:
    """The hosts of `group` in `ansible-inventory --list` output, through its children."""
    node = listing.get(group, {})
    found = set(node.get("hosts", []))
    for child in node.get("children", []):
        found |= group_members(listing, child)
    return found
