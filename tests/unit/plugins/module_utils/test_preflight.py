"""Preflight checks of the node-local proxy settings (pure logic over plain node facts)."""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

import pytest
from ansible_collections.kubeha.apiserver.plugins.module_utils._preflight import (
    NodeFacts,
    check,
    kube_proxy_mode,
    nftables_capability,
    nftables_reply,
    parse_endpoint,
    parse_ip_addr_json,
    parse_proc_net_tcp,
)

IPVS_NODE = NodeFacts(interfaces={"eth0": ["10.88.0.21/24", "fd88:88::21/64"], "lo": ["127.0.0.1/8"]},
                      listening=frozenset({("0.0.0.0", 22)}), ipvs_available=True, ipvs_reason="loaded")  # fmt: skip
BACKENDS = ["10.88.0.11:6443", "10.88.0.12:6443", "[fd88:88::11]:6443"]


def test_good_settings_pass_and_auto_resolves_to_ipvs():
    verdict = check("169.254.100.1", "fd6b:6861::1", 6444, BACKENDS, "auto", IPVS_NODE)
    assert verdict.errors == [] and verdict.mode == "ipvs"
    assert verdict.backends == BACKENDS


def test_auto_without_ipvs_is_haproxy_and_ipvs_without_it_fails():
    node = NodeFacts(interfaces=IPVS_NODE.interfaces, ipvs_available=False, ipvs_reason="no ip_vs module")
    assert check("169.254.100.1", "", 6444, BACKENDS[:2], "auto", node).mode == "haproxy"
    verdict = check("169.254.100.1", "", 6444, BACKENDS[:2], "ipvs", node)
    assert verdict.errors == ["mode ipvs asked, but IPVS is not available in this kernel: no ip_vs module"]


@pytest.mark.parametrize(
    ("vip4", "vip6", "port", "backends", "ranges", "expected"),
    [
        ("169.254.100.1", "", 6444, [], [], "no backends"),
        ("300.1.1.1", "", 6444, BACKENDS[:1], [], "VIP '300.1.1.1' is not an IP address"),
        ("fd00::1", "", 6444, BACKENDS[:1], [], "VIP 'fd00::1' is IPv6, expected an IPv4"),
        ("", "", 6444, BACKENDS[:1], [], "no VIP"),
        ("169.254.100.1", "", 0, BACKENDS[:1], [], "port 0 is not 1-65535"),
        ("169.254.100.1", "", 6444, ["10.0.0.1"], [], "backend '10.0.0.1' is not ADDRESS:PORT"),
        ("169.254.100.1", "", 6444, ["[fd88:88::11]:6443"], [], "backend [fd88:88::11]:6443 is IPv6 but no VIP"),
        ("169.254.100.1", "", 6444, BACKENDS[:1] * 2, [], "the same ADDRESS:PORT twice"),
        ("10.96.0.10", "", 6444, BACKENDS[:1], ["10.96.0.0/12"], "VIP 10.96.0.10 is inside 10.96.0.0/12"),
        ("10.88.0.21", "", 6444, BACKENDS[:1], [], "VIP 10.88.0.21 is already in use on interface eth0"),
        ("10.88.0.99", "", 6444, BACKENDS[:1], [], "VIP 10.88.0.99 is inside 10.88.0.0/24, the network of"),
        ("169.254.100.1", "", 22, BACKENDS[:1], [], None),  # *:22 with IPVS: a warning, not an error
    ],
)
def test_bad_input_names_the_value(vip4, vip6, port, backends, ranges, expected):
    verdict = check(vip4, vip6, port, backends, "auto", IPVS_NODE, ranges)
    if expected is None:
        assert verdict.errors == [] and verdict.warnings
    else:
        assert any(expected in e for e in verdict.errors), verdict.errors


@pytest.mark.parametrize(
    ("vip4", "vip6", "expected"),
    [
        ("0.0.0.0", "", "VIP 0.0.0.0 is the unspecified address"),
        ("", "::", "VIP :: is the unspecified address"),
        ("127.0.0.53", "", "VIP 127.0.0.53 is a loopback address"),
        ("", "::1", "VIP ::1 is a loopback address"),
        ("224.0.0.1", "", "VIP 224.0.0.1 is a multicast address"),
        ("", "ff02::1", "VIP ff02::1 is a multicast address"),
        ("255.255.255.255", "", "VIP 255.255.255.255 is the broadcast address"),
        ("", "fe80::1", "VIP fe80::1 is an IPv6 link-local address"),
        ("", "::ffff:169.254.100.1", "give the IPv4 address 169.254.100.1 as the IPv4 VIP"),
        ("10.88.0.12", "", "VIP 10.88.0.12 is the address of the apiserver 10.88.0.12:6443"),
        ("", "fd88:88::11", "VIP fd88:88::11 is the address of the apiserver [fd88:88::11]:6443"),
    ],
)
def test_unusable_vips_are_refused_naming_the_reason(vip4, vip6, expected):
    # A worker's facts: the apiserver's address is not on this node, so only the backend list can tell.
    verdict = check(vip4, vip6, 6444, BACKENDS, "auto", IPVS_NODE)
    assert [e for e in verdict.errors if expected in e] != [], verdict.errors


