"""Node Ready as the judge: a master's apiserver dies and stays down; the cluster says which nodes noticed.

On the kubeadm flavour, after test_kubeadm_join_through_vip.py (which leaves w2 joined through its own VIP: its
kubelet and, from here on, its kube-proxy reach the apiservers through w2's local proxy, haproxy mode). w1 is left
as `kubeadm join` leaves every node without a load balancer: kubelet and kube-proxy at cp1:6443, the cluster's
controlPlaneEndpoint. That is the negative control, side by side in the same run.

The drill: cp1's apiserver is killed (SIGKILL, its static pod's manifest moved out so kubelet does not start it
again) and stays down until the direct node has been reported NotReady (bounded). A Service (its EndpointSlice at
cp2's apiserver) is created 1 s after the kill. The observer (tests/lab/node_observer.py, from the hub namespace)
records every node's Lease renewals and Ready status through every apiserver that answers; each node checks, every
0.2 s, whether the Service's ClusterIP connects (kube-proxy has programmed it).

Targets for the node behind the collection: never NotReady, no NodeNotReady event, no gap between two lease
renewals longer than 12 s (10 s renew interval plus a retry), the Service programmed within 5 s of its creation.
The direct node must miss all of them (else the drill tests nothing).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import lab as labmod
import node_observer
import pytest
from conftest import run_module

VIP_SERVER = "https://169.254.100.1:6444"
ADMIN = "/etc/kubernetes/admin.conf"
LEASE_GAP_S, PROGRAMMED_S = 12.0, 5.0
SERVICE, CLUSTER_IP, SERVICE_PORT = "kubeha-judge", "10.96.200.10", 443
HOLD_S = 150  # the longest the master stays down waiting for the direct node's NotReady
WATCH_S = 240  # each node's check of the ClusterIP stops by itself after this long
FIGURES = labmod.REPO / ".build" / "node-ready" / "kill-held.json"  # the last run's timeline, for the README


def service_manifest(backend: labmod.Node) -> str:
    """A ClusterIP Service without selector, its EndpointSlice at a live apiserver: once a node's kube-proxy has
    programmed it, a TCP connect to the ClusterIP succeeds there."""
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": SERVICE, "namespace": "default"},
         "spec": {"clusterIP": CLUSTER_IP, "ports": [{"name": "https", "port": SERVICE_PORT, "targetPort": 6443}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": f"{SERVICE}-1", "namespace": "default",
                      "labels": {"kubernetes.io/service-name": SERVICE}},
         "addressType": "IPv4", "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
         "endpoints": [{"addresses": [backend.addr4], "conditions": {"ready": True}}]},
    ]})  # fmt: skip


def watch_service(node: labmod.Node) -> subprocess.Popen:
    """On the node, bounded: print the wall time of the first successful connect to the ClusterIP."""
    probe = f"timeout 0.5 bash -c ': </dev/tcp/{CLUSTER_IP}/{SERVICE_PORT}' 2>/dev/null"
    loop = (f"end=$(( $(date +%s) + {WATCH_S} )); while [ $(date +%s) -lt $end ]; do "
            f"if {probe}; then date +%s.%N; exit 0; fi; sleep 0.2; done; exit 1")  # fmt: skip
    return subprocess.Popen(labmod.ssh_argv(node, f"bash -c {shlex.quote(loop)}"), stdout=subprocess.PIPE, text=True)


def programmed_at(watcher: subprocess.Popen, wait: bool = True) -> float | None:
    """When the node's check first connected; None if it had not (`wait` False: a check still running is
    stopped, its node had not programmed the Service by then)."""
    if not wait and watcher.poll() is None:
        watcher.kill()
    out = watcher.communicate(timeout=WATCH_S + 60)[0]
    return float(out.strip()) if watcher.returncode == 0 and out.strip() else None


@pytest.fixture(scope="module")
def sides(lab, nodes, masters, control_node):
    """w2 behind the collection (kubelet and kube-proxy at its VIP), w1 direct at cp1; the kube-proxy ConfigMap
    is put back afterwards (w1's kube-proxy never read the changed one: kube-proxy reads it when it starts)."""
    assert lab.get("flavour") == "kubeadm", "this suite runs on the kubeadm flavour (KUBEHA_LAB_FLAVOUR=kubeadm)"
    direct = next((n for n in nodes.values() if n.role == "worker" and n.kind == "qemu"), None)
    ours = next((n for n in nodes.values() if n.role == "worker" and n.kind == "nspawn"), None)
    assert direct and ours, "the drill needs the qemu worker and an nspawn worker"
    first = f"https://{masters[0].addr4}:6443"
    assert labmod.kubeconfig_server(ours, "/etc/kubernetes/kubelet.conf") == VIP_SERVER, (
        f"{ours.name} must have joined through its VIP first (test_kubeadm_join_through_vip.py runs before this)"
    )
    assert labmod.kubeconfig_server(direct, "/etc/kubernetes/kubelet.conf") == first
    # kube-proxy at the VIP for w2 alone: the ConfigMap changed, only w2's pod restarted.
    args = {"targets": ["kube_proxy"], "kubeconfig": ADMIN, "server": VIP_SERVER}
    result = run_module(control_node, "kubeha.apiserver.cluster_endpoint", args)
    assert not result.get("failed"), result
    labmod.restart_kube_proxy(ours)
    yield {"ours": ours, "direct": direct}
    result = run_module(control_node, "kubeha.apiserver.cluster_endpoint", args | {"state": "absent"})
    assert not result.get("failed"), result


def test_the_observer_sees_every_node(sides, nodes, tmp_path):
    """The recorder itself, for a few seconds on the healthy cluster: every node's lease and Ready status."""
    out = tmp_path / "observer.jsonl"
    labmod.sh(sys.executable, node_observer.__file__, "--kubeconfig", str(labmod.WORK / "admin.conf"),
              "--server", f"https://{next(iter(nodes.values())).addr4}:6443", "--seconds", "3", "--out", str(out),
              ns=labmod.HUB_NS)  # fmt: skip
    lines = node_observer.load(Path(out))
    assert lines and set(nodes) <= set(lines[-1]["leases"]) and set(nodes) <= set(lines[-1]["ready"])


def test_a_dead_master_leaves_the_node_behind_the_collection_ready(sides, masters, nodes, tmp_path, record_property):
    ours, direct = sides["ours"], sides["direct"]
    victim, witness = masters[0], masters[1]
    labmod.kubectl("delete", "service", SERVICE, "--ignore-not-found", "--wait=true")
    record = tmp_path / "observer.jsonl"
    observer = subprocess.Popen(
        ["ip", "netns", "exec", labmod.HUB_NS, sys.executable, node_observer.__file__,
         "--kubeconfig", str(labmod.WORK / "admin.conf"), "--seconds", str(HOLD_S + 240), "--out", str(record),
         *(arg for m in masters for arg in ("--server", f"https://{m.addr4}:6443"))],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    watchers = {n.name: watch_service(n) for n in (ours, direct)}
    try:
        time.sleep(12)  # a renewal of every lease recorded before the event
        # The kill, held: the manifest out of kubelet's directory first, so kubelet does not start it again.
        killed = time.time()
        labmod.ssh(victim, labmod.apiserver_command("crash"))
        time.sleep(max(0.0, killed + 1 - time.time()))
        created = time.time()
        labmod.kubectl("apply", "-f", "-", input=service_manifest(witness), via=witness)
        # Held down until the cluster says the direct node is NotReady (the drill's proof that it bites).
        labmod.wait_for(f"{direct.name} NotReady", lambda: not labmod.node_ready(direct.name, witness), HOLD_S, 2)
        direct_not_ready = time.time()
    finally:
        labmod.ssh(victim, labmod.apiserver_command("start"))
        labmod.wait_for(f"{victim.name}'s apiserver ready", lambda: labmod.readyz(victim.addr4), 180)
    # Judged until cp1 is back: the observer may see the NotReady a poll after the wait above did, and the direct
    # node stays NotReady until then anyway.
    back = time.time()
    # The direct node's kube-proxy programs the Service only once cp1 is back: that it had not by then is enough.
    at = {ours.name: programmed_at(watchers[ours.name]), direct.name: programmed_at(watchers[direct.name], False)}
    labmod.wait_for(f"{direct.name} Ready again", lambda: labmod.node_ready(direct.name, witness), 180, 2)
    observer.terminate()
    observer.wait(timeout=30)
    report = node_observer.analyze(node_observer.load(record), killed, back)
    after = {name: None if t is None else round(t - created, 2) for name, t in at.items()}
    figures = {"down_s": round(back - killed, 1), "direct_not_ready_after_s": round(direct_not_ready - killed, 1),
               "service_programmed_after_s": after, "nodes": report,
               "behind_the_collection": ours.name, "direct": direct.name}  # fmt: skip
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    FIGURES.write_text(json.dumps(figures, indent=1) + "\n")
    record_property("figures", figures)

    mine = report[ours.name]
    assert not mine["not_ready_seen"] and mine["not_ready_events"] == 0, mine
    assert mine["longest_gap_s"] <= LEASE_GAP_S, mine
    assert after[ours.name] is not None and after[ours.name] <= PROGRAMMED_S, after
    # Negative control: the node at the dead master lost all three.
    theirs = report[direct.name]
    assert theirs["not_ready_seen"], theirs
    assert theirs["longest_gap_s"] > LEASE_GAP_S, theirs
    assert after[direct.name] is None or after[direct.name] > PROGRAMMED_S, after
    labmod.kubectl("delete", "service", SERVICE, "--ignore-not-found")
