"""playbooks/site.yml on the lab: the local proxy on every node, both modes, and the failure drills under load.

The molecule `default` scenario installs it (converge, idempotence, verify: molecule/default); these tests
run the drills on that install. Runs after the module suites (file order), ends with reset.yml then
site.yml, and leaves the proxy installed for the day-2 suite and the lab's last checks.
"""

from __future__ import annotations

import base64
import json
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lab as labmod
import pytest
from conftest import FILES, run_module
from scenarios import PORT, VIP4, drill, example_inventory, kill_apiserver, molecule, playbook, run_playbook, under_load

ANSIBLE_PLAYBOOK = str(Path(sys.executable).parent / "ansible-playbook")
DROP_6443 = "iptables -I INPUT -p tcp --dport 6443 -j DROP"
UNDROP_6443 = "iptables -D INPUT -p tcp --dport 6443 -j DROP"


def site(*extra: str) -> subprocess.CompletedProcess:
    return playbook("site", *extra)


@pytest.fixture(scope="module")
def installed(lab, nodes):
    """The molecule `default` scenario is the install these drills run on: converge (site.yml), idempotence
    (site.yml again changes nothing on any host), verify (testinfra on every node). The lab stays up for them."""
    run = molecule("test", "--scenario-name", "default", "--destroy", "never")
    assert run.returncode == 0, "molecule test -s default failed (its output is above)"


def discovered(node) -> int | None:
    """The guard's kubeha_apiserver_backends_discovered metric on the node (None while it does not answer)."""
    found = re.search(r"^kubeha_apiserver_backends_discovered (\d+)", labmod.node_metrics(node, 9445), re.M)
    return int(found.group(1)) if found else None


def test_every_guard_discovers_the_masters_and_needs_the_grant_to(installed, nodes, masters, control_node):
    # Discovery reads the kubernetes EndpointSlice with the node's kubelet certificate: the discovery_access
    # grant (site.yml) is what allows it. Negative control: without the grant a restarted guard finds nothing.
    everyone = list(nodes.values())
    labmod.wait_for(
        "every guard discovered the masters", lambda: all(discovered(n) == len(masters) for n in everyone), 60
    )
    node = worker(nodes, "haproxy")
    grant = {"kubeconfig": "/etc/kubernetes/admin.conf"}
    try:
        assert not run_module(control_node, "kubeha.apiserver.discovery_access", grant | {"state": "absent"}).get(
            "failed"
        )
        labmod.ssh(node, "systemctl restart kubeha-apiserver-guard")
        time.sleep(15)  # discovery runs every 10 s
        assert discovered(node) == 0
        log = labmod.ssh(node, "journalctl -u kubeha-apiserver-guard --since -20s --no-pager").stdout
        assert "discovery failed" in log and "forbidden: cannot get endpointslices" in log, log[-2000:]
    finally:
        assert not run_module(control_node, "kubeha.apiserver.discovery_access", grant | {"state": "present"}).get(
            "failed"
        )
    labmod.wait_for(f"{node.name}'s guard discovers again", lambda: discovered(node) == len(masters), 30)


# Run in the lab's hub namespace (where the masters' addresses are routed): 1 when the certificate the apiserver
# presents is valid for the VIP (CA verified), 0 when verification fails, an error for anything else.
SERVES_NAME = """
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[3])
with socket.create_connection((sys.argv[1], 6443), timeout=5) as sock:
    try:
        ctx.wrap_socket(sock, server_hostname=sys.argv[2]).close()
    except ssl.SSLCertVerificationError:
        print(0)
    else:
        print(1)
"""


def serves_name(master, name: str = VIP4) -> bool:
    ca = str(labmod.WORK / "ca.crt")
    return labmod.sh(sys.executable, "-c", SERVES_NAME, master.addr4, name, ca, ns=labmod.HUB_NS).stdout.strip() == "1"


def test_every_master_serves_a_certificate_for_the_vip(installed, masters):
    # molecule's verify reads the certificate files; this asks each running apiserver what it serves.
    assert [m.name for m in masters if not serves_name(m)] == []