def test_a_vip_that_is_another_hosts_address_is_refused_on_every_node():
    # The IPVS worker's own facts do not have 10.88.0.22 (w2's): only the inventory's addresses can tell.
    hosts = ["10.88.0.11", "10.88.0.21", "10.88.0.22", "fd88:88::22", "w3.example"]  # a name is skipped
    verdict = check("10.88.0.22", "fd88:88::22", 6444, BACKENDS, "auto", IPVS_NODE, node_addresses=hosts)
    assert [e for e in verdict.errors if "host of the inventory" in e] == [
        "VIP 10.88.0.22 is the address of a host of the inventory (10.88.0.22)",
        "VIP fd88:88::22 is the address of a host of the inventory (fd88:88::22)",
    ]
    # Negative control: the default VIPs are no host's address.
    assert check("169.254.100.1", "fd6b:6861::1", 6444, BACKENDS, "auto", IPVS_NODE, node_addresses=hosts).errors == []


def test_negative_control_usable_vips_of_every_kind_pass():
    """IPv4 link-local (the default), private and ULA addresses are what a VIP should be."""
    for vip4, vip6 in (("169.254.100.1", "fd6b:6861::1"), ("10.200.0.1", "fd00:1::1"), ("192.0.2.10", "2001:db8::a")):
        assert check(vip4, vip6, 6444, BACKENDS, "auto", IPVS_NODE).errors == []


def test_port_on_every_address_blocks_haproxy():
    node = NodeFacts(interfaces=IPVS_NODE.interfaces, listening=frozenset({("::", 6443)}))
    verdict = check("169.254.100.1", "", 6443, BACKENDS[:1], "auto", node)
    assert verdict.mode == "haproxy"
    assert verdict.errors == [
        "port 6443 is taken on every address (a process listens on *:6443): haproxy could not bind the VIP; "
        "choose another port"
    ]


def test_own_interface_is_not_a_collision():
    node = NodeFacts(interfaces=IPVS_NODE.interfaces | {"kha0": ["169.254.100.1/32"]}, ipvs_available=True)
    assert check("169.254.100.1", "", 6444, BACKENDS[:1], "auto", node).errors == []


def test_parse_endpoint():
    assert str(parse_endpoint("[FD88:88::0011]:6443")[0]) == "fd88:88::11"
    with pytest.raises(ValueError, match="port '70000' is not 1-65535"):
        parse_endpoint("10.0.0.1:70000")


def test_proc_net_tcp_listeners_ipv4_and_ipv6():
    tcp = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1\n"
        "   1: 0100007F:2711 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 2 1\n"
    )
    tcp6 = (
        "  sl  local_address                         remote_address                        st\n"
        "   0: 00000000000000000000000000000000:192B 00000000000000000000000000000000:0000 0A\n"
        "   1: 0000000000000000FFFF00000100007F:0050 00000000000000000000000000000000:0000 0A\n"
    )
    assert parse_proc_net_tcp(tcp) == {("0.0.0.0", 22)}
    assert parse_proc_net_tcp(tcp6) == {("::", 6443), ("::ffff:7f00:1", 80)}


def test_ip_addr_json():
    text = '[{"ifname":"eth0","addr_info":[{"local":"10.0.0.5","prefixlen":24},{"family":"x"}]},{"ifname":"lo"}]'
    assert parse_ip_addr_json(text) == {"eth0": ["10.0.0.5/24"], "lo": []}


# --------------------------------------------------------------------------------------------------
# The mode auto chooses per node, and kube-proxy's mode read from the running process
# --------------------------------------------------------------------------------------------------


EVIDENCE = "/var/lib/kube-proxy/config.conf of kube-proxy (process 42)"


def facts(kube_proxy_mode: str = "", ipvs: bool = True, nftables: bool = True) -> NodeFacts:
    return dataclasses.replace(IPVS_NODE, ipvs_available=ipvs, ipvs_reason="loaded" if ipvs else "no ip_vs module",
                               nftables_available=nftables, nftables_reason="loaded" if nftables else "no nf_tables",
                               kube_proxy_mode=kube_proxy_mode, kube_proxy_evidence=EVIDENCE)  # fmt: skip


@pytest.mark.parametrize(
    ("node", "mode", "why"),
    [
        (facts("nftables"), "nftables", "kube-proxy runs in nftables mode (/var/lib/kube-proxy/config.conf of "
                                        "kube-proxy (process 42)): its start-up cleanup deletes IPVS services"),
        (facts("nftables", ipvs=False), "nftables", "kube-proxy runs in nftables mode"),
        (facts("nftables", nftables=False), "haproxy", "nftables is not usable here: no nf_tables"),
        (facts("ipvs"), "ipvs", "IPVS is available (loaded); kube-proxy in ipvs mode"),
        (facts("iptables"), "ipvs", "IPVS is available (loaded); kube-proxy in iptables mode"),
        (facts(""), "ipvs", "IPVS is available (loaded); no kube-proxy running yet"),
        (facts("iptables", ipvs=False), "haproxy", "no IPVS in this kernel (no ip_vs module); kube-proxy in iptables"),
    ],
)  # fmt: skip
def test_auto_chooses_per_node_and_says_why(node: NodeFacts, mode: str, why: str) -> None:
    verdict = check("169.254.100.1", "", 6444, BACKENDS[:2], "auto", node)
    assert verdict.errors == [] and verdict.mode == mode
    assert verdict.mode_reason.startswith(why) or why in verdict.mode_reason, verdict.mode_reason


