# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The nftables data path's pure parts (module_utils/_datapath_nftables): the weights the map holds, the table per
VIP, and the connections read from conntrack. The data path itself on the real kernel, nft, ss and conntrack:
test_guard_nftables_kernel.py."""

from __future__ import annotations

import ipaddress

from ansible_collections.kubeha.apiserver.plugins.module_utils import _nftables
from ansible_collections.kubeha.apiserver.plugins.module_utils._datapath import Desired, conntrack_commands
from ansible_collections.kubeha.apiserver.plugins.module_utils._datapath_nftables import (
    ConntrackConnection,
    desired_table,
    nft_weights,
    parse_conntrack,
)
from guard_rig import M1, M2, M3, M6, VIP4, VIP6


def test_prefer_local_keeps_only_the_highest_weight_as_ipvs_fo_does() -> None:
    assert nft_weights({M1: 2, M2: 1, M3: 0}, prefer_local=True) == {M1: 2, M2: 0, M3: 0}
    # The local apiserver down: every other ready one takes its share.
    assert nft_weights({M1: 0, M2: 1, M3: 1}, prefer_local=True) == {M1: 0, M2: 1, M3: 1}
    # Negative control: without prefer_local the weights are the decision's.
    assert nft_weights({M1: 2, M2: 1, M3: 0}, prefer_local=False) == {M1: 2, M2: 1, M3: 0}
    assert nft_weights({}, prefer_local=True) == {}


def test_one_service_per_vip_with_the_backends_of_its_family() -> None:
    desired = Desired((VIP4, VIP6), 6444, (M1, M2, M6), {M1: 1, M2: 0, M6: 1}, (), False)
    table = desired_table(desired)
    v4, v6 = _nftables.service_key(VIP4, 6444), _nftables.service_key(VIP6, 6444)
    assert set(table) == {v4, v6}
    assert [(str(b.address), b.weight) for b in table[v4]] == [("10.0.0.11", 1), ("10.0.0.12", 0)]
    assert [(str(b.address), b.weight) for b in table[v6]] == [("fd00::11", 1)]
    # What the rules hold: weight 0 left out of the map.
    assert [str(b.address) for b in _nftables.normalised(table)[v4]] == ["10.0.0.11"]


# conntrack -L as conntrack-tools 1.4.7 prints it (original direction first, then the reply).
CONNTRACK = """\
tcp      6 431999 ESTABLISHED src=169.254.100.1 dst=169.254.100.1 sport=40112 dport=6444 src=10.0.0.12 dst=10.0.0.21 \
sport=6443 dport=40112 [ASSURED] mark=0 use=1
tcp      6 117 SYN_SENT src=169.254.100.1 dst=169.254.100.1 sport=40114 dport=6444 [UNREPLIED] src=10.0.0.12 \
dst=10.0.0.21 sport=6443 dport=40114 mark=0 use=1
tcp      6 102 TIME_WAIT src=169.254.100.1 dst=169.254.100.1 sport=40100 dport=6444 src=10.0.0.12 dst=10.0.0.21 \
sport=6443 dport=40100 [ASSURED] mark=0 use=1
tcp      6 431999 ESTABLISHED src=fd6b:6861::1 dst=fd6b:6861::1 sport=50000 dport=6444 src=fd00::12 dst=fd00::21 \
sport=6443 dport=50000 [ASSURED] mark=0 use=1
udp      17 29 src=10.0.0.21 dst=10.0.0.53 sport=5353 dport=53 src=10.0.0.53 dst=10.0.0.21 sport=53 dport=5353 use=1
conntrack v1.4.7 (conntrack-tools): 4 flow entries have been shown.
tcp garbage
"""


def test_parse_conntrack_takes_the_original_direction() -> None:
    found = parse_conntrack(CONNTRACK)
    assert found == [
        ConntrackConnection("169.254.100.1", 40112, "169.254.100.1", 6444, "ESTABLISHED"),
        ConntrackConnection("169.254.100.1", 40114, "169.254.100.1", 6444, "SYN_SENT"),
        ConntrackConnection("169.254.100.1", 40100, "169.254.100.1", 6444, "TIME_WAIT"),
        ConntrackConnection("fd6b:6861::1", 50000, "fd6b:6861::1", 6444, "ESTABLISHED"),
    ]
    assert all(ipaddress.ip_address(c.client) for c in found)


def test_conntrack_is_asked_per_vip_of_the_backends_family() -> None:
    assert conntrack_commands(M2, [VIP4, VIP6], 6444, "-L") == [
        ["conntrack", "-L", "-f", "ipv4", "-p", "tcp", "--orig-dst", VIP4, "--orig-port-dst", "6444",
         "--reply-src", "10.0.0.12", "--reply-port-src", "6443"],
    ]  # fmt: skip
    assert conntrack_commands(M6, [VIP4, VIP6], 6444, "-L")[0][3] == "ipv6"