def test_a_preflight_failing_on_some_hosts_stops_every_host(installed, nodes, masters):
    # A metrics address only the first master has: preflight passes there and fails on every other node. The real
    # site.yml must stop before any later play, on the first master too (its guard.json would change: the address is
    # in it). The negative control of the keyword that does it is in tests/unit/playbooks (a later play does run).
    first = masters[0]
    before = labmod.ssh(first, "sha256sum /etc/kubeha-apiserver/guard.json").stdout
    run = site("-e", f"local_proxy_metrics_address={first.addr4}")
    assert run.returncode != 0, run.stdout[-3000:]
    refused = sorted(name for name in nodes if name != first.name)
    assert sorted(set(re.findall(r"^fatal: \[(\w+)\]", run.stdout, re.M))) == refused, run.stdout[-4000:]
    assert f"metrics address {first.addr4}" in run.stdout, run.stdout[-3000:]
    assert "PLAY [Keep kube-proxy" not in run.stdout, run.stdout[-3000:]  # the first play that changes anything
    assert labmod.ssh(first, "sha256sum /etc/kubeha-apiserver/guard.json").stdout == before


# The role's client step alone, at -vvv, on every node (after the install it changes nothing). The negative control
# runs the step as it was before kubeconfig_client_cert (the kubeconfig read into Ansible, its user taken there),
# plus a read of the key file a kubeconfig may name instead (kubeadm's kubelet.conf): tasks that do hold a key.
CLIENT_STEP = """
- hosts: all
  gather_facts: false
  tasks:
    - ansible.builtin.include_role:
        name: kubeha.apiserver.local_proxy
        tasks_from: client.yml
      vars:
        local_proxy_python: "{{ local_proxy_prefix }}/venv/bin/python"
"""
CLIENT_STEP_BEFORE = """
- hosts: all
  gather_facts: false
  tasks:
    - ansible.builtin.slurp:
        src: /etc/kubernetes/kubelet.conf
      register: raw
    - ansible.builtin.set_fact:
        user: "{{ (raw.content | b64decode | from_yaml).users[0].user }}"
    - ansible.builtin.command: cat {{ user['client-key'] }}
      when: "'client-key' in user"
      changed_when: false
"""


def client_key_texts(node) -> list[str]:
    """What would give the node's kubelet key away: client-key-data as the kubeconfig holds it (base64) and the
    lines of the PEM key, from the embedded data or the file kubelet.conf names."""
    import yaml  # the project's virtualenv has it

    doc = yaml.safe_load(labmod.ssh(node, "cat /etc/kubernetes/kubelet.conf").stdout)
    context = next(c["context"] for c in doc["contexts"] if c["name"] == doc["current-context"])
    user = next(u["user"] for u in doc["users"] if u["name"] == context["user"])
    if user.get("client-key-data"):
        data = user["client-key-data"]
        pem = base64.b64decode(data).decode()
        texts = [data[:60]]
    else:
        pem = labmod.ssh(node, f"cat {shlex.quote(user['client-key'])}").stdout
        texts = []
    body = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    assert body, f"{node.name}: no key found in kubelet.conf"
    return texts + body


def test_no_verbosity_shows_a_nodes_client_key(installed, nodes, tmp_path):
    # The probes' certificate is found on the node (kubeconfig_client_cert): -vvv shows every module argument
    # and result, and none holds a key. Negative control: the step as it was, searched the same way, shows them.
    keys = {name: client_key_texts(n) for name, n in nodes.items()}

    def leaked(output: str) -> list[str]:
        return sorted(name for name, texts in keys.items() if any(text in output for text in texts))

    step, before = tmp_path / "client.yml", tmp_path / "client_before.yml"
    step.write_text(CLIENT_STEP)
    before.write_text(CLIENT_STEP_BEFORE)
    run = run_playbook(step, "-vvv")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert not re.search(r"changed=[1-9]", run.stdout), run.stdout[-3000:]  # the install wrote what is needed
    assert "cert_file" in run.stdout  # the -vvv output does show the module's result
    assert leaked(run.stdout + run.stderr) == []
    control = run_playbook(before, "-vvv")
    assert control.returncode == 0, control.stdout[-4000:] + control.stderr[-2000:]
    assert leaked(control.stdout + control.stderr) == sorted(keys)


def apiserver_pids(masters) -> dict[str, str]:
    return {m.name: labmod.apiserver_pid(m) for m in masters}


