# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""nftables_service on the real kernel and the real nft (this machine's: it has nftables), in a network namespace
the test makes and deletes, with real TCP servers and clients on its loopback. Needs root, as make test runs.

The module runs as Ansible runs it (a process given its arguments file), inside the namespace. Checked: the
connections a VIP gets are spread over the backends by weight, a weight-0 backend gets none (negative control: with
weight 1 the same backend gets its share), a connection established before a change keeps working after it, check
mode changes nothing, a second run changes nothing, another service of the table survives a change, a table someone
flushed is rewritten, bad input fails naming the value and leaves the table as it was, every backend at weight 0
refuses new connections at once, and absent removes the service, then the table with the last one. Each client and
server is bounded (a few seconds, a few hundred connections) and stops by itself or by its PID.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from netns_tcp import COUNT, SERVERS

NS = f"kh-nft-{os.getpid()}"
TABLE = "kubeha_apiserver_lb"
VIP4, VIP6, PORT = "169.254.100.1", "fd6b:6861::1", 6444
A = {"address": "127.0.0.2", "port": 7001}
B = {"address": "127.0.0.3", "port": 7002}
C = {"address": "127.0.0.4", "port": 7003}
V6 = {"address": "::1", "port": 7001}
CONNECTIONS = 300


KEPT = textwrap.dedent(
    """
    import socket, sys
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    f = c.makefile("rwb")
    print(f.readline().decode().strip(), flush=True)
    sys.stdin.readline()  # the test changes the table meanwhile
    f.write(b"ping\\n"); f.flush()
    print(f.readline().decode().strip(), flush=True)
    """
)


def in_ns(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    argv_in_ns = ["ip", "netns", "exec", NS, *argv]
    return subprocess.run(argv_in_ns, capture_output=True, text=True, timeout=60, check=False, **kwargs)


@pytest.fixture(scope="module")
def netns() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.fail("the nftables kernel tests need root (a network namespace and nft)")
    subprocess.run(["ip", "netns", "add", NS], check=True)
    servers = None
    try:
        for argv in (["ip", "link", "set", "lo", "up"], ["ip", "addr", "add", f"{VIP4}/32", "dev", "lo"],
                     ["ip", "addr", "add", f"{VIP6}/128", "dev", "lo", "nodad"]):  # fmt: skip
            assert in_ns(*argv).returncode == 0, argv
        servers = subprocess.Popen(["ip", "netns", "exec", NS, sys.executable, "-c", SERVERS, "300"],
                                   stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert servers.stdout is not None and servers.stdout.readline().strip() == "ready"
        yield
    finally:
        if servers is not None:
            servers.kill()
            servers.wait(10)
        subprocess.run(["ip", "netns", "del", NS], check=False)


def module(tmp_path: Path, args: dict, check: bool = False) -> dict:
    """The module as Ansible runs it: a process reading its arguments file, here inside the namespace."""
    from ansible_collections.kubeha.apiserver.plugins.modules import nftables_service

    path = tmp_path / "args.json"
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {**args, "_ansible_check_mode": check, "_ansible_diff": True}}))
    # The directory above ansible_collections, where tests/unit/conftest.py made the collection importable.
    collections = next(p for p in Path(nftables_service.__file__).parents if p.name == "ansible_collections").parent
    env = {**os.environ, "PYTHONPATH": str(collections)}
    run = in_ns(sys.executable, "-m", "ansible_collections.kubeha.apiserver.plugins.modules.nftables_service",
                str(path), env=env)  # fmt: skip
    assert run.stdout, run.stderr
    return json.loads(run.stdout)


def service(tmp_path: Path, backends: list[dict], address: str = VIP4, **extra) -> dict:
    return module(tmp_path, {"address": address, "port": PORT, "backends": backends, **extra})


def spread(address: str = VIP4, n: int = CONNECTIONS) -> dict[str, int]:
    run = in_ns(sys.executable, "-c", COUNT, address, str(PORT), str(n))
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def table_text() -> str:
    run = in_ns("nft", "list", "table", "inet", TABLE)
    return run.stdout if run.returncode == 0 else ""


def test_connections_are_spread_by_weight_and_a_second_run_changes_nothing(netns, tmp_path):
    first = service(tmp_path, [A | {"weight": 2}, B])
    assert first["changed"] is True and not first.get("failed"), first
    assert first["service"]["backends"] == [A | {"weight": 2}, B | {"weight": 1}]
    seen = spread()
    assert set(seen) == {"A", "B"} and sum(seen.values()) == CONNECTIONS, seen
    # 2:1 over 300 random picks: A gets 200 on average; 150 is more than 6 standard deviations (8.2) away.
    assert seen["A"] > 150 and seen["B"] > 50, seen
    again = service(tmp_path, [A | {"weight": 2}, B])
    assert again["changed"] is False, again
    # Weights in the same proportions are the same table.
    assert service(tmp_path, [A | {"weight": 4}, B | {"weight": 2}])["changed"] is False


