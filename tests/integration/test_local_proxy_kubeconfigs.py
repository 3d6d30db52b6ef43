"""kubeconfig_endpoint (role, playbook) and kubeconfig_server (module) on the lab: every node's kubelet.conf at the VIP.

The lab runs no kubelet: every node has /etc/kubernetes/kubelet.conf with its own client certificate and a Node
object, and the workers run kube-proxy as a systemd unit with /etc/kubernetes/kube-proxy.conf. So the restart of
kube-proxy is real, and kubelet's is tested with a stand-in `kubelet.service` on w2: a oneshot that records each
start and, when armed, breaks the VIP for local clients (an iptables REJECT), which is how the rollback is driven.

Runs in `make test-extended` (outside `make test` for time), on a new lab or one with site.yml applied: the
fixture applies site.yml through the kubeadm layout either way (a first install, or a run that changes nothing).
The tests run in file order on one module-scoped snapshot of every node's /etc/kubernetes: refusals first (nothing
may change), check mode, present, a second run, a rollback, then absent, which must give every file back byte for
byte. The fixture starts from the files as they were before any switch (site.yml applies the role too: its switch
is undone first). Its teardown runs absent once more when a file still differs (a test stopped half-way), compares
again, puts back by hand whatever differs (and fails), removes the stand-in, the REJECT rule and the backups the
test made, and switches the files again when the lab was found switched, so the lab is left as it was.
"""

from __future__ import annotations

import base64
import json
import re
import shlex
import subprocess
import tempfile
from pathlib import Path

import lab as labmod
import pytest
from conftest import run_module
from scenarios import example_inventory, playbook

MODULE = "kubeha.apiserver.kubeconfig_server"
PYTHON = "/opt/kubeha-apiserver/venv/bin/python"
VIP = "169.254.100.1"
SERVER = f"https://{VIP}:6444"
KUBELET, KUBE_PROXY = "/etc/kubernetes/kubelet.conf", "/etc/kubernetes/kube-proxy.conf"
MASTER_OWN = ("admin.conf", "controller-manager.conf", "scheduler.conf", "super-admin.conf")
BACKUP = re.compile(r"^(kubelet|kube-proxy)\.conf\.\d+\.\d{4}-\d\d-\d\d@\d\d:\d\d:\d\d~$")
ATTRS = ("mode", "uid", "gid")
STAND_IN = "w2"
STARTS = "/run/kubeha-test-kubelet.starts"
ARM = "/run/kubeha-test-kubelet.break"
REJECT = f"OUTPUT -d {VIP} -p tcp --dport 6444 -j REJECT --reject-with tcp-reset"
# A oneshot that stays "active" (RemainAfterExit) like a running kubelet; each start is a line in STARTS.
STAND_IN_UNIT = f"""[Unit]
Description=kubeha test stand-in for kubelet (records each start; breaks the VIP once when armed)
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'date +%%s.%%N >> {STARTS}; if [ -e {ARM} ]; then rm -f {ARM}; iptables -I {REJECT}; fi'
"""
FAST = ["-e", json.dumps({"kubeconfig_endpoint_retries": 3, "kubeconfig_endpoint_delay": 1})]

# What each node's /etc/kubernetes holds: {name: {"data": bytes, "mode": int, "uid": int, "gid": int}}.
LIST_FILES = r"""
import base64, json, os, stat
out = {}
for name in sorted(os.listdir('/etc/kubernetes')):
    path = os.path.join('/etc/kubernetes', name)
    info = os.lstat(path)
    if stat.S_ISREG(info.st_mode):
        with open(path, 'rb') as fh:
            out[name] = {'data': base64.b64encode(fh.read()).decode(), 'mode': stat.S_IMODE(info.st_mode),
                         'uid': info.st_uid, 'gid': info.st_gid}
print(json.dumps(out))
"""


def files(node: labmod.Node) -> dict[str, dict]:
    raw = json.loads(labmod.ssh(node, f"python3 -c {shlex.quote(LIST_FILES)}").stdout)
    return {name: entry | {"data": base64.b64decode(entry["data"])} for name, entry in raw.items()}


def snapshot(nodes: dict[str, labmod.Node]) -> dict[str, dict[str, dict]]:
    return {name: files(node) for name, node in nodes.items()}


def server_of(data: bytes) -> str:
    servers = re.findall(rb"^\s*server:\s*(\S+)\s*$", data, re.M)
    assert len(servers) == 1, data
    return servers[0].decode()


def switched(data: bytes) -> bytes:
    """The file as the role must leave it: only the server value replaced."""
    old = server_of(data).encode()
    assert data.count(old) == 1
    return data.replace(b"server: " + old, b"server: " + SERVER.encode())


