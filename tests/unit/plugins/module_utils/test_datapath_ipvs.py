# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The IPVS data path's plumbing and connection closing (module_utils/_datapath_ipvs, _node_plumbing): the
commands it runs, /proc/net/ip_vs_conn, ss -K and conntrack, on fakes (the kernel itself: tests/integration)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from ansible_collections.kubeha.apiserver.plugins.module_utils._datapath import conntrack_commands, socket_kill_commands
from ansible_collections.kubeha.apiserver.plugins.module_utils._datapath_ipvs import (
    NFT_TABLE,
    IPVSConnection,
    connections_to,
    nft_ruleset,
    parse_ip_vs_conn,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_config import (
    GuardError,
    parse_config,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._node_plumbing import (
    address_commands,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._proxy import Backend
from guard_rig import (
    IP_VS_CONN,
    M2,
    M6,
    VIP4,
    VIP6,
    FakeRunner,
    RigFactory,
    config_doc,
    dummy_link,
    ensure_plumbing,
    make_paths,
    remove_plumbing,
    rigs,
)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[RigFactory]:
    yield from rigs(tmp_path)


# --------------------------------------------------------------------------------------------------
# Plumbing
# --------------------------------------------------------------------------------------------------


def test_nft_ruleset_replaces_the_table_atomically() -> None:
    assert nft_ruleset([VIP6, VIP4]) == (
        f"table inet {NFT_TABLE}\n"
        f"delete table inet {NFT_TABLE}\n"
        f"table inet {NFT_TABLE} {{\n"
        "\tchain postrouting {\n"
        "\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
        '\t\tip saddr 169.254.100.1 oifname != "lo" masquerade\n'
        '\t\tip6 saddr fd00::1 oifname != "lo" masquerade\n'
        "\t}\n"
        "}\n"
    )


def test_address_commands_converge_on_the_vips() -> None:
    link = dummy_link(("169.254.99.1", 32), (VIP4, 32))
    assert address_commands("kha0", [VIP4, VIP6], link) == [
        ["ip", "addr", "del", "169.254.99.1/32", "dev", "kha0"],
        ["ip", "-6", "addr", "add", "fd00::1/128", "dev", "kha0", "nodad"],
    ]
    assert address_commands("kha0", [VIP4], dummy_link((VIP4, 32))) == []


def test_ensure_plumbing_from_scratch(tmp_path: Path) -> None:
    cfg = parse_config(config_doc(tmp_path, vip=[VIP4, VIP6], seeds=["10.0.0.11:6443", "[fd00::11]:6443"]))
    paths = make_paths(tmp_path)
    runner = FakeRunner()
    runner.respond(
        ["ip", "-d", "-j", "addr", "show"],
        (1, "", 'Device "kha0" does not exist.\n'),
        (0, json.dumps([dummy_link(up=False)]), ""),
    )
    changes = ensure_plumbing(cfg, runner, paths)
    assert runner.calls == [
        ["ip", "-d", "-j", "addr", "show", "dev", "kha0"],
        ["ip", "link", "add", "kha0", "type", "dummy"],
        ["ip", "-d", "-j", "addr", "show", "dev", "kha0"],
        ["ip", "link", "set", "dev", "kha0", "up"],
        ["ip", "addr", "add", "169.254.100.1/32", "dev", "kha0"],
        ["ip", "-6", "addr", "add", "fd00::1/128", "dev", "kha0", "nodad"],
        ["nft", "-f", "-"],
    ]
    assert runner.stdin["nft -f -"] == nft_ruleset([VIP4, VIP6])
    sysctl = Path(paths.proc_sys) / "net" / "ipv4" / "vs"
    assert {p.name: p.read_text() for p in sysctl.iterdir()} == {
        "conntrack": "1",
        "expire_nodest_conn": "1",
        "expire_quiescent_template": "1",
    }
    assert "created dummy interface kha0" in changes
    assert "sysctl net.ipv4.vs.conntrack=1" in changes


def test_ensure_plumbing_is_quiet_when_in_place_and_loads_modules_when_missing(tmp_path: Path) -> None:
    cfg = parse_config(config_doc(tmp_path, prefer_local=True))
    paths = make_paths(tmp_path)
    for name in os.listdir(Path(paths.proc_sys) / "net" / "ipv4" / "vs"):
        (Path(paths.proc_sys) / "net" / "ipv4" / "vs" / name).write_text("1\n")
    os.rmdir(Path(paths.sys_root) / "module" / "ip_vs_fo")
    runner = FakeRunner()
    assert ensure_plumbing(cfg, runner, paths) == ["loaded kernel module ip_vs_fo"]
    assert runner.commands("modprobe") == [["modprobe", "ip_vs_fo"]]


def test_ensure_plumbing_in_haproxy_mode_only_sets_the_vips(tmp_path: Path) -> None:
    cfg = parse_config(config_doc(tmp_path, mode="haproxy"))
    runner = FakeRunner()
    runner.respond(["ip", "-d", "-j", "addr", "show"], (0, json.dumps([dummy_link()]), ""))
    ensure_plumbing(cfg, runner, make_paths(tmp_path))
    assert runner.calls[1:] == [["ip", "addr", "add", "169.254.100.1/32", "dev", "kha0"]]


def test_plumbing_refuses_an_interface_that_is_not_dummy(tmp_path: Path) -> None:
    cfg = parse_config(config_doc(tmp_path, interface="eth0"))
    runner = FakeRunner()
    runner.respond(["ip", "-d", "-j", "addr", "show"], (0, json.dumps([dummy_link(kind="veth")]), ""))
    with pytest.raises(GuardError, match="interface eth0 exists and is not a dummy interface \\(veth\\)"):
        ensure_plumbing(cfg, runner, make_paths(tmp_path))
    with pytest.raises(GuardError, match="interface eth0 is not a dummy interface: not deleting it"):
        remove_plumbing(cfg, runner)


def test_plumbing_errors_carry_the_command_and_stderr(tmp_path: Path) -> None:
    cfg = parse_config(config_doc(tmp_path))
    runner = FakeRunner()
    runner.respond(["nft"], (1, "", "Error: Could not process rule: Operation not permitted\n"))
    with pytest.raises(GuardError) as caught:
        ensure_plumbing(cfg, runner, make_paths(tmp_path))
    assert str(caught.value) == "`nft -f -` failed (exit 1): Error: Could not process rule: Operation not permitted"


def test_remove_plumbing(tmp_path: Path) -> None:
    cfg = parse_config(config_doc(tmp_path))
    runner = FakeRunner()
    assert remove_plumbing(cfg, runner) == [f"nftables table inet {NFT_TABLE}", "dummy interface kha0"]
    assert runner.calls == [
        ["nft", "list", "table", "inet", NFT_TABLE],
        ["nft", "delete", "table", "inet", NFT_TABLE],
        ["ip", "-d", "-j", "addr", "show", "dev", "kha0"],
        ["ip", "link", "del", "dev", "kha0"],
    ]
    gone = FakeRunner()
    gone.respond(["nft"], (1, "", "Error: No such file or directory"))
    gone.respond(["ip", "-d", "-j", "addr", "show"], (1, "", 'Device "kha0" does not exist.'))
    assert remove_plumbing(cfg, gone) == []


# --------------------------------------------------------------------------------------------------
# /proc/net/ip_vs_conn and closing connections
# --------------------------------------------------------------------------------------------------


def test_parse_ip_vs_conn() -> None:
    connections = parse_ip_vs_conn(IP_VS_CONN)
    assert len(connections) == 7
    assert connections[0] == IPVSConnection("TCP", VIP4, 41394, VIP4, 6443, "10.0.0.12", 6443, "ESTABLISHED", 899)
    assert connections[1].client == "10.244.1.5"
    assert connections[2].state == "TIME_WAIT"
    assert connections[6] == IPVSConnection("TCP", VIP6, 40000, VIP6, 6443, "fd00::12", 6443, "ESTABLISHED", 899)


def test_parse_ip_vs_conn_with_persistence_engine_data() -> None:
    line = "TCP 0A000015 E001 A9FE6401 192B 0A00000C 192B ESTABLISHED     300 sip 6a6f686e\n"
    [connection] = parse_ip_vs_conn(line)
    assert (connection.client, connection.dest, connection.expires_s) == ("10.0.0.21", "10.0.0.12", 300)


def test_connections_to_a_backend() -> None:
    connections = parse_ip_vs_conn(IP_VS_CONN)
    found = connections_to(connections, M2, [(VIP4, 6443)])
    assert [(c.client, c.client_port, c.state) for c in found] == [
        (VIP4, 41394, "ESTABLISHED"),
        ("10.244.1.5", 54321, "ESTABLISHED"),
        ("10.0.0.21", 57345, "SYN_RECV"),
    ]
    assert connections_to(connections, M2, [("169.254.100.9", 6443)]) == []
    six = connections_to(connections, Backend("fd00::12", 6443), [(VIP6, 6443)])
    assert [c.client for c in six] == [VIP6]


def argv(command: str) -> list[str]:
    return command.split()


def test_socket_kill_commands_only_for_local_clients() -> None:
    connections = connections_to(parse_ip_vs_conn(IP_VS_CONN), M2, [(VIP4, 6443)])
    assert socket_kill_commands(connections, [VIP4, "10.0.0.21"]) == [
        argv("ss -K -t -n state all src 169.254.100.1 sport = :41394 dst 169.254.100.1 dport = :6443"),
        argv("ss -K -t -n state all src 10.0.0.21 sport = :57345 dst 169.254.100.1 dport = :6443"),
    ]
    six = connections_to(parse_ip_vs_conn(IP_VS_CONN), Backend("fd00::12", 6443), [(VIP6, 6443)])
    assert socket_kill_commands(six, [VIP6]) == [
        argv("ss -K -t -n state all src [fd00::1] sport = :40000 dst [fd00::1] dport = :6443"),
    ]


def test_conntrack_commands_per_family() -> None:
    assert conntrack_commands(M2, [VIP4, VIP6], 6443) == [
        argv(
            "conntrack -D -f ipv4 -p tcp --orig-dst 169.254.100.1 --orig-port-dst 6443 "
            "--reply-src 10.0.0.12 --reply-port-src 6443"
        )
    ]
    assert conntrack_commands(M6, [VIP4, VIP6], 6443) == [
        argv(
            "conntrack -D -f ipv6 -p tcp --orig-dst fd00::1 --orig-port-dst 6443 "
            "--reply-src fd00::11 --reply-port-src 6443"
        )
    ]
