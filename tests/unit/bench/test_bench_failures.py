# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""How `make bench` (tests/bench/bench.py) survives a scenario that fails: the failed tasks of a playbook named from
its output, a failed scenario kept in its place and shown as FAILED, the JSON written after every scenario, and run()
going on to the next scenario (the lab's calls replaced by fakes: no lab, no network)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import bench
import pytest
from lab_core import Node

EVENT = 1_700_000_100.0
# ansible-playbook's output (ansible-core 2.19, default callback) for a run where w1's sshd did not answer, an ignored
# failure on cp1, a loop item failing on cp2, and a task failing on cp1.
PLAYBOOK_OUTPUT = """\

PLAY [Local proxy on every node] ***********************************************

TASK [Gathering Facts] *********************************************************
[ERROR]: Task failed: Failed to connect to the host via ssh: Connection timed out during banner exchange
Origin: playbooks/site.yml:2:3

fatal: [w1]: UNREACHABLE! => {"changed": false, "msg": "Task failed: Failed to connect to the host via ssh: \
Connection timed out during banner exchange\\r\\nConnection to UNKNOWN port 65535 timed out", "unreachable": true}
ok: [cp1]
ok: [cp2]

TASK [kubeha.apiserver.local_proxy : Find a kube-proxy systemd unit] ***********
[ERROR]: Task failed: Module failed: non-zero return code
fatal: [cp1]: FAILED! => {"changed": true, "cmd": ["systemctl", "cat", "kube-proxy.service"], "msg": \
"non-zero return code", "rc": 1, "stderr": "No files found for kube-proxy.service.", "stdout": ""}
...ignoring

TASK [kubeha.apiserver.local_proxy : Load the kernel modules] ******************
changed: [cp1] => (item=ip_vs)
changed: [cp2] => (item=ip_vs)
ok: [cp1] => (item=ip_vs_wrr)
[ERROR]: Task failed: Module failed: modprobe: FATAL: Module ip_vs_wrr not found
failed: [cp2] (item=ip_vs_wrr) => {"ansible_loop_var": "item", "changed": false, "item": "ip_vs_wrr", "msg": \
"modprobe: FATAL: Module ip_vs_wrr not found", "name": "ip_vs_wrr"}

TASK [kubeha.apiserver.local_proxy : Install the guard] ************************
[ERROR]: Task failed: Module failed: non-zero return code
Origin: roles/local_proxy/tasks/present.yml:52:3

fatal: [cp1]: FAILED! => {"changed": true, "cmd": ["sh", "-c", "install-guard"], "delta": "0:00:00.003549", \
"msg": "non-zero return code", "rc": 3, "stderr": "boom: no space left on device", "stderr_lines": \
["boom: no space left on device"], "stdout": "", "stdout_lines": []}

PLAY RECAP *********************************************************************
cp1                        : ok=1    changed=1    unreachable=0    failed=1    skipped=0    rescued=0    ignored=1
cp2                        : ok=2    changed=1    unreachable=0    failed=1    skipped=0    rescued=0    ignored=0
w1                         : ok=0    changed=0    unreachable=1    failed=0    skipped=0    rescued=0    ignored=0
"""


def test_the_failed_tasks_are_named_with_host_task_and_message():
    lines = bench.failed_tasks(PLAYBOOK_OUTPUT).splitlines()
    assert lines == [
        "w1: TASK [Gathering Facts] UNREACHABLE! Task failed: Failed to connect to the host via ssh: Connection timed"
        " out during banner exchange Connection to UNKNOWN port 65535 timed out",
        "cp2 (item=ip_vs_wrr): TASK [kubeha.apiserver.local_proxy : Load the kernel modules] modprobe: FATAL:"
        " Module ip_vs_wrr not found",
        "cp1: TASK [kubeha.apiserver.local_proxy : Install the guard] FAILED! non-zero return code; rc 3;"
        " stderr: boom: no space left on device",
    ]
    # Negative control: the ignored failure (followed by "...ignoring") is not among them.
    assert "kube-proxy" not in bench.failed_tasks(PLAYBOOK_OUTPUT)


def test_a_run_without_failed_tasks_names_none_and_its_failure_shows_the_end_of_its_output():
    output = "ERROR! the playbook: playbooks/nope.yml could not be found\n"
    assert bench.failed_tasks(output) == ""
    said = bench.playbook_failure("playbooks/nope.yml", subprocess.CompletedProcess([], 1, "", output))
    assert said.startswith("playbooks/nope.yml failed (exit status 1):")
    assert "could not be found" in said


def test_a_playbook_failure_says_its_failed_tasks_rather_than_the_tail_of_its_output():
    said = bench.playbook_failure("playbooks/site.yml", subprocess.CompletedProcess([], 2, PLAYBOOK_OUTPUT, ""))
    assert "cp1: TASK [kubeha.apiserver.local_proxy : Install the guard] FAILED!" in said
    assert "PLAY RECAP" not in said  # not the raw tail


def test_an_error_is_kept_on_one_line_with_its_head_and_tail():
    exc = RuntimeError("w1: 'python3 -c '" + "x = 1\n" * 500 + "' failed (255): Connection timed out during banner")
    error = bench.one_line(exc)
    assert "\n" not in error and len(error) <= bench.ERROR_CHARS
    assert error.startswith("RuntimeError: w1: 'python3 -c") and error.endswith("Connection timed out during banner")


def outcome(failed_after: tuple[float, ...] = ()) -> dict:
    """A failover outcome as bench.run() records it (summarize() of a load script's output, victim, meets)."""
    steady = [[EVENT - 2.0 + i * 0.1, True, "", 0.01] for i in range(60)]
    steady += [[EVENT + t, False, "ConnectionRefusedError: refused", 0.001] for t in failed_after]
    pinned = {
        "pinned": True,
        "backends": ["cp2"],
        "closed_at": EVENT + 0.2,
        "error": "",
        "answered_again_at": EVENT + 0.3,
    }
    result = bench.summarize({"start": EVENT - 2.0, "steady": steady, "long_lived": [pinned]}, EVENT)
    result["victim"] = "cp2"
    result["meets"] = bench.meets("ipvs", "killed", result)
    return result


def test_the_table_prints_a_failed_failover_as_failed_and_the_others_as_ever():
    error = "RuntimeError: w2: 'python3 -c ...' failed (255): Connection timed out during banner exchange"
    results = {
        "when": "2026-12-01T10:00:00Z",
        "latency": {},
        "failover": {
            "killed": {
                "ipvs": outcome(failed_after=(0.1,)),
                "haproxy": {"failed": True, "error": error},
                "nginx": outcome(),
            },
        },
    }
    rows = {line.split()[1]: line for line in bench.table(results).splitlines() if line.startswith("  killed ")}
    assert rows["haproxy"].endswith(f"FAILED: {error}")
    # The others still print their figures; the ipvs one failed 1 request (its "failed" is a count, not a failure).
    assert "FAILED" not in rows["ipvs"] and "FAILED" not in rows["nginx"]
    assert rows["ipvs"].split()[3:5] == ["1", "0"]
    assert bench.failures(results) == ["failover killed haproxy"]
    assert bench.table(results).splitlines()[-1] == "FAILED (1): failover killed haproxy"


def test_failed_latency_rotation_and_guard_sections_print_as_failed():
    results = {"latency": {"ipvs": {"failed": True, "error": "E1"}}, "failover": {},
               "rotation": {"auto": {"failed": True, "error": "E2"}}, "guard": {"failed": True, "error": "E3"},
               "errors": [{"step": "nginx removed", "error": "E4"}]}  # fmt: skip
    text = bench.table(results)
    assert "  ipvs      FAILED: E1" in text and "  auto     FAILED: E2" in text and "  FAILED: E3" in text
    assert "  nginx removed: E4" in text
    assert bench.failures(results) == ["latency ipvs", "rotation auto", "guard", "nginx removed"]
    assert bench.failures({"latency": {}, "failover": {"killed": {"ipvs": outcome((0.1,))}}}) == []


def test_the_json_is_replaced_whole_and_nothing_is_left_beside_it(tmp_path):
    path = tmp_path / "bench" / "bench.json"
    bench.write_json(path, {"failover": {"killed": {"ipvs": {"requests": 1}}}})
    bench.write_json(path, {"failover": {}})
    assert json.loads(path.read_text()) == {"failover": {}}
    assert [p.name for p in path.parent.iterdir()] == ["bench.json"]


# ---- run() with the lab replaced --------------------------------------------------------------------------

NODES = {n.name: n for n in (Node("cp1", "nspawn", "control-plane", 11), Node("cp2", "nspawn", "control-plane", 12),
                             Node("cp3", "nspawn", "control-plane", 13), Node("w1", "qemu", "worker", 21),
                             Node("w2", "nspawn", "worker", 22))}  # fmt: skip


class FakeLab:
    """bench.run()'s calls to the lab, each recorded; `fail` maps a failover (scenario, proxy) to what it raises."""

    def __init__(self, monkeypatch, json_path: Path, fail: dict, site_rc: int = 0) -> None:
        self.calls: list[str] = []
        self.json_path, self.fail, self.seen_on_disk = json_path, fail, {}
        site = subprocess.CompletedProcess([], site_rc, PLAYBOOK_OUTPUT if site_rc else "", "")
        monkeypatch.setattr(bench, "ensure_lab", lambda: NODES)
        monkeypatch.setattr(bench, "playbook", lambda name: site)
        monkeypatch.setattr(bench, "nginx_up", lambda node, masters: self.calls.append("nginx_up"))
        monkeypatch.setattr(bench, "nginx_down", lambda node: self.calls.append("nginx_down"))
        monkeypatch.setattr(bench, "nftables_up", lambda node, masters: self.calls.append("nftables_up") or True)
        monkeypatch.setattr(bench, "nftables_down", lambda node, m, installed: self.calls.append("nftables_down"))
        monkeypatch.setattr(bench, "settle", lambda masters: self.calls.append("settle"))
        monkeypatch.setattr(bench, "wait_all_ready", lambda masters: self.calls.append("ready"))
        monkeypatch.setattr(bench, "failover", self.failover)
        monkeypatch.setattr(bench.labmod, "ssh", lambda node, cmd, check=True: self.calls.append(f"ssh {cmd}"))
        monkeypatch.setattr(bench, "rotation", lambda restart, nodes: {"seconds": 1.0, "by_node": {}})

    def failover(self, node, host, port, victim, event) -> dict:
        proxy = {("w1", 6444): "ipvs", ("w2", 6444): "haproxy", ("w2", 6446): "nginx"}[node.name, port]
        key = ("killed" if victim.name == "cp2" else "black-holed", proxy)
        self.calls.append(f"failover {' '.join(key)}")
        if self.json_path.exists():  # what a reader of the JSON sees when this scenario starts
            self.seen_on_disk[key] = json.loads(self.json_path.read_text())
        if key in self.fail:
            raise self.fail[key]
        return outcome()


def test_a_failed_failover_is_recorded_and_the_run_goes_on_with_the_json_written_after_each(tmp_path, monkeypatch):
    path = tmp_path / "bench.json"
    lab = FakeLab(monkeypatch, path, {("killed", "haproxy"): RuntimeError("w2: banner\nexchange timed out")})
    results = bench.run(10, ("failover", "rotation"), save=lambda r: bench.write_json(path, r))
    # When the failing scenario started, the one before it was already on disk, with its figures.
    assert lab.seen_on_disk[("killed", "haproxy")]["failover"]["killed"]["ipvs"]["requests"] == 60
    # The failure is in its place, on one line; every later scenario ran and is on disk too.
    on_disk = json.loads(path.read_text())
    assert on_disk["failover"]["killed"]["haproxy"] == {
        "failed": True,
        "error": "RuntimeError: w2: banner exchange timed out",
    }
    assert on_disk["failover"]["black-holed"]["nginx"]["requests"] == 60
    assert on_disk["rotation"]["systemd"] == {"seconds": 1.0, "by_node": {}}
    assert on_disk == json.loads(json.dumps(results))
    assert bench.failures(results) == ["failover killed haproxy"]
    assert lab.calls.count("ssh iptables -D INPUT -p tcp --dport 6443 -j DROP") == 3  # black-holed undone each time
    assert lab.calls[-2:] == ["nginx_down", "nftables_down"]


def test_an_interrupt_is_not_swallowed_and_the_cleanup_still_runs(tmp_path, monkeypatch):
    path = tmp_path / "bench.json"
    lab = FakeLab(monkeypatch, path, {("killed", "haproxy"): KeyboardInterrupt()})
    with pytest.raises(KeyboardInterrupt):
        bench.run(10, ("failover",), save=lambda r: bench.write_json(path, r))
    assert lab.calls[-2:] == ["nginx_down", "nftables_down"]
    assert "failover killed nginx" not in lab.calls  # nothing ran after the interrupt
    assert json.loads(path.read_text())["failover"]["killed"]["ipvs"]["requests"] == 60


def test_site_yml_failing_ends_the_run_with_its_failed_tasks(tmp_path, monkeypatch):
    lab = FakeLab(monkeypatch, tmp_path / "bench.json", {}, site_rc=2)
    with pytest.raises(SystemExit) as ended:
        bench.run(10, bench.SECTIONS)
    message = str(ended.value.code)
    assert message.startswith("playbooks/site.yml failed (exit status 2):")
    assert "cp1: TASK [kubeha.apiserver.local_proxy : Install the guard] FAILED! non-zero return code" in message
    assert "w1: TASK [Gathering Facts] UNREACHABLE!" in message
    assert lab.calls == []  # nothing measured, nothing set up


def test_main_prints_the_table_writes_the_json_and_returns_non_zero_when_a_scenario_failed(
    tmp_path, monkeypatch, capsys
):
    path = tmp_path / "out" / "bench.json"
    FakeLab(monkeypatch, path, {("black-holed", "nginx"): TimeoutError("timed out after 180 s waiting for cp3")})
    drawn = []
    monkeypatch.setattr(bench.plotmod, "write", lambda results, png: drawn.append(results) or png)
    assert bench.main(["--json", str(path), "--sections", "failover"]) == 1
    out = capsys.readouterr().out
    assert "  black-holed  nginx    FAILED: TimeoutError: timed out after 180 s waiting for cp3" in out
    assert "  black-holed  ipvs " in out and f"JSON: {path}" in out
    assert json.loads(path.read_text())["failover"]["black-holed"]["nginx"]["failed"] is True
    assert len(drawn) == 1  # the picture is drawn from the scenarios that were measured
    # Negative control: the same run without a failure returns 0.
    FakeLab(monkeypatch, path, {})
    assert bench.main(["--json", str(path), "--sections", "failover"]) == 0