def test_certificate_rotation_under_load_through_the_vip_fails_nothing(installed, nodes, masters):
    """A new name in every apiserver certificate, one master at a time, while w1 (IPVS) and w2 (haproxy) send a
    new request through their VIP every 100 ms. kube-apiserver loads the new file by itself: the same processes
    serve it. (`make bench` also measures the rotation with a systemd restart of each apiserver.)"""
    name = "kubeha-rotation.lab"
    before = apiserver_pids(masters)
    variables = {"apiserver_cert_sans_extra": [name]}
    play = FILES / "apiserver_cert_sans_play.yml"
    run, load = under_load([nodes["w1"], nodes["w2"]], lambda: run_playbook(play, variables=variables, timeout=900))
    print(f"\ncertificate rotation under load: {json.dumps(load)}")
    assert run.returncode == 0, run.stdout[-4000:]
    assert [m.name for m in masters if not serves_name(m, name)] == []
    assert apiserver_pids(masters) == before
    assert {n: c["failed"] for n, c in load.items()} == {"w1": 0, "w2": 0}, load


@pytest.mark.parametrize("kind", ["ipvs", "haproxy"])
def test_a_master_killed_under_load(installed, nodes, masters, kind):
    node = next(n for n in nodes.values() if n.role == "worker" and n.has_ipvs == (kind == "ipvs"))
    victim = masters[1]
    result = drill(node, lambda: kill_apiserver(victim))
    print(f"\n{kind} on {node.name}, SIGKILL of {victim.name}'s apiserver: {json.dumps(result)}")
    labmod.wait_for(f"apiserver on {victim.name} back", lambda: labmod.readyz(victim.addr4), 120)
    assert result["requests"] >= 60
    # A request in flight on the victim while it died fails through any proxy: the one running at the signal,
    # and one the dying process's socket took (its window, about 80 ms, is under the load's 100 ms interval).
    assert result["event_lasted_s"] < 0.5 and result["failed_in_flight"] <= 2, result
    if kind == "haproxy":
        # haproxy retries another server on a refused connect: no request sent after the victim died fails.
        assert result["failed"] == 0, result
    else:
        assert result["last_failure_s"] is None or result["last_failure_s"] <= 1.5, result


def worker(nodes, kind: str):
    return next(n for n in nodes.values() if n.role == "worker" and n.has_ipvs == (kind == "ipvs"))


@pytest.mark.parametrize("kind", ["ipvs", "haproxy"])
def test_guard_restart_under_load_fails_nothing(installed, nodes, kind):
    # The data path is the kernel's (or haproxy's): restarting the guard must not cost a single request.
    node = worker(nodes, kind)
    result = drill(node, lambda: labmod.ssh(node, "systemctl restart kubeha-apiserver-guard"), seconds=8)
    print(f"\n{kind} on {node.name}, guard restarted: {json.dumps(result)}")
    assert result["requests"] >= 40 and result["failed"] == 0, result
    assert labmod.ssh(node, "systemctl is-active kubeha-apiserver-guard").stdout.strip() == "active"


GUARD_PID = "systemctl show -p MainPID --value kubeha-apiserver-guard"
WEDGE_S = 30  # the unit's WatchdogSec (15) + TimeoutAbortSec (5) + a restart, with margin
# Capability bits (linux/capability.h): the guard keeps NET_ADMIN (12) and NET_RAW (13); haproxy's master SETGID (6),
# SETUID (7), NET_BIND_SERVICE (10) and SYS_CHROOT (18).
GUARD_CAPS = (1 << 12) | (1 << 13)
HAPROXY_CAPS = (1 << 6) | (1 << 7) | (1 << 10) | (1 << 18)
PROBE = "/usr/local/kubeha-sandbox-probe"


def sandbox_of(node, unit: str) -> dict:
    """The unit's main process: its capability bounding set, no_new_privs, and whether it can write under /usr."""
    script = (
        f"pid=$(systemctl show -p MainPID --value {unit}); "
        'grep -E "^(CapBnd|NoNewPrivs):" /proc/$pid/status; '
        f"if nsenter -t $pid -m -- touch {PROBE} 2>/dev/null; then echo writes=yes; rm -f {PROBE}; "
        "else echo writes=no; fi"
    )
    lines = labmod.ssh(node, script).stdout.splitlines()
    found = {k.strip(): v.strip() for k, v in (line.replace(":", "=", 1).split("=", 1) for line in lines)}
    return {"caps": int(found["CapBnd"], 16), "no_new_privs": found["NoNewPrivs"] == "1", "writes": found["writes"]}


