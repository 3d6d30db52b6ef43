"""`make bench-fleet`: what a fleet's health checks cost each apiserver, the guard's beside the anchors', on the lab.

For each pattern and fleet size, tests/bench/fleet.py simulates the nodes from the lab's hub namespace against the
three real apiservers (the guard's own probing and discovery code, each simulated node with its own client
certificate from the cluster CA; the anchors' checks as their programs make them), while each master is sampled
before and after: kube-apiserver's CPU time and RSS (/proc), the TCP connections its network namespace accepted
(TcpPassiveOpens), the connections established on port 6443 halfway through, and the lines its log grew by.
An idle run of the same length first: its rates are the cluster's own (kubelets, controllers, etcd peers), and the
fleet's cost is what a run adds to them. Requests and new connections per apiserver are also counted on the
simulator's side, on the wire. A run the simulator could not drive (steps late) is marked and not used.

    PYTHONPATH=tests/lab .venv/bin/python tests/bench/fleet_bench.py [--seconds 40] [--plan guard:50,100 ...]

Writes .build/bench/fleet.json (after each run) and prints a table with each pattern's cost extrapolated to 5,000
nodes (a least-squares line through the runs' added cost). Needs a running kubeadm-flavour lab (`lab.py up`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import fleet  # tests/bench/fleet.py
import lab as labmod  # tests/lab on PYTHONPATH
from bench import playbook_failure
from lab_control import pids_named
from scenarios import collections_path, run_playbook

EXTRAPOLATE_TO = 5000
DEFAULT_PLAN = ("guard:50,100,200", "lvscare:100,200", "kubespray-haproxy:100,200", "kubeprism:100,200")
LOG_GLOB = "/var/log/pods/kube-system_kube-apiserver-*/kube-apiserver/*.log"


def sample_command() -> str:
    """On a master: the apiserver's CPU ticks and RSS, the namespace's accepted connections, the log's lines."""
    return (
        f"pid=$({pids_named('kube-apiserver')}); pid=${{pid%%[!0-9]*}}; "
        "echo \"ticks $(awk '{print $14+$15}' /proc/$pid/stat)\"; "
        "echo \"rss_kb $(awk '/^VmRSS/{print $2}' /proc/$pid/status)\"; "
        "echo \"opens $(nstat -asz TcpPassiveOpens | awk '/TcpPassiveOpens/{print $2}')\"; "
        f'echo "log_lines $(cat {LOG_GLOB} 2>/dev/null | wc -l)"; '
        'echo "hz $(getconf CLK_TCK)"; echo "t $(date +%s.%N)"'
    )


def sample(master: labmod.Node) -> dict[str, float]:
    out = labmod.ssh(master, sample_command()).stdout
    return {key: float(value) for key, value in (line.split() for line in out.splitlines() if len(line.split()) == 2)}


def established(master: labmod.Node) -> int:
    out = labmod.ssh(master, "ss -Htn state established '( sport = :6443 )' | wc -l").stdout
    return int(out.strip() or 0)


