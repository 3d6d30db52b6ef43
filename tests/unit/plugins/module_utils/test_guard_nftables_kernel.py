# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The guard in nftables mode on the real kernel, nft, ss and conntrack (this machine's: it has nftables), in a
network namespace the test makes and deletes, with real TCP servers and clients on its loopback. Needs root, as
make test runs. Only the probes are scripted (the backends' health is the test's to set); everything the guard
does to the node is real.

Checked: every ready backend of both address families takes connections; one that goes down takes no new
connection and its established connections are closed at once (negative control: without the closing, the kept
connection goes on working); the local apiserver takes every connection with prefer_local while it is up; a
flushed ruleset is restored by the next fast check and counted (negative control: without the fast check's
verification it stays gone until the next round); the cleanup leaves the ruleset and the loopback as they were.
Each client and server is bounded (a few seconds, a few hundred connections) and stops by itself or by its PID.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.kubeha.apiserver.plugins.module_utils._datapath_nftables import TABLE, NftablesDataPath
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_cli import cleanup
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_config import parse_config
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_daemon import Guard
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_hooks import Hooks
from ansible_collections.kubeha.apiserver.plugins.module_utils._node_plumbing import run_command
from ansible_collections.kubeha.apiserver.plugins.module_utils._proxy import Backend, ProbeResult
from guard_rig import ScriptedProber
from netns_tcp import COUNT, SERVERS

NS = f"kh-nftg-{os.getpid()}"
VIP4, VIP6, PORT = "169.254.100.1", "fd6b:6861::1", 6444
A, B, C = Backend("127.0.0.2", 7001), Backend("127.0.0.3", 7002), Backend("127.0.0.4", 7003)
V6 = Backend("::1", 7001)
NAMES = {A: "A", B: "B", C: "C", V6: "V6"}
CONNECTIONS = 200


# Kept connections: opened until one reaches the wanted backend (at most 40 tries), then a line each time the test
# asks, answered with the backend's reply or the error that ended the connection.
KEPT = textwrap.dedent(
    """
    import socket, sys
    host, port, wanted = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    for _ in range(40):
        c = socket.create_connection((host, port), timeout=5)
        f = c.makefile("rwb")
        if f.readline().decode().strip() == wanted:
            break
        c.close()
    else:
        print("never reached", wanted, flush=True)
        sys.exit(1)
    print("on", wanted, flush=True)
    while sys.stdin.readline():
        try:
            f.write(b"ping\\n"); f.flush()
            print(f.readline().decode().strip() or "closed", flush=True)
        except OSError as exc:
            print(type(exc).__name__, flush=True)
    """
)