def test_the_guard_and_haproxy_run_sandboxed(installed, nodes):
    # Root, but bounded: only the capabilities each needs, no privilege gained by exec, the file system read-only
    # outside their own directories (seen from inside the process's mount namespace). Negative control: the same
    # write from the node's own namespace succeeds (the probe can tell). The drills in this file run with it.
    for kind in ("ipvs", "haproxy"):
        node = worker(nodes, kind)
        guard = sandbox_of(node, "kubeha-apiserver-guard")
        assert guard == {"caps": GUARD_CAPS, "no_new_privs": True, "writes": "no"}, (node.name, guard)
        if kind == "haproxy":
            proxy = sandbox_of(node, "kubeha-apiserver-haproxy")
            assert proxy == {"caps": HAPROXY_CAPS, "no_new_privs": True, "writes": "no"}, (node.name, proxy)
        mine = labmod.ssh(node, f"touch {PROBE} && rm {PROBE} && echo writes=yes").stdout.strip()
        assert mine == "writes=yes", (node.name, mine)


NO_WATCHDOG = "/etc/systemd/system/kubeha-apiserver-guard.service.d/no-watchdog.conf"


def test_a_wedged_guard_is_restarted_by_systemd_and_the_data_path_stays(installed, nodes):
    # SIGSTOP: the process is there, its rounds stop. Its last WATCHDOG=1 ages out, systemd aborts it (and, since a
    # stopped process ignores that, kills it) and starts a new one; haproxy keeps serving all along.
    node = worker(nodes, "haproxy")
    pid = labmod.ssh(node, GUARD_PID).stdout.strip()
    result = drill(node, lambda: labmod.ssh(node, f"kill -STOP {pid}"), seconds=WEDGE_S)
    print(f"\nguard wedged on {node.name}: {json.dumps(result)}")
    assert result["requests"] >= 100 and result["failed"] == 0, result
    new = labmod.ssh(node, GUARD_PID).stdout.strip()
    assert new not in ("", "0", pid)
    assert labmod.ssh(node, "systemctl is-active kubeha-apiserver-guard").stdout.strip() == "active"
    journal = labmod.ssh(node, "journalctl -u kubeha-apiserver-guard --since '-2min' --no-pager").stdout
    assert "watchdog timeout" in journal.lower(), journal[-2000:]


def test_negative_control_without_the_watchdog_a_wedged_guard_stays_wedged(installed, nodes):
    node = worker(nodes, "haproxy")
    labmod.ssh(node, f"mkdir -p {Path(NO_WATCHDOG).parent} && printf '[Service]\\nWatchdogSec=0\\n' > {NO_WATCHDOG}")
    try:
        labmod.ssh(node, "systemctl daemon-reload && systemctl restart kubeha-apiserver-guard")
        pid = labmod.ssh(node, GUARD_PID).stdout.strip()
        labmod.ssh(node, f"kill -STOP {pid}")
        time.sleep(WEDGE_S)
        assert labmod.ssh(node, GUARD_PID).stdout.strip() == pid  # nobody noticed
        assert labmod.ssh(node, f"ps -o stat= -p {pid}").stdout.strip().startswith("T")
    finally:
        labmod.ssh(node, f"rm -f {NO_WATCHDOG} && systemctl daemon-reload && systemctl restart kubeha-apiserver-guard")
    assert labmod.ssh(node, "systemctl is-active kubeha-apiserver-guard").stdout.strip() == "active"


@pytest.mark.parametrize("kind", ["ipvs", "haproxy"])
def test_a_master_black_holed_under_load(installed, nodes, masters, kind):
    # Packets to the victim's apiserver port are dropped in its namespace: no refusal, only silence.
    node, victim = worker(nodes, kind), masters[2]
    try:
        result = drill(node, lambda: labmod.ssh(victim, DROP_6443), seconds=12)
    finally:
        labmod.ssh(victim, UNDROP_6443, check=False)
    print(f"\n{kind} on {node.name}, {victim.name} black-holed: {json.dumps(result)}")
    assert result["requests"] >= 30
    # Target: from 2 s after the event every new request succeeds, in under 1 s. The guard takes the host down
    # after `fall` (2) unanswered TCP connects of 0.5 s; haproxy after 2 failed real connects (observe layer4).
    assert result["last_failure_s"] is None or result["last_failure_s"] < 2.0, result
    assert result["slowest_after_settle_s"] < 1.0, result


