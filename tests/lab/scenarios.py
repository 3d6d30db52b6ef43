"""What the lab does with the collection: run its playbooks, and fail a master while a node sends traffic.

Used by the integration tests and by `make demo` (python3 tests/lab/scenarios.py demo).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lab as labmod

REPO = labmod.REPO
LOAD_SCRIPT = REPO / "tests" / "integration" / "files" / "vip_load.py"
VIP4, PORT = "169.254.100.1", 6444


def collections_path() -> Path:
    """This checkout, seen by Ansible as kubeha.apiserver (a symlink, so runs always use the current code)."""
    root = REPO / ".build" / "test-collections"
    link = root / "ansible_collections" / "kubeha" / "apiserver"
    if not link.is_symlink():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(REPO)
    return root


def ansible_env() -> dict[str, str]:
    # Pipelining: one SSH command per task instead of three or four (the qemu node pays each one under emulation).
    return os.environ | {
        "ANSIBLE_COLLECTIONS_PATH": str(collections_path()),
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_PIPELINING": "True",
    }


def run_playbook(path: Path, *extra: str, variables: dict | None = None, inventory: dict | None = None,
                 inventory_file: Path | None = None, capture: bool = True,
                 timeout: float = 1800) -> subprocess.CompletedProcess:  # fmt: skip
    """A playbook file against the lab's inventory, or against `inventory` (a variant of it), or against the
    inventory file `inventory_file` (e.g. an example layout written by `example_inventory`) when given."""
    with tempfile.TemporaryDirectory() as tmp:
        hosts = inventory_file or labmod.WORK / "inventory.yml"
        if inventory is not None:
            hosts = Path(tmp) / "inventory.yml"
            hosts.write_text(json.dumps(inventory))  # JSON is YAML: ansible's yaml inventory plugin reads it
        argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(hosts), str(path), *extra]
        if variables:
            argv += ["-e", json.dumps(variables)]
        env = ansible_env()
        # A connection that failed (ssh's exit status 255: a busy node's sshd) is tried again, up to 3 times, as
        # tests/lab/lab_nodes.py ssh() does; unless the caller's environment says otherwise.
        env.setdefault("ANSIBLE_SSH_RETRIES", "3")
        return subprocess.run(argv, capture_output=capture, text=True, timeout=timeout, env=env, check=False)


def playbook(name: str, *extra: str, capture: bool = True, inventory: dict | None = None,
             inventory_file: Path | None = None):  # fmt: skip
    """playbooks/NAME.yml against the lab's inventory (or a variant of it, or another inventory file)."""
    return run_playbook(
        REPO / "playbooks" / f"{name}.yml", *extra, capture=capture, inventory=inventory, inventory_file=inventory_file
    )


def example_inventory(dest: Path, layout: str) -> Path:
    """The lab's hosts written into one of the README's example inventories (examples/inventory/LAYOUT), with
    the lab's connection settings and its site mirror as the wheelhouse: what a user of that layout would run."""
    import yaml  # the project's virtualenv has it (ansible-core)
    from example_inventory import write_example_inventory  # tests/, on sys.path by tests/conftest.py

    lab_inventory = yaml.safe_load((labmod.WORK / "inventory.yml").read_text())["all"]
    groups = lab_inventory["children"]
    hosts = {g: groups[g].get("hosts") or {} for g in ("kube_control_plane", "kube_node")}
    lab_vars = {name: v for h in hosts.values() for name, v in h.items()}
    return write_example_inventory(
        dest,
        layout,
        masters={name: v["ansible_host"] for name, v in hosts["kube_control_plane"].items()},
        workers={name: v["ansible_host"] for name, v in hosts["kube_node"].items()},
        all_vars=lab_inventory["vars"],
        host_vars={name: {k: x for k, x in v.items() if k != "ansible_host"} for name, v in lab_vars.items()},
        settings={
            "local_proxy_pip_index_url": "",
            "local_proxy_pip_find_links": [f"{labmod.SITE_MIRROR}/wheels/"],
            "local_proxy_pip_trusted_hosts": [labmod.GW4],
            "local_proxy_pip_no_index": True,
        },
    )