def put_back(node: labmod.Node, name: str, entry: dict) -> None:
    data = base64.b64encode(entry["data"]).decode()
    path, tmp = f"/etc/kubernetes/{name}", f"/etc/kubernetes/.{name}.kubeha-test"
    owner = f"{entry['uid']}:{entry['gid']}"
    labmod.ssh(
        node,
        f"echo {data} | base64 -d > {tmp} && chmod {entry['mode']:o} {tmp} && chown {owner} {tmp} && mv {tmp} {path}",
    )


def recap(output: str) -> dict[str, dict[str, int]]:
    """The PLAY RECAP's counts of the nodes. The controller's line (localhost: the inventory check every playbook
    runs first, assertions only) must show no change and no failure, and is left out."""
    hosts = {}
    for host, counts in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", output, re.M):
        hosts[host] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counts)}
    controller = hosts.pop("localhost", None)
    assert controller is None or (controller["changed"], controller["failed"]) == (0, 0), controller
    return hosts


def endpoint(*extra: str) -> subprocess.CompletedProcess:
    return playbook("kubeconfig_endpoint", *extra)


def starts(node: labmod.Node) -> int:
    return int(labmod.ssh(node, f"cat {STARTS} 2>/dev/null | wc -l").stdout.strip())


def started_at(node: labmod.Node, unit: str) -> str:
    return labmod.ssh(node, f"systemctl show -p ActiveEnterTimestampMonotonic --value {unit}").stdout.strip()


def served_sans(master: labmod.Node) -> str:
    cmd = (f"echo | openssl s_client -connect {master.addr4}:6443 2>/dev/null "
           "| openssl x509 -noout -ext subjectAltName")  # fmt: skip
    return labmod.ssh(master, cmd, check=False).stdout


@pytest.fixture(scope="module")
def lab_files(nodes, masters):
    """Proxy and SANs in place; every node's /etc/kubernetes as it was; the stand-in kubelet on w2. Restored after."""
    initial = snapshot(nodes)
    found = {name: set(node_files) for name, node_files in initial.items()}
    found_switched = any(server_of(f["kubelet.conf"]["data"]) == SERVER for f in initial.values())
    # The VIP in the apiservers' certificates is site.yml's (the apiserver_cert_sans role), checked below.
    # As a kubeadm user would run it: the lab's hosts in the README's kubeadm inventory (examples/inventory/kubeadm:
    # groups masters and workers mapped into the collection's, its group_vars included).
    with tempfile.TemporaryDirectory() as tmp:
        site = playbook("site", inventory_file=example_inventory(Path(tmp), "kubeadm"))
    assert site.returncode == 0, site.stdout[-6000:] + site.stderr[-2000:]
    layout_masters = f"kube_control_plane: {', '.join(m.name for m in masters)};"
    assert layout_masters in site.stdout, "the kubeadm layout's masters were not found"
    missing = [m.name for m in masters if f"IP Address:{VIP}" not in served_sans(m)]
    if missing:
        pytest.fail(f"the apiservers of {', '.join(missing)} serve a certificate without {VIP} (apiserver_cert_sans)")
    if any(server_of(files(node)["kubelet.conf"]["data"]) == SERVER for node in nodes.values()):
        # A site.yml that applies this role itself: start from the files as they were before it.
        undo = endpoint("-e", "kubeconfig_endpoint_state=absent")
        assert undo.returncode == 0, undo.stdout[-6000:]
    before = snapshot(nodes)
    for name, node_files in before.items():
        assert "kubelet.conf" in node_files, name
        assert not [f for f in node_files if f.endswith(".conf.kubeha-orig")], (name, sorted(node_files))
        assert server_of(node_files["kubelet.conf"]["data"]) != SERVER, f"{name}'s kubelet.conf is switched already"
    stand_in = nodes[STAND_IN]
    assert labmod.ssh(stand_in, "systemctl cat kubelet.service", check=False).returncode != 0, "w2 runs a kubelet"
    labmod.ssh(stand_in, f"cat > /etc/systemd/system/kubelet.service <<'EOF'\n{STAND_IN_UNIT}EOF\n")
    labmod.ssh(stand_in, f"rm -f {STARTS} {ARM}; systemctl daemon-reload && systemctl start kubelet.service")
    yield before

    differ: list[str] = []
    result = None
    try:
        after = snapshot(nodes)
        if any(unbacked(after[name]) != unbacked(before[name]) for name in nodes):
            # A test stopped half-way (the suite ends with absent, which leaves the files as they were): undo it.
            result = endpoint("-e", "kubeconfig_endpoint_state=absent")
            after = snapshot(nodes)
        for name, node in nodes.items():
            for file, entry in before[name].items():
                if after[name].get(file) != entry:
                    differ.append(f"{name}:{file}")
                    put_back(node, file, entry)
            if f"{name}:kube-proxy.conf" in differ:
                labmod.ssh(node, "systemctl restart kube-proxy")
    finally:
        labmod.ssh(stand_in, f"systemctl stop kubelet.service; rm -f /etc/systemd/system/kubelet.service {STARTS} "
                             f"{ARM}; systemctl daemon-reload; while iptables -D {REJECT} 2>/dev/null; do :; done",
                   check=False)  # fmt: skip
        if found_switched:
            # The lab was found as site.yml leaves it (the files at the endpoint): leave it so again.
            again = endpoint()
            assert again.returncode == 0, again.stdout[-6000:]
        for name, node in nodes.items():
            for file in files(node):
                if file not in found[name] and (BACKUP.match(file) or file.endswith(".conf.kubeha-orig")):
                    labmod.ssh(node, f"rm -f /etc/kubernetes/{file}")
    if differ:
        assert result is not None  # only a run of absent can leave files that differ here
        pytest.fail(f"state=absent did not restore {', '.join(differ)} (put back by hand): {result.stdout[-3000:]}")