def test_negative_control_without_the_connect_check_a_black_hole_outlasts_the_target(installed, nodes, masters):
    # The same drill on the IPVS worker with the guard's fast TCP check switched off (SIGHUP reload): only
    # the 1 s probes with fall 2 remain, and requests keep failing (or hanging on an unanswered SYN for 1 s and
    # more) past the 2 s target. Whether a request meets the black hole in that window is the round robin's
    # turn (the load is sequential and a hung request holds it 2 s): about 1 drill in 5 misses it, so up to
    # three drills run and one must miss the target (all three pass it by luck about 1 time in 125).
    node, victim = worker(nodes, "ipvs"), masters[2]
    config = "/etc/kubeha-apiserver/guard.json"
    switch_off = (
        "import json,sys; p=sys.argv[1]; c=json.load(open(p)); c['fast_check_interval_s']=0; json.dump(c,open(p,'w'))"
    )
    edit = f"cp -p {config} {config}.drill && python3 -c {shlex.quote(switch_off)} {config}"
    edit += " && systemctl reload kubeha-apiserver-guard"
    labmod.ssh(node, edit)
    results = []
    try:
        time.sleep(2)  # the reload is asynchronous: let one round run with the new config
        for _attempt in range(3):
            try:
                results.append(drill(node, lambda: labmod.ssh(victim, DROP_6443), seconds=12))
            finally:
                labmod.ssh(victim, UNDROP_6443, check=False)
            print(
                f"\nipvs on {node.name} without the connect check, {victim.name} black-holed: {json.dumps(results[-1])}"
            )
            if missed_the_target(results[-1]):
                break
            time.sleep(5)  # the guard takes the victim back (rise 2) before the next drill
    finally:
        labmod.ssh(node, f"mv {config}.drill {config} && systemctl reload kubeha-apiserver-guard")
    assert missed_the_target(results[-1]), results


def missed_the_target(result: dict) -> bool:
    """The black-hole target: no failure from 2 s after the event, and every request from then on under 1 s."""
    return (result["last_failure_s"] or 0) >= 2.0 or result["slowest_after_settle_s"] >= 1.0


def spread(node, count: int = 30) -> dict[str, int]:
    """The masters that answer N new connections through the node's VIP, by name."""
    script = (FILES / "vip_spread.py").read_text()
    masters = ",".join(raw["name"] for raw in labmod.load_state()["nodes"] if raw["role"] == "control-plane")
    cmd = f"python3 -c {shlex.quote(script)} {VIP4} {PORT} /etc/kubernetes/pki/ca.crt {count} {masters}"
    return json.loads(labmod.ssh(node, cmd).stdout)


def apiservers(masters, action: str) -> None:
    """Stop or start kube-apiserver on the given masters at once (one SSH session each, in parallel)."""
    procs = [subprocess.Popen(labmod.ssh_argv(m, labmod.apiserver_command(action))) for m in masters]
    for proc in procs:
        assert proc.wait(timeout=180) == 0


@pytest.mark.parametrize("kind", ["ipvs", "haproxy"])
def test_all_masters_but_one_down_then_they_return(installed, nodes, masters, kind):
    # Two of three apiservers stopped under load (etcd keeps its quorum): the node keeps answering through the
    # last one; when they return, the node uses them again within rise (2) probe rounds of their being ready.
    node, stopped, last = worker(nodes, kind), masters[:2], masters[2]
    try:
        result = drill(node, lambda: apiservers(stopped, "stop"), seconds=10)
        print(f"\n{kind} on {node.name}, {', '.join(m.name for m in stopped)} stopped: {json.dumps(result)}")
        assert result["requests"] >= 30
        # A stopping apiserver first answers 500 to /readyz with its listener still open (CI saw it 2026-12-07),
        # which only the probe rounds see: fall 2 x interval 1 s, a probe's timeout (1 s) and the round under way
        # (1 s). That bound, not the fast check's figure: a loaded 2-core CI machine slows the emulated node's guard
        # (make bench measures the figures themselves, side by side).
        assert result["last_failure_s"] is None or result["last_failure_s"] <= 4.0, result
        assert spread(node, 12) == {last.name: 12}
    finally:
        apiservers(stopped, "start")
    for m in stopped:
        labmod.wait_for(f"{m.name}'s apiserver ready", lambda m=m: labmod.readyz(m.addr4), 180)
    ready_at = time.monotonic()
    labmod.wait_for(
        f"{node.name} uses every master again", lambda: set(spread(node, 9)) == {m.name for m in masters}, 30
    )
    back_after = time.monotonic() - ready_at
    print(f"{kind} on {node.name}: every master answers through the VIP {back_after:.1f} s after the last was ready")
    # rise 2 x 1 s and a round, plus this poll's own SSH session and 9 connections (seconds on the emulated node
    # of a loaded machine): a bound on the guard's doing, not the figure (make bench measures that).
    assert back_after <= 10.0