def molecule(*args: str) -> subprocess.CompletedProcess:
    """`molecule ARGS` in the project directory, with the lab's inventory (molecule/*/molecule.yml), output shown."""
    argv = [str(Path(sys.executable).parent / "molecule"), *args]
    return subprocess.run(argv, cwd=REPO, text=True, timeout=3600, env=ansible_env(), check=False)


def kill_apiserver(victim: labmod.Node) -> tuple[float, float]:
    """SIGKILL the apiserver process (systemd, or kubelet for a static pod, restarts it, as for a crashed master).

    Returns when it died, by the victim's clock (the lab's masters are containers on the host's kernel, so the
    host's `time.time()`): the instant just before the signal, and the first instant its port had no listener.
    In between (about 80 ms on the lab) the kernel still completes handshakes for the dying process (exit frees
    its memory before it closes its sockets): a connection made then reaches a process that will never answer,
    as a request in flight does. (Timing the SSH call instead would put the kill a few hundred milliseconds
    after the instant taken, and a request sent in between would pass for a later one.)
    """
    script = (
        f'pid=$({labmod.apiserver_pid_command()}); date +%s.%N; kill -KILL "$pid"; n=0; '
        # Bounded: 2000 polls of about 10 ms, far past the dying window and systemd's RestartSec.
        'while ss -Hltn "sport = :6443" | grep -q .; do n=$((n+1)); [ $n -lt 2000 ] || exit 3; done; date +%s.%N'
    )
    signalled, gone = labmod.ssh(victim, script).stdout.split()
    return float(signalled), float(gone)


def clock_offset(node: labmod.Node) -> float:
    """The node's clock minus the host's: 0 for a container (it reads the host's kernel clock); for the qemu
    guest, measured over SSH and taken at its lowest bound (the reply's way back counts against it), which
    puts an event early on the node's clock: a request sent just before it may count as sent after it."""
    if node.kind == "nspawn":
        return 0.0
    return float(labmod.ssh(node, "date +%s.%N").stdout) - time.time()


def strike(event: Callable[[], object], offset: float) -> tuple[float, float]:
    """Run `event`; when it struck, as (start, end) on the node's clock (`offset` from `clock_offset`): the
    pair `event` returns (host clock, as `kill_apiserver` does), or the one instant it returns, else the moment
    it was started."""
    started = time.time()
    instant = event()
    if isinstance(instant, tuple):
        return instant[0] + offset, instant[1] + offset
    at = (instant if isinstance(instant, float) else started) + offset
    return at, at


def drill(node: labmod.Node, event: Callable[[], object], seconds: float = 12, interval: float = 0.1) -> dict:
    """Run `event` 3 s into a steady load from `node` through its VIP: a new TLS connection every `interval`.

    Bounded: the load stops by itself after `seconds`. Times are seconds after the event (`strike`), on the
    node's clock.
    """
    script = LOAD_SCRIPT.read_text()
    offset = clock_offset(node)
    cmd = f"python3 -c {shlex.quote(script)} {VIP4} {PORT} /etc/kubernetes/pki/ca.crt {seconds} {interval}"
    load = subprocess.Popen(labmod.ssh_argv(node, cmd), stdout=subprocess.PIPE, text=True)
    time.sleep(3)
    event_at, event_end = strike(event, offset)
    run = json.loads(load.communicate(timeout=seconds + 60)[0])
    return summarize(run["results"], event_at, event_end)


