# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The lab's ssh() (tests/lab/lab_nodes.py) tries again a connection that ssh could not open, a bounded number of
times, and never a command that ran; the lab's ansible-playbook runs (tests/lab/scenarios.py run_playbook) ask
Ansible's ssh connection for the same. subprocess.run is replaced by a fake: no node, no network."""

from __future__ import annotations

import subprocess

import lab_nodes
import pytest
import scenarios
from lab_core import Node

W1 = Node("w1", "qemu", "worker", 21)
BANNER = "Connection timed out during banner exchange\nConnection to 10.88.0.21 port 22 timed out\n"


def done(returncode: int, stdout: str = "", stderr: str = "") -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess(["ssh"], returncode, stdout, stderr)


class FakeRun:
    """subprocess.run answering with the given results (or raising the given exceptions) in turn; pauses recorded."""

    def __init__(self, monkeypatch, *answers) -> None:
        self.answers, self.argvs, self.pauses = list(answers), [], []
        monkeypatch.setattr(lab_nodes, "ssh_argv", lambda node, *cmd: ["ssh", node.name, *cmd])
        monkeypatch.setattr(lab_nodes.subprocess, "run", self)
        monkeypatch.setattr(lab_nodes.time, "sleep", self.pauses.append)

    def __call__(self, argv, **kwargs):
        self.argvs.append(argv)
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def test_a_banner_exchange_timeout_is_tried_again_and_said_on_stderr(monkeypatch, capsys):
    fake = FakeRun(monkeypatch, done(255, stderr=BANNER), done(0, stdout="ok\n"))
    res = lab_nodes.ssh(W1, "date")
    assert (res.returncode, res.stdout) == (0, "ok\n")
    assert fake.argvs == [["ssh", "w1", "date"]] * 2 and fake.pauses == [1]
    err = capsys.readouterr().err
    assert "w1: ssh could not connect (Connection timed out during banner exchange); attempt 2 of 3" in err


@pytest.mark.parametrize(
    "stderr",
    [
        "kex_exchange_identification: read: Connection reset by peer\nConnection reset by 10.88.0.21 port 22\n",
        "kex_exchange_identification: Connection closed by remote host\nConnection closed by 10.88.0.21 port 22\n",
    ],
)
def test_a_connection_a_busy_sshd_did_not_complete_is_tried_again(monkeypatch, stderr):
    fake = FakeRun(monkeypatch, done(255, stderr=stderr), done(0))
    assert lab_nodes.ssh(W1, "true").returncode == 0
    assert len(fake.argvs) == 2


@pytest.mark.parametrize(
    ("returncode", "stderr"),
    [
        (1, "curl: (7) Failed to connect to 10.88.0.11 port 6443: Connection refused\n"),  # the command's own
        (255, "the command itself exited 255\n"),
        (255, ""),
        (255, "Connection to 10.88.0.21 closed by remote host.\n"),  # a session that ran it (a reboot)
        (255, "ssh: connect to host 10.88.0.21 port 22: Connection refused\n"),  # the node is down: a reboot
        (255, "ssh: connect to host 10.88.0.21 port 22: Connection timed out\n"),  # drill polls for exactly that
        (255, "Read from remote host 10.88.0.21: Connection reset by peer\n"),
        (255, "client_loop: send disconnect: Connection reset by peer\n"),
    ],
)
def test_a_command_that_ran_and_failed_is_never_run_again(monkeypatch, capsys, returncode, stderr):
    fake = FakeRun(monkeypatch, done(returncode, stderr=stderr), done(0))
    with pytest.raises(RuntimeError, match=rf"w1: 'systemctl reboot' failed \({returncode}\)"):
        lab_nodes.ssh(W1, "systemctl reboot")
    assert len(fake.argvs) == 1 and fake.pauses == []
    assert "could not connect" not in capsys.readouterr().err


def test_a_command_that_outlives_its_timeout_is_not_run_again(monkeypatch):
    fake = FakeRun(monkeypatch, subprocess.TimeoutExpired(["ssh"], 120), done(0))
    with pytest.raises(subprocess.TimeoutExpired):
        lab_nodes.ssh(W1, "sleep 1000")
    assert len(fake.argvs) == 1


def test_three_attempts_at_most_then_the_error(monkeypatch, capsys):
    fake = FakeRun(monkeypatch, *[done(255, stderr=BANNER)] * 4)
    with pytest.raises(RuntimeError, match=r"w1: 'date' failed \(255\) \(3 attempts\): Connection timed out during"):
        lab_nodes.ssh(W1, "date")
    assert len(fake.argvs) == 3 and fake.pauses == [1, 2]
    assert capsys.readouterr().err.count("ssh could not connect") == 2
    # Without check, the last attempt's result comes back, after the same 3 attempts.
    fake = FakeRun(monkeypatch, *[done(255, stderr=BANNER)] * 4)
    assert lab_nodes.ssh(W1, "date", check=False).returncode == 255
    assert len(fake.argvs) == 3


def test_the_lab_playbooks_ask_ansible_to_retry_its_connections_unless_told_otherwise(monkeypatch, tmp_path):
    envs = []
    monkeypatch.setattr(scenarios, "collections_path", lambda: tmp_path)
    monkeypatch.setattr(scenarios.subprocess, "run", lambda argv, env, **kwargs: envs.append(env) or done(0))
    monkeypatch.delenv("ANSIBLE_SSH_RETRIES", raising=False)
    scenarios.playbook("site")
    assert envs[-1]["ANSIBLE_SSH_RETRIES"] == "3"
    monkeypatch.setenv("ANSIBLE_SSH_RETRIES", "5")
    scenarios.run_playbook(tmp_path / "play.yml")
    assert envs[-1]["ANSIBLE_SSH_RETRIES"] == "5"