def test_kube_proxy_restart_under_load_fails_nothing(installed, nodes):
    # kube-proxy (IPVS mode) restarted while traffic flows: the VIP is excluded, its service stays untouched.
    # The load lasts until the new kube-proxy has synced its rules (its unit restarted, or its pod replaced).
    node = worker(nodes, "ipvs")
    result = drill(node, lambda: labmod.restart_kube_proxy(node), seconds=50)
    print(f"\nipvs on {node.name}, kube-proxy restarted: {json.dumps(result)}")
    assert result["requests"] >= 40 and result["failed"] == 0, result
    assert f"{VIP4}:{PORT}" in labmod.ssh(node, "ipvsadm -Ln").stdout


KUBELET_STAND_IN = """\
[Unit]
Description=kubelet stand-in for the reboot drill: records the VIP's IPVS service as kubelet would find it
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={record}
[Install]
WantedBy=multi-user.target
"""
# The IPVS table once a boot (/run is new at each boot), as a unit starting then finds it.
RECORD = (
    "/bin/sh -c 'test -e /run/kubeha-drill-{name}.txt || "
    "ipvsadm -Ln -t {vip}:{port} >/run/kubeha-drill-{name}.txt 2>&1; true'"
)
# On the kubeadm flavour the real kubelet records it, before its first start of the boot.
KUBELET_DROP_IN = "[Service]\nExecStartPre={record}\n"


def reboot_drill_units() -> tuple[dict[str, str], list[str]]:
    """The drill's files under /etc/systemd/system, and the units to enable."""
    record = {name: RECORD.format(vip=VIP4, port=PORT, name=name) for name in ("kubelet", "early")}
    early = KUBELET_STAND_IN.format(record=record["early"]).replace(
        "[Service]", "Before=kubeha-apiserver-guard.service\n[Service]"
    )
    files = {"kubeha-drill-early.service": early}
    if labmod.state_flavour() == "kubeadm":
        files["kubelet.service.d/90-kubeha-drill.conf"] = KUBELET_DROP_IN.format(record=record["kubelet"])
        return files, ["kubeha-drill-early.service"]
    files["kubelet.service"] = KUBELET_STAND_IN.format(record=record["kubelet"])
    return files, ["kubelet.service", "kubeha-drill-early.service"]


