"""The lab's verbs: `up` (build, network, PKI, seeds, boot, bootstrap), `join` and `leave` (day 2), `down` and
`status`. lab.py parses the command line and calls these."""

from __future__ import annotations

import json
import secrets
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from lab_cluster import (
    bootstrap_api,
    etcd_members,
    kube_proxy_healthy,
    kubectl,
    kubernetes_endpoints,
    readyz,
    register,
    write_inventory,
)
from lab_core import (
    HUB_NS,
    PRISTINE_CLUSTER_INFO,
    PRISTINE_KUBE_PROXY,
    RUN,
    STATE,
    WORK,
    Node,
    flavour,
    lab_lock,
    load_state,
    log,
    save_state,
    sh,
    state_flavour,
    topology,
    versions,
    wait_for,
)
from lab_mirror import build, start_mirror
from lab_network import any_lab_netns, attach, lab_netns_names, make_network
from lab_nodes import discard, is_zombie, ssh, start_nspawn, start_qemu, stop_pid
from lab_pki import Kubeadm, make_pki, node_pki
from lab_seed import make_seed


def cmd_up() -> None:
    t0 = time.monotonic()
    lab_flavour = flavour()
    with lab_lock():
        if STATE.exists() or any_lab_netns():
            log("a previous lab is here: cleaning it up first")
            teardown()
        nodes = topology()
        bindir, images, wheels = build(nodes)
        log(f"{lab_flavour} flavour: binaries {bindir.name}, images {', '.join(p.name for p in images.values())}")
        default_images = images[versions()["DEBIAN_SUITE"]]
        state = {
            "flavour": lab_flavour,
            "bindir": str(bindir),
            "images": str(default_images),
            "images_by_suite": {suite: str(path) for suite, path in images.items()},
            "nodes": [asdict(n) for n in nodes],
            "pids": {},
            "mounts": [],
            "netns": [HUB_NS] + [n.netns for n in nodes if n.kind != "qemu"],
        }
        if lab_flavour == "kubeadm":
            import container_images
            import kubeadm_flavour

            built = container_images.build(bindir, versions())
            state["container_images"] = str(built)
            state["pause_image"] = json.loads((built / "images.json").read_text())["pause"]
            log(f"container images {built.name} (imported on every node, nothing pulled)")
            kubeadm_flavour.set_host_sysctls(state)
        save_state(state)
        WORK.mkdir(parents=True, exist_ok=True)
        make_network(nodes)
        start_mirror(images, wheels, state)
        token = f"{secrets.token_hex(3)}.{secrets.token_hex(8)}"
        log("PKI and kubeconfigs (kubeadm init phase certs / kubeconfig)")
        make_pki(nodes, bindir, token)
        if lab_flavour == "kubeadm":
            kubeadm_flavour.write_kubeadm_configs(nodes, token)
            # The token's ID, not its secret: what a joining node's CSR names.
            state["bootstrap_token_id"] = token.split(".", maxsplit=1)[0]
            save_state(state)
        for node in nodes:
            make_seed(node, nodes, bindir)
        log("booting " + ", ".join(f"{n.name} ({n.kind})" for n in nodes))
        for node in nodes:
            if node.kind == "qemu":
                start_qemu(node, default_images, state)
            else:
                start_nspawn(node, images[node.suite], bindir, state)
        masters = [n for n in nodes if n.role == "control-plane"]
        with ThreadPoolExecutor(len(nodes)) as pool:
            list(pool.map(lambda n: wait_for(f"SSH on {n.name}", lambda: ssh(n, "true", timeout=15), 240), nodes))
        log(f"SSH answers on every node ({time.monotonic() - t0:.0f} s)")
        if lab_flavour == "kubeadm":
            with ThreadPoolExecutor(len(nodes)) as pool:
                list(pool.map(kubeadm_flavour.import_images, nodes))
            log(f"images imported on every node ({time.monotonic() - t0:.0f} s)")
            kubeadm_flavour.bring_up(nodes, token)
            PRISTINE_KUBE_PROXY.write_text(kubectl("get", "-n", "kube-system", "cm", "kube-proxy", "-o", "json").stdout)
            PRISTINE_CLUSTER_INFO.write_text(
                kubectl("get", "-n", "kube-public", "cm", "cluster-info", "-o", "json").stdout
            )
            (WORK / "pristine").mkdir(exist_ok=True)
            for node in nodes:  # what kubeadm init and join left: reset.yml must give it back byte for byte
                (WORK / "pristine" / f"{node.name}.kubelet.conf").write_text(
                    ssh(node, "cat /etc/kubernetes/kubelet.conf").stdout
                )
            inventory = write_inventory(nodes)
            state["ready_after_s"] = round(time.monotonic() - t0, 1)
            save_state(state)
            log(f"kubeadm lab is up in {time.monotonic() - t0:.0f} s, every node Ready; inventory: {inventory}")
            return
        for m in masters:
            wait_for(f"kube-apiserver on {m.name}", lambda m=m: readyz(m.addr4), 240)
        log(f"every apiserver is ready ({time.monotonic() - t0:.0f} s)")
        log("API objects (kubeadm init phase upload-config / bootstrap-token / addon kube-proxy)")
        bootstrap_api(nodes, bindir)
        workers = [n for n in nodes if n.role == "worker"]
        for w in workers:
            wait_for(f"kube-proxy on {w.name}", lambda w=w: kube_proxy_healthy(w), 180)
        inventory = write_inventory(nodes)
        state["ready_after_s"] = round(time.monotonic() - t0, 1)
        save_state(state)
    log(f"lab is up in {time.monotonic() - t0:.0f} s; inventory: {inventory}")


