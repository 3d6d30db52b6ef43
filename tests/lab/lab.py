"""The kubeha lab: a real Kubernetes control plane and real nodes on one machine.

    lab.py up | down | status | ssh NODE [CMD...] | join | leave [MASTER]

`join` and `leave` are day 2 in the lab: one more master joins the running cluster (as `kubeadm join
--control-plane` makes it), or a master leaves it (as `kubeadm reset` there would); both rewrite the inventory.

Every node lives in a network namespace the lab creates, on one bridge inside the hub namespace
(`khalab`), which has no uplink: lab traffic cannot leave the lab. Control-plane nodes and the userspace
worker are systemd-nspawn containers; the IPVS worker is a qemu guest (software emulation) with a Debian
kernel. Everything the lab starts is recorded in a state file and stopped by PID, mount or namespace name.
"""

# The lab by concern, one file each; this file is the command line and re-exports their names, so that the suites,
# kubeadm_flavour.py and the bench keep using `lab.NAME`:
#   lab_core.py      paths, addresses, constants, flavour, versions, Node, sh/wait_for/spawn, the state file, the lock
#   lab_network.py   the hub namespace, its bridge, each node's tap or veth pair and addresses
#   lab_pki.py       CAs, certificates and kubeconfigs from kubeadm's phases
#   lab_units.py     the binary flavour's systemd units (their command lines in units/*.args)
#   lab_seed.py      what each node has at boot (units, node.env, the SSH key, the qemu seed disk)
#   lab_nodes.py     nspawn and qemu nodes started and stopped, SSH to them
#   lab_mirror.py    binaries, images and the wheelhouse built, the site mirror that serves them
#   lab_cluster.py   kubectl, /readyz, the API objects, etcd's members, the inventory
#   lab_control.py   the suites' flavour-neutral actions on the apiserver and kube-proxy
#   lab_commands.py  up, join, leave, down, status
# The imports below are this module's interface (__all__), used or not here.

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from lab_cluster import (
    ETCD_CLIENT,
    LAB_RBAC,
    bootstrap_api,
    etcd_members,
    kube_proxy_healthy,
    kubectl,
    kubernetes_endpoints,
    node_object,
    readyz,
    register,
    write_inventory,
)
from lab_commands import cmd_down, cmd_join, cmd_leave, cmd_status, cmd_up, teardown
from lab_control import (
    KUBEADM_MANIFEST,
    KUBEADM_PARKED,
    apiserver_command,
    apiserver_pid,
    apiserver_pid_command,
    kube_proxy_pid,
    kube_proxy_syncs,
    kubeconfig_server,
    node_metrics,
    node_ready,
    node_ready_since,
    pids_named,
    pristine_kubelet_conf,
    restart_kube_proxy,
    synced_both_families,
    wait_for_kube_proxy,
)
from lab_core import (
    BRIDGE,
    CACHE,
    CLUSTER_NAME,
    CRI_SOCKET,
    EMULATED_PROBE_TIMEOUT,
    FLAVOURS,
    GW4,
    GW6,
    HERE,
    HUB_NS,
    LOCK,
    MIRROR_PORT,
    NET4_PREFIX,
    NET6_PREFIX,
    NODE_BIN,
    NODE_IMAGES,
    NS_PREFIX,
    POD_CIDRS,
    PRISTINE_CLUSTER_INFO,
    PRISTINE_KUBE_PROXY,
    REPO,
    RUN,
    SERVICE_CIDRS,
    SHARED_PKI,
    SITE_MIRROR,
    STATE,
    WORK,
    Node,
    flavour,
    lab_lock,
    load_state,
    log,
    save_state,
    seed_dir,
    sh,
    spawn,
    state_flavour,
    topology,
    versions,
    wait_for,
)
from lab_mirror import NODE_PYTHONS, build, build_images, build_wheelhouse, mirror_path, start_mirror
from lab_network import any_lab_netns, attach, lab_netns_names, make_network
from lab_nodes import discard, is_zombie, ssh, ssh_argv, ssh_key, start_nspawn, start_qemu, stop_pid
from lab_pki import Kubeadm, bootstrap_tokens, kubeadm_config, make_pki, node_pki
from lab_seed import make_seed
from lab_units import command_line, master_units, unit, worker_units

__all__ = [
    "BRIDGE",
    "CACHE",
    "CLUSTER_NAME",
    "CRI_SOCKET",
    "EMULATED_PROBE_TIMEOUT",
    "ETCD_CLIENT",
    "FLAVOURS",
    "GW4",
    "GW6",
    "HERE",
    "HUB_NS",
    "KUBEADM_MANIFEST",
    "KUBEADM_PARKED",
    "LAB_RBAC",
    "LOCK",
    "MIRROR_PORT",
    "NET4_PREFIX",
    "NET6_PREFIX",
    "NODE_BIN",
    "NODE_IMAGES",
    "NODE_PYTHONS",
    "NS_PREFIX",
    "POD_CIDRS",
    "PRISTINE_CLUSTER_INFO",
    "PRISTINE_KUBE_PROXY",
    "REPO",
    "RUN",
    "SERVICE_CIDRS",
    "SHARED_PKI",
    "SITE_MIRROR",
    "STATE",
    "WORK",
    "Kubeadm",
    "Node",
    "any_lab_netns",
    "apiserver_command",
    "apiserver_pid",
    "apiserver_pid_command",
    "attach",
    "bootstrap_api",
    "bootstrap_tokens",
    "build",
    "build_images",
    "build_wheelhouse",
    "cmd_down",
    "cmd_join",
    "cmd_leave",
    "cmd_status",
    "cmd_up",
    "command_line",
    "discard",
    "etcd_members",
    "flavour",
    "is_zombie",
    "kube_proxy_healthy",
    "kube_proxy_pid",
    "kube_proxy_syncs",
    "kubeadm_config",
    "kubeconfig_server",
    "kubectl",
    "kubernetes_endpoints",
    "lab_lock",
    "lab_netns_names",
    "load_state",
    "log",
    "make_network",
    "make_pki",
    "make_seed",
    "master_units",
    "mirror_path",
    "node_metrics",
    "node_object",
    "node_pki",
    "node_ready",
    "node_ready_since",
    "pids_named",
    "pristine_kubelet_conf",
    "readyz",
    "register",
    "restart_kube_proxy",
    "save_state",
    "seed_dir",
    "sh",
    "spawn",
    "ssh",
    "ssh_argv",
    "ssh_key",
    "start_mirror",
    "start_nspawn",
    "start_qemu",
    "state_flavour",
    "stop_pid",
    "synced_both_families",
    "teardown",
    "topology",
    "unit",
    "versions",
    "wait_for",
    "wait_for_kube_proxy",
    "worker_units",
    "write_inventory",
]

# Run as a script, this module is also the `lab` that kubeadm_flavour imports (one state, one Node class).
if __name__ == "__main__":
    sys.modules.setdefault("lab", sys.modules[__name__])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "status", "ssh", "join", "leave"])
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("the lab needs root (network namespaces, mounts, nspawn)")
    if args.command == "up":
        cmd_up()
    elif args.command == "down":
        cmd_down()
    elif args.command == "status":
        return cmd_status()
    elif args.command == "join":
        cmd_join()
    elif args.command == "leave":
        cmd_leave(args.rest[0] if args.rest else None)
    elif args.command == "ssh":
        nodes = {n["name"]: Node(**n) for n in load_state().get("nodes", [])}
        return subprocess.call(ssh_argv(nodes[args.rest[0]], *args.rest[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