def rates(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Per second between two samples of one master (CPU in cores), and the RSS at the end."""
    span = after["t"] - before["t"]
    return {
        "cpu_cores": (after["ticks"] - before["ticks"]) / after["hz"] / span,
        "accepted_per_s": (after["opens"] - before["opens"]) / span,
        "log_lines_per_min": (after["log_lines"] - before["log_lines"]) * 60 / span,
        "rss_mb": after["rss_kb"] / 1024,
    }


def split_pattern(name: str) -> tuple[str, list[str]]:
    """`guard+fast_check_interval_s=0` -> ("guard", ["fast_check_interval_s=0"]): a variant of the guard's settings."""
    pattern, *settings = name.split("+")
    return pattern, settings


def simulate(name: str, nodes: int, seconds: float, masters: list[labmod.Node], ca: Path, key: Path) -> dict:
    pattern, settings = split_pattern(name)
    argv = [sys.executable, str(Path(fleet.__file__)), "--pattern", pattern, "--nodes", str(nodes),
            *(arg for setting in settings for arg in ("--guard-set", setting)),
            "--seconds", str(seconds), "--ca-cert", str(ca), "--ca-key", str(key),
            *(arg for m in masters for arg in ("--servers", f"https://{m.addr4}:6443"))]  # fmt: skip
    lab_path = str(labmod.REPO / "tests" / "lab")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(collections_path()), lab_path]))
    res = subprocess.run(["ip", "netns", "exec", labmod.HUB_NS, *argv], capture_output=True, text=True, env=env,
                         timeout=seconds + 300, check=False)  # fmt: skip
    if res.returncode not in (0, 3) or not res.stdout.strip():
        raise RuntimeError(f"fleet.py {pattern} {nodes}: rc {res.returncode}: {res.stderr.strip()[-600:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def measure(pattern: str, nodes: int, seconds: float, masters: list[labmod.Node], ca: Path, key: Path) -> dict:
    """One run: the masters sampled around it, their established connections halfway through."""
    before = {m.name: sample(m) for m in masters}
    midway: dict[str, int] = {}

    def count_midway() -> None:
        time.sleep(seconds / 2)
        midway.update({m.name: established(m) for m in masters})

    counter = threading.Thread(target=count_midway, daemon=True)
    counter.start()
    if nodes:
        sim = simulate(pattern, nodes, seconds, masters, ca, key)
    else:
        time.sleep(seconds)
        sim = None
    counter.join(timeout=60)
    after = {m.name: sample(m) for m in masters}
    per_master = {m.name: rates(before[m.name], after[m.name]) | {"established": midway.get(m.name)} for m in masters}
    return {"pattern": pattern, "nodes": nodes, "per_master": per_master, "simulator": sim}


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def row(run: dict, idle: dict) -> dict:
    """The run's cost per apiserver (mean over the masters), the idle run's rates taken away."""
    masters = list(run["per_master"])

    def added(key: str) -> float:
        return mean([run["per_master"][m][key] - idle["per_master"][m][key] for m in masters])

    sim = run["simulator"] or {}
    return {
        "pattern": run["pattern"],
        "nodes": run["nodes"],
        "cpu_cores_per_apiserver": round(added("cpu_cores"), 4),
        "requests_per_s": sim.get("per_apiserver", {}).get("requests_per_s"),
        "new_connections_per_s": sim.get("per_apiserver", {}).get("new_connections_per_s"),
        "accepted_per_s": round(added("accepted_per_s"), 1),
        "established": round(
            mean([run["per_master"][m]["established"] or 0 for m in masters])
            - mean([idle["per_master"][m]["established"] or 0 for m in masters]),
            1,
        ),
        "rss_mb": round(mean([run["per_master"][m]["rss_mb"] for m in masters]), 1),
        "log_lines_per_min": round(added("log_lines_per_min"), 1),
        "kept_up": sim.get("kept_up"),
    }


def extrapolated(rows: list[dict]) -> list[dict]:
    """Each pattern's CPU, requests, new connections and log lines at EXTRAPOLATE_TO nodes (a line through its
    runs that kept up, and the idle point at zero)."""
    out = []
    for pattern in dict.fromkeys(r["pattern"] for r in rows if r["nodes"]):
        used = [r for r in rows if r["pattern"] == pattern and r["nodes"] and r["kept_up"]]
        if not used:
            continue
        line = {"pattern": pattern, "nodes": f"{EXTRAPOLATE_TO} (extrapolated)"}
        for key in ("cpu_cores_per_apiserver", "requests_per_s", "new_connections_per_s", "log_lines_per_min"):
            points = [(0, 0.0)] + [(r["nodes"], r[key]) for r in used if r[key] is not None]
            line[key] = round(fleet.extrapolate(points, EXTRAPOLATE_TO), 3)
        out.append(line)
    return out


def grant_discovery() -> None:
    """The collection's discovery grant (the discovery_access module, as site.yml applies it): the simulated nodes'
    EndpointSlice reads are answered, not refused."""
    play = [{"hosts": "kube_control_plane[0]", "gather_facts": False, "become": True,
             "roles": [{"role": "kubeha.apiserver.kubeha_defaults"}],
             "tasks": [{"ansible.builtin.include_role": {"name": "kubeha.apiserver.local_proxy", "tasks_from": "venv"}},
                       {"kubeha.apiserver.discovery_access": {"state": "present"},
                        "vars": {"ansible_python_interpreter": "{{ kubeha_defaults_python }}"}}]}]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="fleet-grant-") as tmp:
        path = Path(tmp) / "grant.yml"
        path.write_text(json.dumps(play))
        run = run_playbook(path, timeout=900)
    if run.returncode != 0:
        raise SystemExit(playbook_failure("the discovery grant", run))


def ca_key_file(first: labmod.Node, directory: Path) -> Path:
    """The cluster CA's key, from the first master, in a private file for the simulator's node certificates."""
    path = directory / "ca.key"
    path.touch(mode=0o600)
    path.write_text(labmod.ssh(first, "cat /etc/kubernetes/pki/ca.key").stdout)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--plan", nargs="*", default=list(DEFAULT_PLAN), help="PATTERN:N,N,... (each pattern once)")
    parser.add_argument("--json", type=Path, default=labmod.REPO / ".build" / "bench" / "fleet.json")
    args = parser.parse_args(argv)
    plan = [(p, int(n)) for item in args.plan for p, ns in [item.split(":")] for n in ns.split(",")]
    if unknown := {split_pattern(p)[0] for p, _count in plan} - set(fleet.PATTERNS):
        parser.error(f"unknown patterns: {', '.join(sorted(unknown))}")
    state = labmod.load_state()
    if not state or state.get("flavour") != "kubeadm":
        parser.error("needs a running kubeadm-flavour lab (KUBEHA_LAB_FLAVOUR=kubeadm lab.py up)")
    nodes = [labmod.Node(**raw) for raw in state["nodes"]]
    masters = [n for n in nodes if n.role == "control-plane"]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    results: dict = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seconds": args.seconds, "runs": []}
    grant_discovery()
    with tempfile.TemporaryDirectory(prefix="fleet-") as tmp:
        key = ca_key_file(masters[0], Path(tmp))
        for pattern, count in [("idle", 0), *plan]:
            print(f"[fleet {time.strftime('%H:%M:%S')}] {pattern} x {count} for {args.seconds:g} s", flush=True)
            results["runs"].append(measure(pattern, count, args.seconds, masters, labmod.WORK / "ca.crt", key))
            args.json.write_text(json.dumps(results, indent=1) + "\n")
    idle = results["runs"][0]
    rows = [row(run, idle) for run in results["runs"][1:]]
    results["rows"], results["extrapolated"] = rows, extrapolated(rows)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(fleet.table(rows + results["extrapolated"]))
    print(f"\nJSON: {args.json}")
    return 0 if all(r["kept_up"] for r in rows) else 3


if __name__ == "__main__":
    sys.exit(main())