def unbacked(node_files: dict[str, dict]) -> dict[str, dict]:
    """A node's files without the role's timestamped backups."""
    return {name: entry for name, entry in node_files.items() if not BACKUP.match(name)}


def assert_unchanged(nodes, before) -> None:
    now = snapshot(nodes)
    for name in nodes:
        assert now[name] == before[name], f"{name}: /etc/kubernetes changed"


def test_the_module_verifies_before_writing(lab_files, nodes):
    """Negative controls: a port nothing serves, and a name the certificate does not carry; nothing is written."""
    for node, server, needle in [
        (nodes["w2"], f"https://{VIP}:6445", "Connection refused"),
        (nodes["cp1"], "https://127.0.0.1:6443", "certificate verify failed"),
    ]:
        result = run_module(node, MODULE, {"path": KUBELET, "server": server}, python=PYTHON)
        assert result.get("failed") is True, result
        assert result["msg"].startswith(f"verification failed: {server} did not accept an authenticated request with "
                                        f"user 'system:node:{node.name}' of {KUBELET}: "), result["msg"]  # fmt: skip
        assert needle in result["msg"] and "Traceback" not in json.dumps(result)
    assert_unchanged(nodes, lab_files)


def test_a_node_that_cannot_use_the_endpoint_stops_the_rollout_before_any_change(lab_files, nodes):
    """The first master fails its proof: it is not changed, and no other node is even started (serial)."""
    before_starts = starts(nodes[STAND_IN])
    run = endpoint("-e", f"kubeconfig_endpoint_server=https://{VIP}:6445")
    assert run.returncode != 0
    assert re.search(rf"cp1: the endpoint https://{re.escape(VIP)}:6445 does not work with this node's credentials, "
                     r"so nothing was changed on this node: verification failed: .*Connection refused", run.stdout), \
        run.stdout[-4000:]  # fmt: skip
    counts = recap(run.stdout)
    assert set(counts) == {"cp1"} and counts["cp1"]["failed"] == 1, counts
    assert starts(nodes[STAND_IN]) == before_starts
    assert_unchanged(nodes, lab_files)


def test_check_mode_proves_and_changes_nothing(lab_files, nodes):
    before_starts = starts(nodes[STAND_IN])
    run = endpoint("--check", "--diff")
    assert run.returncode == 0, run.stdout[-6000:]
    assert f"+    server: {SERVER}" in run.stdout
    key = re.search(rb"client-key-data: (\S+)", lab_files["w2"]["kubelet.conf"]["data"])
    assert key and key.group(1).decode() not in run.stdout, "the diff shows a private key"
    assert starts(nodes[STAND_IN]) == before_starts
    assert_unchanged(nodes, lab_files)