def cmd_join() -> None:
    """Day 2: one more master joins the running cluster, as `kubeadm join --control-plane` would make it.

    Its certificates are signed by the cluster's CAs with the certSANs of the cluster's kubeadm-config (as kubeadm
    reads them), its etcd joins as a new member, its apiserver starts; it is added to the lab's inventory last.
    """
    import yaml  # the project's virtualenv has it (ansible-core); only this command needs it

    with lab_lock():
        state = load_state()
        nodes = [Node(**raw) for raw in state["nodes"]]
        masters = [n for n in nodes if n.role == "control-plane"]
        index = max(n.index for n in masters) + 1
        new = Node(f"cp{index - 10}", "nspawn", "control-plane", index)
        log(f"{new.name} joins as a master")
        if state_flavour() == "kubeadm":
            import kubeadm_flavour

            try:
                kubeadm_flavour.join_master(new, nodes, state)
            except BaseException:
                log(f"{new.name} did not join: stopping it, the lab is as before")
                discard(new, state)
                write_inventory(nodes)
                raise
            state["nodes"].append(asdict(new))
            state.setdefault("joined", []).append(new.name)
            save_state(state)
            write_inventory([*nodes, new])
            log(f"{new.name} is a master (kubeadm join --control-plane), Ready; the inventory lists it")
            return
        config = kubectl("get", "-n", "kube-system", "cm", "kubeadm-config", "-o", "json").stdout
        cluster = yaml.safe_load(json.loads(config)["data"]["ClusterConfiguration"])
        cert_sans = (cluster.get("apiServer") or {}).get("certSANs") or []
        bindir, images = Path(state["bindir"]), Path(state["images"])
        token = f"{secrets.token_hex(3)}.{secrets.token_hex(8)}"  # kubeadm's config wants one; nothing uses it
        node_pki(new, Kubeadm(bindir, [*masters, new], token), cert_sans)
        make_seed(new, [*nodes, new], bindir, joining=True)
        etcd_members(masters[0], "add", {"peerURLs": [f"https://{new.addr4}:2380"]})
        attach(new)
        state["netns"].append(new.netns)
        start_nspawn(new, images, bindir, state)
        wait_for(f"SSH on {new.name}", lambda: ssh(new, "true", timeout=15), 240)
        wait_for(f"kube-apiserver on {new.name}", lambda: readyz(new.addr4), 240)
        register(new)
        state["nodes"].append(asdict(new))
        state.setdefault("joined", []).append(new.name)
        save_state(state)
        write_inventory([*nodes, new])
    log(f"{new.name} is a master: its apiserver is ready and the inventory lists it")