def test_nftables_asked_without_nftables_fails_and_ipvs_beside_nftables_kube_proxy_warns() -> None:
    verdict = check("169.254.100.1", "", 6444, BACKENDS[:2], "nftables", facts(nftables=False))
    assert verdict.errors == ["mode nftables asked, but nftables is not available in this kernel: no nf_tables"]
    assert check("169.254.100.1", "", 6444, BACKENDS[:2], "nftables", facts()).mode_reason == "asked for"
    warned = check("169.254.100.1", "", 6444, BACKENDS[:2], "ipvs", facts("nftables"))
    assert warned.errors == [] and len(warned.warnings) == 1
    assert "deletes the IPVS services at each of its starts" in warned.warnings[0]
    # Negative control: beside kube-proxy in IPVS mode, the IPVS data path is not warned about.
    assert check("169.254.100.1", "", 6444, BACKENDS[:2], "ipvs", facts("ipvs")).warnings == []
    unknown = check("169.254.100.1", "", 6444, BACKENDS[:2], "nginx", facts())
    assert "one of auto, ipvs, nftables, haproxy" in unknown.errors[0]


def fake_proc(tmp_path: Path, *processes: tuple[list[str], str | None]) -> str:
    """A /proc with one directory per process: its cmdline, and its root holding the config file when given."""
    proc = tmp_path / "proc"
    for pid, (argv, config) in enumerate(processes, start=100):
        (proc / str(pid) / "root" / "var" / "lib" / "kube-proxy").mkdir(parents=True)
        (proc / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
        if config is not None:
            (proc / str(pid) / "root" / "var" / "lib" / "kube-proxy" / "config.conf").write_text(config)
    return str(proc)


KUBE_PROXY_POD = ["/usr/local/bin/kube-proxy", "--config=/var/lib/kube-proxy/config.conf", "--hostname-override=w1"]


@pytest.mark.parametrize(
    ("processes", "mode", "evidence"),
    [
        ([(KUBE_PROXY_POD, 'kind: KubeProxyConfiguration\nmode: "nftables"\n')], "nftables",
         "/var/lib/kube-proxy/config.conf of kube-proxy (process 100)"),
        ([(["/usr/bin/sleep", "9"], None), (KUBE_PROXY_POD, "mode: ipvs # as kubeadm writes it\n")], "ipvs",
         "/var/lib/kube-proxy/config.conf of kube-proxy (process 101)"),
        ([(KUBE_PROXY_POD, 'mode: ""\n')], "iptables", "/var/lib/kube-proxy/config.conf of kube-proxy"),
        ([(["kube-proxy", "--proxy-mode", "nftables", "--config=/x"], None)], "nftables", "kube-proxy --proxy-mode"),
        ([(["kube-proxy", "--v=2"], None)], "iptables", "has no --proxy-mode or --config: its default"),
        ([(KUBE_PROXY_POD, None)], "", "which cannot be read"),
        ([(["/usr/bin/kube-proxy-helper", "--config=/var/lib/kube-proxy/config.conf"], "mode: nftables\n")], "",
         "no kube-proxy runs here"),
    ],
)  # fmt: skip
def test_kube_proxy_mode_is_read_from_the_running_process(
    tmp_path: Path, processes: list[tuple[list[str], str | None]], mode: str, evidence: str
) -> None:
    found, where = kube_proxy_mode(fake_proc(tmp_path, *processes))
    assert found == mode and evidence in where, (found, where)


def test_nftables_is_found_by_asking_the_kernel_where_no_module_file_says_so(tmp_path: Path) -> None:
    # This machine's kernel has nf_tables built in and no /lib/modules or /sys/module entry for it (as a container
    # sees its host's kernel): only the kernel's own answer over netlink finds it.
    empty = str(tmp_path / "nothing")
    assert nftables_capability(empty, empty, empty) == (True, "nf_tables answers over netlink")
    # Negative control: a kernel that does not answer is not taken for one with nftables.
    refused = nftables_capability(empty, empty, empty, ask=lambda: nftables_reply(ERROR_EOPNOTSUPP))
    assert refused[0] is False and "Operation not supported" in refused[1], refused


ERROR_EOPNOTSUPP = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", -95) + bytes(16)


def test_nftables_reply_is_read_from_the_netlink_header() -> None:
    assert nftables_reply(struct.pack("=IHHII", 36, (10 << 8) | 15, 0, 1, 0) + bytes(20)) == (
        True,
        "nf_tables answers over netlink",
    )
    assert nftables_reply(b"") == (False, "no answer from nf_tables over netlink")
    assert nftables_reply(struct.pack("=IHHII", 16, 99, 0, 1, 0))[1] == "unexpected netlink answer type 99"