def test_present_switches_every_node_through_the_vip(lab_files, nodes):
    stand_in = nodes[STAND_IN]
    before_starts = starts(stand_in)
    workers = [n for n in nodes.values() if n.role == "worker"]
    proxy_started = {n.name: started_at(n, "kube-proxy") for n in workers}
    run = endpoint(*FAST)
    assert run.returncode == 0, run.stdout[-6000:]
    now = snapshot(nodes)
    for name, node in nodes.items():
        old, new = lab_files[name], now[name]
        names = ["kubelet.conf"] + (["kube-proxy.conf"] if "kube-proxy.conf" in old else [])
        for file in names:
            assert new[file]["data"] == switched(old[file]["data"]), f"{name}:{file}"
            assert [new[file][k] for k in ATTRS] == [old[file][k] for k in ATTRS], f"{name}:{file}"
            assert new[f"{file}.kubeha-orig"]["data"] == old[file]["data"]
            assert len([f for f in set(new) - set(old) if BACKUP.match(f) and f.startswith(file)]) == 1, sorted(new)
        for file in MASTER_OWN:
            assert new.get(file) == old.get(file), f"{name}:{file} must stay on the local apiserver"
        identity = run_module(node, MODULE, {"path": KUBELET, "server": SERVER, "verify_always": True}, python=PYTHON)
        assert not identity.get("failed") and identity["changed"] is False, identity
        assert identity["username"] == f"system:node:{name}", identity
    assert {n.name for n in workers} <= {name for name, f in lab_files.items() if "kube-proxy.conf" in f}
    for node in workers:
        assert started_at(node, "kube-proxy") != proxy_started[node.name], f"kube-proxy on {node.name} not restarted"
        labmod.wait_for(f"kube-proxy healthy on {node.name}", lambda n=node: labmod.kube_proxy_healthy(n), 60)
        proxy = run_module(node, MODULE, {"path": KUBE_PROXY, "server": SERVER, "verify_always": True}, python=PYTHON)
        assert proxy["username"] == "system:kube-proxy", proxy
    assert starts(stand_in) == before_starts + 1, "the stand-in kubelet on w2 was not restarted exactly once"


def test_second_run_changes_nothing(lab_files, nodes):
    before_starts = starts(nodes[STAND_IN])
    run = endpoint()
    assert run.returncode == 0, run.stdout[-4000:]
    counts = recap(run.stdout)
    assert {h: c["changed"] for h, c in counts.items()} == dict.fromkeys(nodes, 0), run.stdout[-4000:]
    assert starts(nodes[STAND_IN]) == before_starts


def test_a_failed_verification_after_the_restart_rolls_back(lab_files, nodes):
    """The stand-in kubelet breaks the VIP when it restarts: the role puts the backup back and fails naming w2."""
    node = nodes[STAND_IN]
    restored = run_module(node, MODULE, {"path": KUBELET, "state": "absent"}, python=PYTHON)
    assert restored["changed"] is True and files(node)["kubelet.conf"] == lab_files[STAND_IN]["kubelet.conf"]
    before_starts = starts(node)
    only_kubelet = {"kubeconfig_endpoint_kubeconfigs": [{"path": KUBELET, "unit": "kubelet.service"}]}
    labmod.ssh(node, f"touch {ARM}")
    try:
        run = endpoint("-l", STAND_IN, "-e", json.dumps(only_kubelet), *FAST)
        broken = labmod.ssh(node, f"iptables -C {REJECT}", check=False).returncode == 0
    finally:
        labmod.ssh(node, f"rm -f {ARM}; while iptables -D {REJECT} 2>/dev/null; do :; done")
    assert broken, "the stand-in did not break the VIP: the rollback was not exercised"
    assert run.returncode != 0
    step = re.escape("Verify again through the endpoint with the file's own credentials")
    expected = (
        rf"w2: {KUBELET} was rolled back from its backup {KUBELET}\.\d+\.\S+~ and kubelet\.service restarted on it, "
        rf'because \\?"{step}\\?" failed: verification failed: {re.escape(SERVER)} did not accept'
    )
    assert re.search(expected, run.stdout), run.stdout[-4000:]
    assert files(node)["kubelet.conf"] == lab_files[STAND_IN]["kubelet.conf"]
    assert starts(node) == before_starts + 2, "expected the restart and the rollback's restart"


def test_absent_restores_every_file_byte_for_byte(lab_files, nodes):
    run = endpoint("-e", "kubeconfig_endpoint_state=absent", *FAST)
    assert run.returncode == 0, run.stdout[-6000:]
    now = snapshot(nodes)
    for name in nodes:
        kept, was = unbacked(now[name]), unbacked(lab_files[name])
        assert kept == was, f"{name}: {sorted(f for f in set(kept) | set(was) if kept.get(f) != was.get(f))}"
    again = endpoint("-e", "kubeconfig_endpoint_state=absent")
    assert again.returncode == 0, again.stdout[-4000:]
    assert {h: c["changed"] for h, c in recap(again.stdout).items()} == dict.fromkeys(nodes, 0), again.stdout[-4000:]