def cmd_leave(name: str | None) -> None:
    """Day 2: a master leaves, as `kubeadm reset` there then `kubectl delete node` would: its apiserver stops, its
    etcd member is removed, the node is powered off and taken out of the inventory. The newest master by default.
    On the kubeadm flavour it is `kubeadm reset` itself there (kubelet, the static pods and the etcd member go)."""
    with lab_lock():
        state = load_state()
        nodes = [Node(**raw) for raw in state["nodes"]]
        masters = [n for n in nodes if n.role == "control-plane"]
        leaving = next((m for m in masters if m.name == name), None) if name else masters[-1]
        if leaving is None or leaving == masters[0] or len(masters) < 2:
            sys.exit(f"cannot take {name!r} out: the lab's masters are {[m.name for m in masters]} (never the first)")
        log(f"{leaving.name} leaves")
        if state_flavour() == "kubeadm":
            import kubeadm_flavour

            kubeadm_flavour.reset_master(leaving, masters[0])
        else:
            ssh(leaving, "systemctl stop kube-scheduler kube-controller-manager kube-apiserver", timeout=180)
            wait_for(f"{leaving.addr4} out of the kubernetes EndpointSlices",
                     lambda: leaving.addr4 not in kubernetes_endpoints(), 120)  # fmt: skip
            members = etcd_members(masters[0], "list", {})["members"]
            etcd_members(masters[0], "remove", {"ID": next(m["ID"] for m in members if m.get("name") == leaving.name)})
        discard(leaving, state)
        kubectl("delete", "node", leaving.name, check=False)
        state["nodes"] = [asdict(n) for n in nodes if n != leaving]
        state.setdefault("left", []).append(leaving.name)
        save_state(state)
        write_inventory([n for n in nodes if n != leaving])
    log(f"{leaving.name} is gone: etcd member removed, node powered off, out of the inventory")


def teardown() -> None:
    state = load_state()
    pids = state.get("pids", {})
    # Nodes first (nspawn powers the container off on SIGTERM; qemu quits), the mirror last.
    with ThreadPoolExecutor(max(1, len(pids))) as pool:
        list(pool.map(lambda pid: stop_pid(pid, 15), [p for n, p in pids.items() if n != "mirror"]))
    if "mirror" in pids:
        stop_pid(pids["mirror"], 5)
    # Anything still running inside a namespace the lab created was started by the lab.
    for ns in lab_netns_names():
        for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
            stop_pid(int(pid), 5)
    mounts = set(state.get("mounts", []))
    if WORK.exists():
        for line in Path("/proc/self/mounts").read_text().splitlines():
            target = line.split()[1]
            if target.startswith(str(WORK) + "/"):
                mounts.add(target)
    for target in sorted(mounts, key=len, reverse=True):
        sh("umount", target, check=False)
    for ns in lab_netns_names():
        sh("ip", "netns", "delete", ns, check=False)
    if state.get("flavour") == "kubeadm":
        import kubeadm_flavour

        kubeadm_flavour.remove_cgroups()
        kubeadm_flavour.restore_host_sysctls(state)
    shutil.rmtree(WORK, ignore_errors=True)
    shutil.rmtree(RUN, ignore_errors=True)


def cmd_down() -> None:
    with lab_lock():
        teardown()
    log("lab is down")


def cmd_status() -> int:
    state = load_state()
    if not state:
        print("lab: down")
        return 1
    ok = True
    print(f"lab: up (ready after {state.get('ready_after_s', '?')} s), binaries {Path(state['bindir']).name}")
    for raw in state["nodes"]:
        node = Node(**raw)
        pid = state["pids"].get(node.name)
        alive = pid is not None and Path(f"/proc/{pid}").exists() and not is_zombie(pid)
        reach = ssh(node, "systemctl is-system-running", check=False, timeout=20) if alive else None
        sysstate = reach.stdout.strip() if reach is not None else "-"
        extra = ""
        if node.role == "control-plane" and alive:
            extra = " apiserver /readyz: " + ("ok" if readyz(node.addr4) else "FAILED")
        elif alive and state.get("flavour") != "kubeadm":
            proxy = ssh(node, "systemctl is-active kube-proxy", check=False, timeout=20).stdout.strip()
            extra = f" kube-proxy: {proxy}"
        if alive and state.get("flavour") == "kubeadm":
            extra += " kubelet: " + ssh(node, "systemctl is-active kubelet", check=False, timeout=20).stdout.strip()
        ok &= alive and sysstate in ("running", "degraded")
        print(f"  {node.name:4} {node.kind:6} {node.role:13} {node.addr4:12} pid {pid} systemd: {sysstate}{extra}")
    print(f"  inventory: {WORK / 'inventory.yml'}")
    return 0 if ok else 1
