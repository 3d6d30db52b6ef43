"""`make bench`: the local proxy's failover and overhead on the lab, side by side in one run; a table, JSON, PNG.

Proxies compared, each on the node where it runs:
- ipvs: the collection's IPVS mode (w1, the qemu worker with a real kernel), VIP 169.254.100.1:6444;
- haproxy: the collection's userspace mode (w2), same VIP;
- nginx: a plain nginx stream proxy like kubespray's default localhost load balancer (w2, 127.0.0.1:6446:
  least_conn, proxy_connect_timeout 1s, proxy_timeout 10m, no health checks), installed for the run only;
- nftables (latency only): the kernel load balancer of the nftables_service module on w2, whose kernel is this
  machine's (nftables, no IPVS), a VIP of its own (169.254.100.2:6444) over the three masters with equal weights,
  no guard yet; made for the run only.

Scenarios, each with a steady load (a new TLS connection and GET /readyz every 100 ms) and long-lived
connections (kept-alive, no client timeout, like a watch) through the proxy:
- killed: SIGKILL of cp2's kube-apiserver (systemd restarts it a few seconds later);
- black-holed: cp3 drops every packet to its apiserver port (iptables in its namespace) for the whole run.
Also: request latency through each proxy against straight to the apiservers (interleaved on the same node),
certificate rotation on every master (the apiserver_cert_sans role with a new name, reloaded by kube-apiserver
or restarted by systemd) under load, and the guard's memory and CPU. Every run is bounded in time and stops by
itself; the lab is left as found, except that site.yml has been applied and the certificates carry the new names.

    PYTHONPATH=tests/lab .venv/bin/python tests/bench/bench.py [--json PATH] [--rounds N] [--sections S,...]
    (make bench runs every section: latency, failover, rotation, guard)

Beside the JSON it draws failover.png, every failover request on a timeline (tests/bench/plot.py).

A run keeps what it measured, even on a slow machine: the JSON is written again (whole, atomically) as soon as each
scenario is measured (a latency group, a failover scenario through one proxy, a rotation, the guard section). A
scenario that raises is recorded in its place as {"failed": true, "error": "<one line>"}, logged, and the run goes
on; the table shows it as FAILED, the picture leaves it out. A failure between scenarios (the masters not ready
again, the bench's proxies not removed) is logged and kept in "errors". Either makes the exit status 1, once the
table is printed. site.yml failing at the start ends the run (nothing can be measured), with its failed tasks: host,
task and message (failed_tasks). A connection that ssh could not open (a busy node's sshd) is tried again, by the
lab's ssh() and by Ansible.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import lab as labmod  # tests/lab on PYTHONPATH (make bench sets it)
import plot as plotmod  # tests/bench/plot.py: the failovers as a PNG
from scenarios import PORT, VIP4, clock_offset, kill_apiserver, playbook, run_playbook, strike, under_load
from scenarios import summarize as summarize_requests

HERE = Path(__file__).resolve().parent
CA = "/etc/kubernetes/pki/ca.crt"
CERT_PLAY = labmod.REPO / "tests" / "integration" / "files" / "apiserver_cert_sans_play.yml"
NGINX_PORT = 6446
NFT_VIP = "169.254.100.2"  # on w2's loopback for the run, beside haproxy's 169.254.100.1
BENCH_DIR = "/run/kubeha-bench"
DURATION_S, EVENT_AFTER_S, LONG_LIVED = 16.0, 4.0, 6
DROP = "iptables -I INPUT -p tcp --dport 6443 -j DROP"
UNDROP = "iptables -D INPUT -p tcp --dport 6443 -j DROP"
# The promises of the issue, checked on every run (the table says which are met).
TARGETS = {
    "killed": "ipvs: no failure later than 1 s; haproxy: no failure (of the requests sent after the kill)",
    "black-holed": "from 2 s on every request succeeds in < 1 s",
    "long-lived": "closed and answered again within 3 s",
    "latency": "IPVS adds <= 5 % at the median, on new and on kept connections; nftables <= 3 % (native kernel)",
}
LATENCY_RATIO, LATENCY_BLOCKS = 1.05, 5
NFT_LATENCY_RATIO = 1.03
# An indented JSON list of numbers, booleans or nulls (no strings: a string holds no raw newline, so never matches).
_SCALAR_LIST = re.compile(r"\[\n\s+((?:[-+.\w]+,\n\s+)*[-+.\w]+)\n\s*\]")
# ansible-playbook's default output: a task's header, and a failed result on a host (a loop item's, or the task's).
_TASK_HEADER = re.compile(r"^(?P<header>(?:TASK|RUNNING HANDLER) \[.*\])\s*\**\s*$")
_TASK_FAILED = re.compile(
    r"^(?:fatal|failed): \[(?P<host>[^\]]+)\](?: \(item=(?P<item>.*?)\))?(?:: (?P<status>[A-Z]+!))? => (?P<result>.*)$"
)
ERROR_CHARS = 400  # an error kept in the results: one line, at most this long


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---- failures ---------------------------------------------------------------------------------------------


class PlaybookFailed(RuntimeError):
    """A playbook run by the bench failed; the message names its failed tasks (playbook_failure)."""


def shorten(text: str, width: int = ERROR_CHARS) -> str:
    """`text` on one line (whitespace collapsed), at most `width` characters: its head and its tail, where an error
    says what failed (the node, the command) and why (ssh's or the command's last words)."""
    line = " ".join(str(text).split())
    if len(line) <= width:
        return line
    head = width // 3
    return f"{line[:head]} ... {line[-(width - head - 5) :]}"


def one_line(exc: BaseException) -> str:
    return shorten(f"{type(exc).__name__}: {exc}")


def failed_tasks(output: str) -> str:
    """The failed tasks in an ansible-playbook run's output (the default callback's), one line each: the host (and
    loop item), the task (its "TASK [...]" header), the result's msg, and its rc and stderr when it has them. A
    failure followed by "...ignoring" is left out. "" when the output shows no failed task."""
    lines = output.splitlines()
    header, found = "TASK [?]", []
    for i, line in enumerate(lines):
        if task := _TASK_HEADER.match(line):
            header = task["header"]
            continue
        if not (failure := _TASK_FAILED.match(line)):
            continue
        if next((rest.strip() for rest in lines[i + 1 :] if rest.strip()), "") == "...ignoring":
            continue
        try:
            result = json.loads(failure["result"])
        except ValueError:
            result = None
        if not isinstance(result, dict):
            result = {"msg": failure["result"]}
        said = [shorten(result.get("msg") or "(no msg)")]
        if result.get("rc") not in (None, 0):
            said.append(f"rc {result['rc']}")
        if stderr := result.get("stderr") or result.get("module_stderr"):
            said.append(f"stderr: {shorten(stderr, 200)}")
        item = f" (item={failure['item']})" if failure["item"] is not None else ""
        status = f" {failure['status']}" if failure["status"] else ""
        found.append(f"{failure['host']}{item}: {header}{status} {'; '.join(said)}")
    return "\n".join(found)


def playbook_failure(what: str, res: subprocess.CompletedProcess) -> str:
    """What to say of a failed ansible-playbook run: its failed tasks, or else the last lines of its output."""
    said = failed_tasks(res.stdout or "")
    if not said:
        tail = ((res.stdout or "") + "\n" + (res.stderr or "")).strip().splitlines()[-20:]
        said = "no failed task in its output, which ends:\n" + "\n".join(tail)
    return f"{what} failed (exit status {res.returncode}):\n{said}"


failed = plotmod.failed  # whether a place in the results holds a scenario that raised (the picture leaves it out)


def failures(results: dict) -> list[str]:
    """What failed in a run: the failed scenarios, then the failed steps between them ("errors")."""
    found = [f"latency {group}" for group, entry in results.get("latency", {}).items() if failed(entry)]
    for scenario, by_proxy in results.get("failover", {}).items():
        found += [f"failover {scenario} {proxy}" for proxy, entry in by_proxy.items() if failed(entry)]
    found += [f"rotation {restart}" for restart, entry in results.get("rotation", {}).items() if failed(entry)]
    if failed(results.get("guard")):
        found.append("guard")
    return found + [e["step"] for e in results.get("errors", [])]


class Recorder:
    """Measures the scenarios one by one into their places in `results`, handing the whole results to `save` after
    each one. A scenario that raises an Exception is recorded in its place as {"failed": True, "error": one line},
    logged, and the run goes on (KeyboardInterrupt and SystemExit go through)."""

    def __init__(self, results: dict, save: Callable[[dict], object]) -> None:
        self.results, self.save = results, save

    def measure(self, place: tuple[str, ...], label: str, scenario: Callable[[], dict]) -> dict:
        try:
            entry = scenario()
        except Exception as exc:
            entry = {"failed": True, "error": one_line(exc)}
            traceback.print_exc()
            log(f"{label}: FAILED: {entry['error']}")
        target = self.results
        for key in place[:-1]:
            target = target.setdefault(key, {})
        target[place[-1]] = entry
        self.save(self.results)
        return entry

    def step(self, label: str, action: Callable[[], object]) -> bool:
        """A step between or after the scenarios (the masters ready again, the bench's proxies removed): when it
        raises an Exception, logged and kept in results["errors"], and the run goes on. Whether it succeeded."""
        try:
            action()
        except Exception as exc:
            error = one_line(exc)
            traceback.print_exc()
            log(f"{label}: FAILED: {error}")
            self.results.setdefault("errors", []).append({"step": label, "error": error})
            self.save(self.results)
            return False
        return True


def write_json(path: Path, results: dict) -> None:
    """The results at `path`, whole, atomically (a file beside it, renamed over it): a reader never sees half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(dumps(results) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ---- the lab ----------------------------------------------------------------------------------------------


def ensure_lab() -> dict[str, labmod.Node]:
    if not labmod.load_state() or labmod.cmd_status() != 0:
        subprocess.run([sys.executable, str(labmod.HERE / "lab.py"), "up"], check=True)
    return {raw["name"]: labmod.Node(**raw) for raw in labmod.load_state()["nodes"]}


def nginx_conf(masters: list[labmod.Node]) -> str:
    servers = "\n".join(f"        server {m.addr4}:6443;" for m in masters)
    return f"""\
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 1;
pid {BENCH_DIR}/nginx.pid;
error_log {BENCH_DIR}/nginx-error.log;
events {{ worker_connections 1024; }}
stream {{
    upstream kube_apiserver {{
        least_conn;
{servers}
    }}
    server {{
        listen 127.0.0.1:{NGINX_PORT};
        proxy_pass kube_apiserver;
        proxy_timeout 10m;
        proxy_connect_timeout 1s;
    }}
}}
"""


def nginx_up(node: labmod.Node, masters: list[labmod.Node]) -> None:
    log(f"nginx stream proxy on {node.name} (kubespray's defaults), 127.0.0.1:{NGINX_PORT}")
    install = "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx libnginx-mod-stream"
    labmod.ssh(node, f"{install} >/dev/null && systemctl disable --now nginx >/dev/null 2>&1; mkdir -p {BENCH_DIR}",
               timeout=300)  # fmt: skip
    conf = shlex.quote(nginx_conf(masters))
    labmod.ssh(node, f"printf %s {conf} > {BENCH_DIR}/nginx.conf && nginx -c {BENCH_DIR}/nginx.conf")


def nginx_down(node: labmod.Node) -> None:
    labmod.ssh(node, f"nginx -c {BENCH_DIR}/nginx.conf -s quit; sleep 1; rm -rf {BENCH_DIR};"
               " DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq nginx nginx-common libnginx-mod-stream"
               " >/dev/null", check=False, timeout=300)  # fmt: skip


def nftables_service(node: labmod.Node, masters: list[labmod.Node], state: str) -> None:
    """The nftables_service module on `node` (the collection's virtualenv there): NFT_VIP:PORT over the masters."""
    args = {"address": NFT_VIP, "port": PORT, "state": state,
            "backends": [{"address": m.addr4, "port": 6443} for m in masters]}  # fmt: skip
    play = [{"hosts": node.name, "gather_facts": False, "become": True,
             "vars": {"ansible_python_interpreter": "/opt/kubeha-apiserver/venv/bin/python"},
             "tasks": [{"kubeha.apiserver.nftables_service": args}]}]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "nftables.yml"
        path.write_text(json.dumps(play))
        res = run_playbook(path)
    if res.returncode != 0:
        raise PlaybookFailed(playbook_failure(f"the nftables_service play ({state})", res))


def nftables_up(node: labmod.Node, masters: list[labmod.Node]) -> bool:
    """The service on `node`, nft installed from the lab's mirror if it lacks it; whether the bench installed it."""
    log(f"nftables_service on {node.name}, {NFT_VIP}:{PORT} over the masters")
    installed = labmod.ssh(node, "command -v nft", check=False).returncode != 0
    if installed:
        install = "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables >/dev/null"
        labmod.ssh(node, install, timeout=300)
    labmod.ssh(node, f"ip addr replace {NFT_VIP}/32 dev lo")
    nftables_service(node, masters, "present")
    return installed


def nftables_down(node: labmod.Node, masters: list[labmod.Node], installed: bool) -> None:
    nftables_service(node, masters, "absent")
    labmod.ssh(node, f"ip addr del {NFT_VIP}/32 dev lo", check=False)
    if installed:
        labmod.ssh(node, "DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq nftables >/dev/null", check=False,
                   timeout=300)  # fmt: skip


def wait_all_ready(masters: list[labmod.Node]) -> None:
    for m in masters:
        labmod.wait_for(f"{m.name}'s apiserver ready", lambda m=m: labmod.readyz(m.addr4), 180)


# ---- measurements -----------------------------------------------------------------------------------------


def latency(node: labmod.Node, masters: list[labmod.Node], proxies: dict[str, str], rounds: int) -> dict:
    """Medians per target and way (fresh, kept), and each proxy's ratio to `direct`: over all the rounds, and
    over each of LATENCY_BLOCKS consecutive blocks of them (how far the figure moves within one run)."""
    script = (HERE / "files" / "latency.py").read_text()
    args = " ".join(shlex.quote(f"{name}={spec}") for name, spec in proxies.items())
    addresses = ",".join(m.addr4 for m in masters)
    out = labmod.ssh(node, f"python3 -c {shlex.quote(script)} {CA} {rounds} {addresses} {args}", timeout=900).stdout
    samples = json.loads(out)
    size = max(1, rounds // LATENCY_BLOCKS)

    def ratios(values: list[float], base: list[float]) -> tuple[float, list[float]]:
        blocks = [
            statistics.median(values[i : i + size]) / statistics.median(base[i : i + size])
            for i in range(0, size * LATENCY_BLOCKS, size)
            if values[i : i + size]
        ]
        return round(statistics.median(values) / statistics.median(base), 4), [round(r, 4) for r in blocks]

    result: dict = {}
    for name, by_kind in samples.items():
        for kind, values in by_kind.items():
            result.setdefault(name, {})[f"{kind}_ms"] = round(statistics.median(values) * 1000, 3)
            if name != "direct":
                ratio, blocks = ratios(values, samples["direct"][kind])
                result[name][f"{kind}_ratio"] = ratio
                result[name][f"{kind}_ratio_blocks"] = blocks
    return result


def failover(node: labmod.Node, host: str, port: int, victim: labmod.Node, event: Callable[[], object]) -> dict:
    """Load through host:port on node; `event` EVENT_AFTER_S into it; the outcome, in seconds after the event
    (its instant as `scenarios.strike` takes it)."""
    script = (HERE / "files" / "failover_load.py").read_text()
    offset = clock_offset(node)
    planned = time.time() + EVENT_AFTER_S + 1.0  # the SSH session takes a moment to start the script
    argv = f"{host} {port} {CA} {victim.name} {DURATION_S} {planned + offset:.3f} {LONG_LIVED}"
    load = subprocess.Popen(
        labmod.ssh_argv(node, f"python3 -c {shlex.quote(script)} {argv}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(max(0.0, planned - time.time()))
        event_at, event_end = strike(event, offset)
        out, err = load.communicate(timeout=DURATION_S + 60)
    except BaseException:
        load.kill()  # the event failed, or the load outlived its bound: no SSH session left behind
        load.wait()
        raise
    if load.returncode != 0:
        raise RuntimeError(f"{node.name}: the load through {host}:{port} failed ({load.returncode}): {err.strip()}")
    return summarize(json.loads(out), event_at, event_end) | {"victim": victim.name}


def summarize(run: dict, event_at: float, event_end: float | None = None) -> dict:
    steady = summarize_requests(run["steady"], event_at, event_end)
    late_failures = [t for t, ok, _e, _took in run["steady"] if not ok and t - event_at >= 2.0]
    pinned = [r for r in run["long_lived"] if r["pinned"]]
    answered = [r["answered_again_at"] - event_at for r in pinned if r["answered_again_at"] is not None]
    closed = [r["closed_at"] - event_at for r in pinned if r["closed_at"] is not None]

    def since_event(at: float | None) -> float | None:
        return None if at is None else round(at - event_at, 3)

    return {
        "requests": steady["requests"],
        "failed": steady["failed"],
        "failed_in_flight": steady["failed_in_flight"],
        "event_lasted_s": steady["event_lasted_s"],
        "last_failure_s": steady["last_failure_s"],
        "failed_after_2s": len(late_failures),
        "slowest_after_2s_s": steady["slowest_after_settle_s"],
        "long_lived_pinned": len(pinned),
        "long_lived_closed_max_s": round(max(closed), 3) if closed else None,
        "long_lived_answered_again_max_s": round(max(answered), 3) if len(answered) == len(pinned) and pinned else None,
        "long_lived_hung": len(pinned) - len(answered),
        "errors": steady["errors"],
        # Every steady request: [start in s after the event, ok, duration in s] (the picture of the failover).
        "timeline": [[round(t - event_at, 3), bool(ok), round(took, 4)] for t, ok, _e, took in run["steady"]],
        # Each pinned long-lived connection: when it was closed and answered again, in s after the event.
        "long_lived_timeline": [
            {"closed_s": since_event(r["closed_at"]), "answered_again_s": since_event(r["answered_again_at"])}
            for r in pinned
        ],
    }


def meets(proxy: str, scenario: str, result: dict) -> dict[str, bool]:
    verdict = {}
    if scenario == "killed":
        verdict["killed"] = (
            result["failed"] == 0
            if proxy != "ipvs"
            else result["last_failure_s"] is None or result["last_failure_s"] <= 1.0
        )
    else:
        verdict["black-holed"] = result["failed_after_2s"] == 0 and (result["slowest_after_2s_s"] or 0) < 1.0
    reopened = result["long_lived_answered_again_max_s"]
    verdict["long-lived"] = result["long_lived_pinned"] > 0 and reopened is not None and reopened <= 3.0
    return verdict


def guard_usage(node: labmod.Node, seconds: float = 20.0) -> dict:
    """The guard's resident memory and its CPU time over `seconds`, from /proc (CPU as % of one core)."""
    script = f"""
import os, time
pid = int(os.popen("systemctl show -p MainPID --value kubeha-apiserver-guard").read())
def ticks():
    fields = open(f"/proc/{{pid}}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])
def rss_kb():
    return next(int(l.split()[1]) for l in open(f"/proc/{{pid}}/status") if l.startswith("VmRSS:"))
t0, c0 = time.monotonic(), ticks()
time.sleep({seconds})
t1, c1 = time.monotonic(), ticks()
print(c1 - c0, os.sysconf("SC_CLK_TCK"), t1 - t0, rss_kb())
"""
    used, hz, elapsed, rss = labmod.ssh(node, f"python3 -c {shlex.quote(script)}", timeout=120).stdout.split()
    return {
        "rss_mb": round(int(rss) / 1024, 1),
        "cpu_percent": round(100 * int(used) / int(hz) / float(elapsed), 2),
        "emulated": node.kind == "qemu",
    }


def rotation(restart: str, nodes: list[labmod.Node]) -> dict:
    """A new name in every apiserver certificate, one master at a time (the apiserver_cert_sans role), while the
    nodes send a new request through their VIP every 100 ms. auto: kube-apiserver loads the file by itself;
    systemd: each apiserver is restarted in turn. The name is new on every run, so every run rotates."""
    name = f"kubeha-bench-{restart}-{int(time.time())}.lab"
    variables = {"apiserver_cert_sans_extra": [name], "apiserver_cert_sans_restart": restart}
    started = time.time()
    done = threading.Event()

    def play() -> subprocess.CompletedProcess | Exception:
        try:
            return run_playbook(CERT_PLAY, variables=variables, timeout=900)
        except Exception as exc:  # raised below, in this thread, rather than lost in the playbook's own
            return exc
        finally:
            done.set()

    try:
        run, load = under_load(nodes, play)
    except Exception:
        done.wait(960)  # the load failed: the playbook goes on in its thread; the next scenario waits for its end
        raise
    if isinstance(run, Exception):
        raise run
    if run.returncode != 0:
        raise PlaybookFailed(playbook_failure(CERT_PLAY.name, run))
    return {"seconds": round(time.time() - started, 1), "by_node": load}


# ---- the run ----------------------------------------------------------------------------------------------


SECTIONS = ("latency", "failover", "rotation", "guard")


def latency_checked(node: labmod.Node, masters: list[labmod.Node], proxies: dict[str, str], rounds: int,
                    checked: str, bound: float) -> dict:  # fmt: skip
    """latency(), and whether `checked`'s ratios meet `bound` on new and on kept connections."""
    figures = latency(node, masters, proxies, rounds)
    fig = figures[checked]
    fig["meets"] = {"latency": all(fig[f"{kind}_ratio"] <= bound for kind in ("fresh", "kept"))}
    return figures


def failover_scenario(scenario: str, proxy: str, node: labmod.Node, host: str, port: int,
                      victim: labmod.Node) -> dict:  # fmt: skip
    """One failover through one proxy: `victim`'s apiserver killed, or black-holed (undone whatever happens)."""
    if scenario == "killed":
        outcome = failover(node, host, port, victim, lambda: kill_apiserver(victim))
    else:
        try:
            outcome = failover(node, host, port, victim, lambda: labmod.ssh(victim, DROP))
        finally:
            labmod.ssh(victim, UNDROP, check=False)
    outcome["meets"] = meets(proxy, scenario, outcome)
    return outcome


def settle(masters: list[labmod.Node]) -> None:
    wait_all_ready(masters)
    time.sleep(5)  # the guards and haproxy take the master back (rise 2)


def run(rounds: int, sections: tuple[str, ...] = SECTIONS, save: Callable[[dict], object] = lambda _r: None) -> dict:
    """Every section asked for; `save` gets the whole results at the start and after each scenario (Recorder)."""
    nodes = ensure_lab()
    masters = [n for n in nodes.values() if n.role == "control-plane"]
    w_ipvs = next(n for n in nodes.values() if n.role == "worker" and n.has_ipvs)
    w_user = next(n for n in nodes.values() if n.role == "worker" and not n.has_ipvs)
    log("playbooks/site.yml (the local proxy on every node)")
    site = playbook("site")
    if site.returncode != 0:
        raise SystemExit(playbook_failure("playbooks/site.yml", site) + "\nnothing measured")
    proxies = {
        "ipvs": (w_ipvs, VIP4, PORT),
        "haproxy": (w_user, VIP4, PORT),
        "nginx": (w_user, "127.0.0.1", NGINX_PORT),
    }
    results: dict = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "latency": {}, "failover": {}}
    rec = Recorder(results, save)
    save(results)
    nft_installed: bool | None = None
    try:
        nginx_up(w_user, masters)
        nft_installed = nftables_up(w_user, masters)
        if "latency" in sections:
            log(f"latency: {rounds} interleaved rounds per node")
            native = {"haproxy": f"{VIP4}:{PORT}", "nginx": f"127.0.0.1:{NGINX_PORT}", "nftables": f"{NFT_VIP}:{PORT}"}
            for group, node, targets, checked, bound in (
                ("ipvs", w_ipvs, {"ipvs": f"{VIP4}:{PORT}"}, "ipvs", LATENCY_RATIO),
                ("native", w_user, native, "nftables", NFT_LATENCY_RATIO),
            ):
                measure = functools.partial(latency_checked, node, masters, targets, rounds, checked, bound)
                rec.measure(("latency", group), f"latency {group}", measure)
        for scenario, victim in (("killed", masters[1]), ("black-holed", masters[2])) if "failover" in sections else ():
            for proxy, (node, host, port) in proxies.items():
                label = f"failover {scenario} {proxy}"
                log(f"{scenario}: {victim.name}, load from {node.name} through {proxy} ({host}:{port})")
                measure = functools.partial(failover_scenario, scenario, proxy, node, host, port, victim)
                rec.measure(("failover", scenario, proxy), label, measure)
                rec.step(f"{label}: the masters ready again", functools.partial(settle, masters))
        for restart in ("auto", "systemd") if "rotation" in sections else ():
            log(f"certificate rotation on every master (restart: {restart}), load from {w_ipvs.name} and {w_user.name}")
            measure = functools.partial(rotation, restart, [w_ipvs, w_user])
            rec.measure(("rotation", restart), f"rotation {restart}", measure)
            rec.step(f"rotation {restart}: the masters ready again", functools.partial(wait_all_ready, masters))
        if "guard" in sections:
            log("the guard's memory and CPU over 20 s (w1 runs under software emulation)")
            rec.measure(("guard",), "guard", lambda: {n.name: guard_usage(n) for n in (w_ipvs, w_user, masters[0])})
    finally:
        rec.step("nginx removed", functools.partial(nginx_down, w_user))
        if nft_installed is not None:
            rec.step("nftables_service removed", functools.partial(nftables_down, w_user, masters, nft_installed))
    return results


def table(results: dict) -> str:
    """The results as text; a scenario that failed is a FAILED row with its error, the others print as ever."""
    lines = ["", "Latency, median ms (GET /readyz; fresh = new TCP+TLS connection, kept = on an open one);"]
    lines.append("  ratio to direct over the whole run [over each fifth of it]")
    for group, targets in results.get("latency", {}).items():
        if failed(targets):
            lines.append(f"  {group:9} FAILED: {targets['error']}")
            continue
        for name, fig in targets.items():
            line = f"  {group:9} {name:8} fresh {fig['fresh_ms']:8.3f}  kept {fig['kept_ms']:8.3f}"
            if name != "direct":
                for kind in ("fresh", "kept"):
                    blocks = " ".join(f"{r:.3f}" for r in fig[f"{kind}_ratio_blocks"])
                    line += f"  {kind} x{fig[f'{kind}_ratio']:.3f} [{blocks}]"
            if "meets" in fig:
                line += "  target met: " + ("yes" if fig["meets"]["latency"] else "NO")
            lines.append(line)
    lines += ["", "Failover (seconds after the event; inflt = failed while in flight at the event, apart from fail;"]
    lines.append("  long-lived = connections pinned to the failed master)")
    head = f"  {'scenario':12} {'proxy':8} {'req':>4} {'fail':>4} {'inflt':>5} {'last':>6} {'fail>2s':>7}"
    head += f" {'slow>2s':>7} {'pinned':>6} {'closed':>6} {'again':>6} {'hung':>4}  targets met"
    lines.append(head)
    for scenario, by_proxy in results.get("failover", {}).items():
        for proxy, r in by_proxy.items():

            def f(value: float | None) -> str:
                return "-" if value is None else f"{value:.2f}"

            if failed(r):
                lines.append(f"  {scenario:12} {proxy:8} FAILED: {r['error']}")
                continue
            met = ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in r["meets"].items())
            lines.append(
                f"  {scenario:12} {proxy:8} {r['requests']:>4} {r['failed']:>4} {r['failed_in_flight']:>5}"
                f" {f(r['last_failure_s']):>6}"
                f" {r['failed_after_2s']:>7} {f(r['slowest_after_2s_s']):>7} {r['long_lived_pinned']:>6}"
                f" {f(r['long_lived_closed_max_s']):>6} {f(r['long_lived_answered_again_max_s']):>6}"
                f" {r['long_lived_hung']:>4}  {met}"
            )
    lines += ["", "Certificate rotation on the 3 masters, one at a time (a new request through the VIP every 100 ms)"]
    for restart, r in results.get("rotation", {}).items():
        if failed(r):
            lines.append(f"  {restart:8} FAILED: {r['error']}")
            continue
        for node, c in r["by_node"].items():
            errors = "; ".join(c["errors"])
            lines.append(f"  {restart:8} {node:4} {c['requests']:>5} requests {c['failed']:>3} failed  {errors}")
    lines += ["", "Guard (target: RSS <= 40 MB, CPU <= 2 % of one core, 3 masters, 1 s interval)"]
    guard = results.get("guard", {})
    if failed(guard):
        lines.append(f"  FAILED: {guard['error']}")
    for name, g in {} if failed(guard) else guard.items():
        note = "  (qemu TCG: emulated CPU, not the target's)" if g["emulated"] else ""
        lines.append(f"  {name:4} RSS {g['rss_mb']:5.1f} MB  CPU {g['cpu_percent']:5.2f} %{note}")
    if results.get("errors"):
        lines += ["", "Failed between the scenarios"]
        lines += [f"  {e['step']}: {e['error']}" for e in results["errors"]]
    lines.append("")
    lines += [f"Targets: {k}: {v}" for k, v in TARGETS.items()]
    if bad := failures(results):
        lines += ["", f"FAILED ({len(bad)}): {', '.join(bad)}"]
    return "\n".join(lines)


def dumps(results: dict) -> str:
    """The results as indented JSON, each list of plain numbers or booleans on one line (a timeline row)."""
    return _SCALAR_LIST.sub(lambda m: "[" + ", ".join(v.strip() for v in m[1].split(",")) + "]",
                            json.dumps(results, indent=2))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=str(labmod.REPO / ".build" / "bench" / "bench.json"))
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help="a comma-separated subset of " + ", ".join(SECTIONS)
    )
    args = parser.parse_args(argv)
    sections = tuple(args.sections.split(","))
    if unknown := set(sections) - set(SECTIONS):
        parser.error(f"unknown sections: {', '.join(sorted(unknown))} (known: {', '.join(SECTIONS)})")
    json_path = Path(args.json)
    results = run(args.rounds, sections, save=functools.partial(write_json, json_path))
    write_json(json_path, results)
    print(table(results))
    print(f"\nJSON: {json_path}")
    if any(not failed(outcome) for by_proxy in results["failover"].values() for outcome in by_proxy.values()):
        try:
            print(f"PNG: {plotmod.write(results, json_path.with_name('failover.png'))}")
        except plotmod.PlotError as exc:
            print(f"PNG: not drawn: {exc}")
    return 1 if failures(results) else 0


if __name__ == "__main__":
    sys.exit(main())
