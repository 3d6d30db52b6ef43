"""What the suites do to the control plane and kube-proxy, on either flavour: stop and start an apiserver, restart
kube-proxy and wait for its sync, read a process's metrics, a node's readiness, a kubeconfig's server and its pristine
kubelet.conf."""

from __future__ import annotations

import json
import re
import shlex
from datetime import datetime

import yaml
from lab_cluster import kubectl
from lab_core import WORK, Node, seed_dir, state_flavour, wait_for
from lab_nodes import ssh

# The control plane and kube-proxy as each flavour runs them: systemd units (binary), or kubelet's static pods
# and kubeadm's DaemonSet (kubeadm). The suites act on them through these, so they run on either flavour.
KUBEADM_MANIFEST = "/etc/kubernetes/manifests/kube-apiserver.yaml"
KUBEADM_PARKED = "/etc/kubernetes/kube-apiserver.yaml.stopped"  # outside the manifests directory kubelet reads


def pids_named(comm: str) -> str:
    """A shell command printing the PIDs of the node's processes named `comm` (the nodes have no crictl)."""
    return (f'for p in /proc/[0-9]*; do [ "$(cat "$p/comm" 2>/dev/null)" = {comm} ] && echo "${{p#/proc/}}"; '
            "done; true")  # fmt: skip


def apiserver_pid_command() -> str:
    """A shell command printing the master's kube-apiserver PID (empty while it is not running)."""
    if state_flavour() == "kubeadm":
        return pids_named("kube-apiserver")
    return "systemctl show -p MainPID --value kube-apiserver | grep -vx 0; true"


def apiserver_pid(master: Node) -> str:
    return ssh(master, apiserver_pid_command()).stdout.strip()


def apiserver_command(action: str) -> str:
    """A shell command that stops or starts the master's kube-apiserver, as its flavour runs it.

    Stop returns once the process is gone (as `systemctl stop` does); start once it is asked for, not ready.
    On kubeadm the manifest leaves kubelet's directory and comes back: kubelet stops the pod, then runs it anew.
    Crash kills the process at once (SIGKILL) and leaves it down until start: a master that died and stays dead.
    """
    if action not in ("stop", "start", "crash"):
        raise ValueError(f"apiserver action {action!r}: stop, start or crash")
    if state_flavour() != "kubeadm":
        if action == "crash":
            raise ValueError("apiserver action 'crash': written for the kubeadm flavour's static pods only")
        return f"systemctl {action} kube-apiserver"
    if action == "crash":  # the manifest out first, so kubelet does not start it again; then SIGKILL
        return f"mv {KUBEADM_MANIFEST} {KUBEADM_PARKED} && kill -9 $({pids_named('kube-apiserver')})"
    if action == "start":
        return f"if [ -e {KUBEADM_PARKED} ]; then mv {KUBEADM_PARKED} {KUBEADM_MANIFEST}; fi"
    # Bounded: 600 polls of 0.2 s, past the pod's grace period.
    return (f"if [ -e {KUBEADM_MANIFEST} ]; then mv {KUBEADM_MANIFEST} {KUBEADM_PARKED}; fi; n=0; "
            f'while [ -n "$({pids_named("kube-apiserver")})" ]; do sleep 0.2; n=$((n+1)); [ $n -lt 600 ] || exit 3; '
            "done")  # fmt: skip


def kube_proxy_pid(node: Node) -> str:
    if state_flavour() == "kubeadm":
        return ssh(node, pids_named("kube-proxy")).stdout.strip()
    return ssh(node, "systemctl show -p MainPID --value kube-proxy").stdout.strip()


def node_metrics(node: Node, port: int) -> str:
    """The Prometheus text a process serves on the node's loopback (nodes have no curl); "" while none answers."""
    url = f"http://127.0.0.1:{port}/metrics"
    fetch = f"import urllib.request as u; print(u.urlopen('{url}', timeout=3).read().decode())"
    return ssh(node, f"python3 -c {shlex.quote(fetch)}", check=False).stdout


def kube_proxy_syncs(node: Node) -> dict[str, float]:
    """kube-proxy's rule syncs since it started, by IP family: a dual-stack kube-proxy runs one proxier a family,
    each syncing on its own (the IPv4 one may be done while the IPv6 one has not started)."""
    found = re.finditer(
        r'^kubeproxy_sync_proxy_rules_duration_seconds_count\{ip_family="(IPv[46])"\} (\S+)$',
        node_metrics(node, 10249),
        re.M,
    )
    return {m.group(1): float(m.group(2)) for m in found}


def restart_kube_proxy(node: Node) -> None:
    """Restart the node's kube-proxy (it rereads the ConfigMap): its unit, or its DaemonSet pod deleted.

    Returns once a new process has synced its rules (`wait_for_kube_proxy`).
    """
    before = kube_proxy_pid(node)
    if state_flavour() == "kubeadm":
        kubectl("-n", "kube-system", "delete", "pod", "-l", "k8s-app=kube-proxy",
                f"--field-selector=spec.nodeName={node.name}", "--grace-period=1", "--wait=false")  # fmt: skip
    else:
        ssh(node, "systemctl restart kube-proxy")
    wait_for_kube_proxy(node, before)


def wait_for_kube_proxy(node: Node, old_pid: str, timeout: float = 180) -> None:
    """A kube-proxy other than `old_pid` on the node, done with its first sync of the rules (the sync that
    deletes, in IPVS mode, the services it does not own: the exclude suite's negative control shows it)."""
    wait_for(
        f"a new kube-proxy on {node.name}, its rules synced",
        lambda: kube_proxy_pid(node) not in ("", "0", old_pid) and synced_both_families(node),
        timeout,
    )


def synced_both_families(node: Node, times: int = 1) -> bool:
    """The lab is dual-stack: both of kube-proxy's proxiers have synced at least `times` times."""
    syncs = kube_proxy_syncs(node)
    return all(syncs.get(family, 0) >= times for family in ("IPv4", "IPv6"))


def node_ready(name: str, via: Node | None = None) -> bool:
    """The Node's Ready condition is True now (asked of `via`'s apiserver, or the admin kubeconfig's)."""
    node = json.loads(kubectl("get", "node", name, "-o", "json", via=via).stdout)
    return any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", []))


def kubeconfig_server(node: Node, path: str) -> str | None:
    """The server a kubeconfig on the node names; None when the file is not there."""
    res = ssh(node, f"cat {path}", check=False)
    if res.returncode != 0:
        return None
    return yaml.safe_load(res.stdout)["clusters"][0]["cluster"]["server"]


def node_ready_since(name: str, since: float, via: Node | None = None) -> bool:
    """The Node is Ready by a kubelet status posted at `since` (a wall-clock time) or later: a fresh report,
    not the one the cluster still holds from before (it would stay Ready for the 40 s grace either way)."""
    node = json.loads(kubectl("get", "node", name, "-o", "json", via=via).stdout)
    for condition in node["status"].get("conditions", []):
        if condition["type"] == "Ready":
            posted = datetime.fromisoformat(condition["lastHeartbeatTime"].replace("Z", "+00:00")).timestamp()
            return condition["status"] == "True" and posted >= since
    return False


def pristine_kubelet_conf(node: Node) -> str:
    """kubelet.conf as the node had it before the collection ran: the seed's, or kubeadm's (saved at lab up)."""
    if state_flavour() == "kubeadm":
        return (WORK / "pristine" / f"{node.name}.kubelet.conf").read_text()
    return (seed_dir(node) / "rootfs/etc/kubernetes/kubelet.conf").read_text()