def in_ns(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", NS, *argv], capture_output=True, text=True, timeout=60, check=False)


def ns_runner(argv: Any, stdin: str | None = None) -> tuple[int, str, str]:
    return run_command(["ip", "netns", "exec", NS, *argv], stdin)


@pytest.fixture(scope="module")
def netns() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.fail("the nftables kernel tests need root (a network namespace, nft, ss -K and conntrack)")
    subprocess.run(["ip", "netns", "add", NS], check=True)
    servers = None
    try:
        assert in_ns("ip", "link", "set", "lo", "up").returncode == 0
        servers = subprocess.Popen(["ip", "netns", "exec", NS, sys.executable, "-c", SERVERS, "300"],
                                   stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert servers.stdout is not None and servers.stdout.readline().strip() == "ready"
        yield
    finally:
        if servers is not None:
            servers.kill()
            servers.wait(10)
        subprocess.run(["ip", "netns", "del", NS], check=False)


class NodeGuard:
    """A guard in nftables mode on the namespace's loopback, its probes scripted."""

    def __init__(self, tmp_path: Path, **overrides: Any) -> None:
        doc = {
            "vip": [VIP4, VIP6],
            "port": PORT,
            "mode": "nftables",
            "seeds": ["127.0.0.2:7001", "127.0.0.3:7002", "127.0.0.4:7003", "[::1]:7001"],
            "ca_file": str(tmp_path / "ca.crt"),
            "rise": 1,
            "fall": 1,
            "fast_check_interval_s": 0,
            "state_file": str(tmp_path / "state.json"),
            "metrics_port": 0,
            "interface": "lo",
            **overrides,
        }
        self.cfg = parse_config(doc)
        self.prober = ScriptedProber()
        self.hooks = Hooks(runner=ns_runner, prober=self.prober, connector=lambda b, t: ProbeResult(b, True, 0.0),
                           notify=lambda _m: False)  # fmt: skip
        self.guard = Guard(self.cfg, None, self.hooks)

    def round(self) -> None:
        self.guard.run_round()
        assert self.guard.apply_error() is None, self.guard.apply_error()

    def close(self) -> None:
        self.guard.close()
        assert cleanup(self.cfg, self.hooks) == 0


@pytest.fixture
def node(netns: None, tmp_path: Path) -> Iterator[Any]:
    made: list[NodeGuard] = []

    def build(**overrides: Any) -> NodeGuard:
        made.append(NodeGuard(tmp_path, **overrides))
        return made[-1]

    yield build
    for guard in made:
        guard.close()


def spread(address: str = VIP4, n: int = CONNECTIONS) -> dict[str, int]:
    run = in_ns(sys.executable, "-c", COUNT, address, str(PORT), str(n))
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def table_exists() -> bool:
    return in_ns("nft", "list", "table", "inet", TABLE).returncode == 0


class Kept:
    """A kept connection through the VIP to one backend, in the namespace."""

    def __init__(self, backend: Backend) -> None:
        argv = ["ip", "netns", "exec", NS, sys.executable, "-c", KEPT, VIP4, str(PORT), NAMES[backend]]
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None and self.process.stdout.readline().strip() == f"on {NAMES[backend]}"

    def ping(self) -> str:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        return self.process.stdout.readline().strip()

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(10)


def test_every_ready_backend_of_both_families_takes_connections(node: Any) -> None:
    n = node()
    n.round()
    seen = spread()
    assert set(seen) == {"A", "B", "C"} and sum(seen.values()) == CONNECTIONS, seen
    assert spread(VIP6, 20) == {"V6": 20}
    assert n.guard.snapshot().weights == {A: 1, B: 1, C: 1, V6: 1}


def test_a_backend_that_goes_down_takes_no_new_connection_and_its_kept_one_is_closed(node: Any) -> None:
    n = node()
    n.round()
    kept = Kept(B)
    try:
        assert kept.ping() == "B ping"
        n.prober.set("refused", B)
        n.round()
        seen = spread()
        assert "B" not in seen and seen["A"] + seen["C"] == CONNECTIONS, seen
        assert kept.ping() in ("closed", "ConnectionAbortedError", "ConnectionResetError")
    finally:
        kept.stop()


def test_negative_control_without_closing_the_kept_connection_goes_on(node: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(NftablesDataPath, "close_connections", lambda self, backend: None)
    n = node()
    n.round()
    kept = Kept(B)
    try:
        n.prober.set("refused", B)
        n.round()
        assert "B" not in spread(n=50)
        assert kept.ping() == "B ping"  # still on the backend the guard took out: what the closing prevents
    finally:
        kept.stop()


def test_the_local_apiserver_takes_every_connection_while_it_is_up(node: Any) -> None:
    n = node(local_addresses=["127.0.0.2"], prefer_local=True)
    n.round()
    assert spread(n=50) == {"A": 50}
    n.prober.set("refused", A)
    n.round()
    seen = spread()
    assert set(seen) == {"B", "C"}, seen


def test_a_flushed_ruleset_is_restored_by_the_next_fast_check_and_counted(node: Any) -> None:
    n = node()
    n.round()
    assert in_ns("nft", "flush", "ruleset").returncode == 0
    assert not table_exists()
    n.guard.fast_check_once()
    assert table_exists() and n.guard.snapshot().repairs == 1
    assert set(spread(n=50)) <= {"A", "B", "C"}
    n.guard.fast_check_once()
    assert n.guard.snapshot().repairs == 1  # nothing to restore: nothing counted


def test_negative_control_without_the_fast_checks_verification_the_table_stays_gone(
    node: Any, monkeypatch: Any
) -> None:
    monkeypatch.setattr(NftablesDataPath, "verify_each_fast_check", False)
    n = node()
    n.round()
    assert in_ns("nft", "flush", "ruleset").returncode == 0
    n.guard.fast_check_once()
    assert not table_exists() and n.guard.snapshot().repairs == 0
    n.round()  # the next round restores it: a second later, not a fast-check interval
    assert table_exists() and n.guard.snapshot().repairs == 1


def test_cleanup_leaves_the_ruleset_and_the_loopback_as_they_were(node: Any, tmp_path: Path) -> None:
    before_rules = in_ns("nft", "list", "ruleset").stdout
    before_addresses = in_ns("ip", "-j", "addr", "show", "dev", "lo").stdout
    n = NodeGuard(tmp_path)
    n.round()
    assert table_exists() and VIP4 in in_ns("ip", "addr", "show", "dev", "lo").stdout
    n.close()
    assert in_ns("nft", "list", "ruleset").stdout == before_rules
    assert in_ns("ip", "-j", "addr", "show", "dev", "lo").stdout == before_addresses