def under_load(nodes: list[labmod.Node], action: Callable[[], subprocess.CompletedProcess]):
    """Run `action` (a playbook) while each node sends a new TLS request through its VIP every 100 ms.

    The load runs in bounded 10 s slices, one after the other, until the playbook is done. Returns the
    playbook's result and, per node, the requests sent, the failed ones and up to three of their errors.
    """
    box: dict = {}
    worker = threading.Thread(target=lambda: box.setdefault("run", action()))
    worker.start()
    script = shlex.quote(LOAD_SCRIPT.read_text())
    command = f"python3 -c {script} {VIP4} {PORT} /etc/kubernetes/pki/ca.crt 10 0.1"
    totals = {n.name: {"requests": 0, "failed": 0, "errors": set()} for n in nodes}
    with ThreadPoolExecutor(len(nodes)) as pool:
        while worker.is_alive():
            for node, res in zip(nodes, pool.map(lambda n: labmod.ssh(n, command), nodes), strict=True):
                for _t, ok, error, _took in json.loads(res.stdout)["results"]:
                    totals[node.name]["requests"] += 1
                    if not ok:
                        totals[node.name]["failed"] += 1
                        totals[node.name]["errors"].add(error)
    worker.join()
    for counts in totals.values():
        counts["errors"] = sorted(counts["errors"])[:3]
    return box["run"], totals


def summarize(results: list, event_at: float, event_end: float | None = None, settle_s: float = 2.0) -> dict:
    """Failed requests, and the slowest request started `settle_s` or more after the event.

    A request that overlapped the event (from `event_at` to `event_end`: a killed process's dying window) counts
    apart, as `failed_in_flight`: a request whose bytes already went to a killed apiserver, or whose connection
    the dying process's socket took, fails through any proxy; only new ones can be sent elsewhere. Every other
    failure, even one before the event, is `failed`. Times are seconds after `event_at`.
    """
    end = event_at if event_end is None else event_end

    def in_flight(t: float, took: float) -> bool:
        return t < end and event_at <= t + took

    failures = [round(t - event_at, 3) for t, ok, _e, took in results if not ok and not in_flight(t, took)]
    settled = [took for t, ok, _error, took in results if t - event_at >= settle_s]
    return {
        "requests": len(results),
        "event_lasted_s": round(end - event_at, 3),
        "failed": len(failures),
        "failed_in_flight": sum(1 for t, ok, _e, took in results if not ok and in_flight(t, took)),
        "first_failure_s": min(failures, default=None),
        "last_failure_s": max(failures, default=None),
        "slowest_after_settle_s": max(settled, default=None),
        "errors": sorted({e for _t, ok, e, _took in results if not ok})[:3],
    }


def demo() -> int:
    """`make demo`: site.yml on the running lab, then a master killed while two nodes keep answering."""
    state = labmod.load_state()
    nodes = {raw["name"]: labmod.Node(**raw) for raw in state["nodes"]}
    print("== playbooks/site.yml on the lab", flush=True)
    result = playbook("site", capture=False)
    if result.returncode != 0:
        return result.returncode
    masters = [n for n in nodes.values() if n.role == "control-plane"]
    victim = masters[1] if len(masters) > 1 else masters[0]
    for node in [n for n in nodes.values() if n.role == "worker"]:
        mode = "IPVS" if node.has_ipvs else "haproxy"
        print(f"\n== failover: {node.name} ({mode}) requests https://{VIP4}:{PORT}/readyz every 100 ms;"
              f" {victim.name}'s kube-apiserver gets SIGKILL after 3 s", flush=True)  # fmt: skip
        outcome = drill(node, lambda: kill_apiserver(victim))
        gap = "no failed request" if not outcome["failed"] else (
            f"{outcome['failed']} failed, from {outcome['first_failure_s']} s to {outcome['last_failure_s']} s "
            f"after the kill ({'; '.join(outcome['errors'])})")  # fmt: skip
        if outcome["failed_in_flight"]:
            gap += (f"; {outcome['failed_in_flight']} request(s) in flight on the master while it died"
                    f" ({outcome['event_lasted_s']} s) failed (no proxy can resend their bytes)")  # fmt: skip
        print(f"   {outcome['requests']} requests: {gap}", flush=True)
        labmod.wait_for(f"{victim.name}'s apiserver back", lambda: labmod.readyz(victim.addr4), 120)
        keeper = "kubelet restarted its static pod" if labmod.state_flavour() == "kubeadm" else "systemd restarted it"
        print(f"   {victim.name}'s apiserver is back ({keeper})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(demo())