def test_a_weight_0_backend_gets_no_new_connection(netns, tmp_path):
    result = service(tmp_path, [A, B | {"weight": 0}, C])
    assert result["changed"] is True
    assert [b["address"] for b in result["service"]["backends"]] == ["127.0.0.2", "127.0.0.4"]
    seen = spread()
    assert "B" not in seen and seen["A"] + seen["C"] == CONNECTIONS, seen
    # Negative control: at weight 1 the same backend gets its share.
    service(tmp_path, [A, B, C])
    assert spread()["B"] > 50


def test_a_connection_established_before_a_change_keeps_working(netns, tmp_path):
    service(tmp_path, [A])
    client = subprocess.Popen(["ip", "netns", "exec", NS, sys.executable, "-c", KEPT, VIP4, str(PORT)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert client.stdout is not None and client.stdin is not None
        assert client.stdout.readline().strip() == "A"
        changed = service(tmp_path, [A | {"weight": 0}, B])  # A drained: new connections go to B
        assert changed["changed"] is True
        assert spread(n=20) == {"B": 20}
        client.stdin.write("\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "A ping"  # the kept connection still reaches A
    finally:
        client.kill()
        client.wait(10)


def test_check_mode_reports_and_changes_nothing(netns, tmp_path):
    service(tmp_path, [A])
    before = table_text()
    result = module(tmp_path, {"address": VIP4, "port": PORT, "backends": [B]}, check=True)
    assert result["changed"] is True and result["service"]["backends"] == [B | {"weight": 1}]
    assert result["diff"]["before"] == {f"tcp {VIP4}:{PORT}": [A | {"weight": 1}]}
    assert table_text() == before


def test_an_ipv6_service_beside_the_ipv4_one_and_each_kept_when_the_other_changes(netns, tmp_path):
    service(tmp_path, [A])
    result = service(tmp_path, [V6], address=VIP6)
    assert result["changed"] is True and set(result["services"]) == {f"tcp {VIP4}:{PORT}", f"tcp [{VIP6}]:{PORT}"}
    assert spread(VIP6, 20) == {"V6": 20}
    service(tmp_path, [B])
    assert spread(VIP6, 20) == {"V6": 20} and spread(VIP4, 20) == {"B": 20}


def test_a_flushed_table_is_seen_and_rewritten(netns, tmp_path):
    service(tmp_path, [A])
    assert in_ns("nft", "flush", "chain", "inet", TABLE, "output").returncode == 0
    assert service(tmp_path, [A])["changed"] is True
    assert spread(n=20) == {"A": 20}
    # Something the module would not write is reported, and dropped by the rewrite.
    assert in_ns("nft", "add", "chain", "inet", TABLE, "extra").returncode == 0
    result = service(tmp_path, [A])
    assert result["changed"] is True and result["foreign"] == ["chain extra"], result
    assert "chain extra" not in table_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"backends": [{"address": "::2", "port": 7001}]}, "backend [::2]:7001 is IPv6 but tcp 169.254.100.1:6444"),
        ({"backends": [A, A]}, "backend 127.0.0.2:7001 is listed twice"),
        ({"backends": [A | {"weight": 70000}]}, "backend 127.0.0.2 weight 70000 is not 0-65535"),
        ({"backends": [{"address": "10.0.0.300", "port": 1}]}, "backend address '10.0.0.300' is not an IPv4 or IPv6"),
        ({"port": 0, "backends": [A]}, "port 0 is not a port (1-65535)"),
        ({"address": "0.0.0.0", "backends": [A]}, "address 0.0.0.0 cannot be a virtual service address"),
        ({"table": "x; flush ruleset", "backends": [A]}, "table 'x; flush ruleset': use letters"),
    ],
)
def test_bad_input_fails_naming_the_value_and_changes_nothing(netns, tmp_path, args, message):
    service(tmp_path, [A])
    before = table_text()
    result = module(tmp_path, {"address": VIP4, "port": PORT} | args)
    assert result.get("failed") is True and message in result["msg"], result
    assert table_text() == before


def test_every_backend_at_weight_0_refuses_new_connections_at_once(netns, tmp_path):
    service(tmp_path, [A | {"weight": 0}])
    started = time.monotonic()
    assert spread(n=5) == {"ConnectionRefusedError": 5}
    assert time.monotonic() - started < 2  # a reset, not a timeout
    assert "reject with tcp reset" in table_text()


def test_absent_removes_the_service_then_the_table_with_the_last_one(netns, tmp_path):
    service(tmp_path, [A])
    service(tmp_path, [V6], address=VIP6)
    gone = module(tmp_path, {"address": VIP6, "port": PORT, "state": "absent"})
    assert gone["changed"] is True and set(gone["services"]) == {f"tcp {VIP4}:{PORT}"}
    last = module(tmp_path, {"address": VIP4, "port": PORT, "state": "absent"})
    assert last["changed"] is True and last["services"] == {}
    assert in_ns("nft", "list", "table", "inet", TABLE).returncode != 0
    assert module(tmp_path, {"address": VIP4, "port": PORT, "state": "absent"})["changed"] is False