def test_reboot_restores_the_rules_before_kubelet_starts(installed, nodes, masters):
    # w1 (qemu, real kernel) reboots. kubelet records the IPVS table when it starts (the real one on the kubeadm
    # flavour, a stand-in unit named kubelet.service on the binary one): the guard (Before=kubelet.service) must
    # have restored the VIP's service from its state file by then. Negative control: the same recorder ordered
    # before the guard finds no service (nothing else restores it).
    node = worker(nodes, "ipvs")
    files, units = reboot_drill_units()
    install = " && ".join(
        f"mkdir -p $(dirname /etc/systemd/system/{path}) && printf %s {shlex.quote(text)} > /etc/systemd/system/{path}"
        for path, text in files.items()
    )
    labmod.ssh(node, f"{install} && systemctl daemon-reload && systemctl enable -q {' '.join(units)}")
    try:
        boot_id = labmod.ssh(node, "cat /proc/sys/kernel/random/boot_id").stdout.strip()
        rebooted_at = time.time()
        labmod.ssh(node, "systemctl reboot", check=False, timeout=30)
        started = time.monotonic()

        def rebooted() -> bool:
            probe = labmod.ssh(node, "cat /proc/sys/kernel/random/boot_id", check=False, timeout=20)
            return probe.returncode == 0 and probe.stdout.strip() not in ("", boot_id)

        labmod.wait_for(f"{node.name} back after its reboot", rebooted, 600, interval=5)
        print(f"\n{node.name} rebooted and reachable over SSH in {time.monotonic() - started:.0f} s")
        labmod.wait_for("the recorders ran", lambda: labmod.ssh(
            node, "test -e /run/kubeha-drill-kubelet.txt -a -e /run/kubeha-drill-early.txt", check=False
        ).returncode == 0, 300, interval=5)  # fmt: skip
        seen_by_kubelet = labmod.ssh(node, "cat /run/kubeha-drill-kubelet.txt").stdout
        seen_early = labmod.ssh(node, "cat /run/kubeha-drill-early.txt").stdout
        order = labmod.ssh(node, "systemd-analyze critical-chain kubelet.service --no-pager", check=False).stdout
        print(f"kubelet saw:\n{seen_by_kubelet}\nbefore the guard:\n{seen_early}\n{order}")
        for m in masters:
            assert f"-> {m.addr4}:6443" in seen_by_kubelet, seen_by_kubelet
        assert f"{VIP4}:{PORT}" not in seen_early and "->" not in seen_early, seen_early
        labmod.wait_for(
            "w1 answers through its VIP", lambda: sum(spread(node, 3).get(m.name, 0) for m in masters) == 3, 120
        )
        if labmod.state_flavour() == "kubeadm":
            labmod.wait_for(
                f"{node.name} Ready again", lambda: labmod.node_ready_since(node.name, rebooted_at), 300, interval=5
            )
            print(f"{node.name} Ready {time.monotonic() - started:.0f} s after its reboot began")
    finally:
        paths = " ".join(f"/etc/systemd/system/{path}" for path in files)
        # Stopped too: a oneshot left active would stay loaded as "not-found" and look like a running kubelet.
        cleanup = f"systemctl disable -q --now {' '.join(units)}; rm -f {paths}; systemctl daemon-reload"
        labmod.ssh(node, cleanup, check=False)


def test_reset_removes_everything_then_site_restores(installed, nodes, masters):
    # Last in this file: reset.yml undoes site.yml on every node and in the cluster, then site.yml again.
    reset = playbook("reset")
    assert reset.returncode == 0, reset.stdout[-6000:]
    # As kubeadm wrote them when the lab came up, byte for byte.
    kube_proxy = json.loads(labmod.kubectl("get", "-n", "kube-system", "cm", "kube-proxy", "-o", "json").stdout)
    pristine = json.loads(labmod.PRISTINE_KUBE_PROXY.read_text())
    assert kube_proxy["data"] == pristine["data"]
    info = json.loads(labmod.kubectl("get", "-n", "kube-public", "cm", "cluster-info", "-o", "json").stdout)
    assert info["data"]["kubeconfig"] == json.loads(labmod.PRISTINE_CLUSTER_INFO.read_text())["data"]["kubeconfig"]
    assert [m.name for m in masters if serves_name(m)] == []
    for node in nodes.values():
        pristine = labmod.pristine_kubelet_conf(node)
        assert labmod.ssh(node, "cat /etc/kubernetes/kubelet.conf").stdout == pristine, node.name

    for node in nodes.values():
        probe = (
            "systemctl list-unit-files 'kubeha-apiserver*' --no-legend; "
            "ls -d /opt/kubeha-apiserver /etc/kubeha-apiserver /var/lib/kubeha-apiserver "
            "/etc/modules-load.d/kubeha-apiserver.conf 2>/dev/null; "
            f"ip -o addr show | grep -F {VIP4}; ip -o link show kha0 2>/dev/null; "
            "nft list table inet kubeha_apiserver 2>/dev/null"
        )
        leftovers = labmod.ssh(node, probe, check=False).stdout
        assert leftovers.strip() == "", (node.name, leftovers)
        if node.has_ipvs:
            assert f"{VIP4}:{PORT}" not in labmod.ssh(node, "ipvsadm -Ln").stdout
    # site.yml again, from nothing, as a kubespray user would run it: the lab's hosts in the README's kubespray
    # inventory layout (examples/inventory/kubespray, its group_vars included, the lab's mirror as the wheelhouse).
    with tempfile.TemporaryDirectory() as tmp:
        again = playbook("site", inventory_file=example_inventory(Path(tmp), "kubespray"))
    assert again.returncode == 0, again.stdout[-6000:]
    layout_masters = f"kube_control_plane: {', '.join(m.name for m in masters)};"
    assert layout_masters in again.stdout, "the kubespray layout's masters were not found"
