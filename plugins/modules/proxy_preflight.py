#!/usr/bin/python
# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: proxy_preflight
short_description: Check a node-local apiserver proxy's settings against the node, changing nothing
version_added: 0.1.0
description:
  - Validates the virtual addresses, port and backends of the node-local apiserver proxy, and checks them
    against the node they are meant for, before the local_proxy role changes anything.
  - Fails with one message listing every problem, each naming the value and the reason.
  - Resolves O(mode=auto) per node, and says why in RV(mode_reason) - V(nftables) when the kube-proxy running on
    the node is in nftables mode (its start-up cleanup deletes every IPVS service on the node), else V(ipvs) when
    the kernel has IPVS, else V(haproxy).
author: kubeha.apiserver developers (!UNKNOWN)
attributes:
  check_mode:
    support: full
    description: Changes nothing in any mode.
  diff_mode:
    support: none
    description: Nothing to show.
  platform:
    support: full
    platforms: linux
    description: Reads Linux's /proc and /sys.
notes:
  - Reads /proc, /lib/modules and C(ip -j addr); loads no kernel module.
  - kube-proxy's mode is read from the running kube-proxy (a systemd unit or a pod) - its C(--proxy-mode) flag, else
    the C(mode) of its C(--config) file, read through the process's own root.
options:
  vip4:
    description: IPv4 virtual address of the proxy. Empty for none.
    type: str
    default: ""
  vip6:
    description: IPv6 virtual address of the proxy. Empty for none.
    type: str
    default: ""
  port:
    description: Port of the proxy on its virtual addresses.
    type: int
    required: true
  backends:
    description: The apiservers, as C(ADDRESS:PORT) (IPv6 as C([ADDRESS]:PORT)).
    type: list
    elements: str
    required: true
  mode:
    description: V(ipvs), V(nftables), V(haproxy), or V(auto) (see the description).
    type: str
    choices: [auto, ipvs, nftables, haproxy]
    default: auto
  forbidden_ranges:
    description: Node, pod and service CIDRs that the virtual addresses must stay out of.
    type: list
    elements: str
    default: []
  interface:
    description: The proxy's own interface, whose addresses are not counted as collisions.
    type: str
    default: kha0
  metrics_address:
    description:
      - Address the guard's metrics endpoint is to listen on.
      - An IPv4 or IPv6 address without a zone index; a loopback, an unspecified (V(0.0.0.0), V(::)) or one of
        this node's addresses.
    type: str
    default: 127.0.0.1
  metrics_port:
    description: Port of the guard's metrics endpoint, not the proxy's O(port); V(0) for no endpoint.
    type: int
    default: 9445
  node_addresses:
    description:
      - The addresses of every host of the inventory; a virtual address equal to one of them is refused on every
        node, not only on the host that has it. Entries that are not IP addresses (names) are skipped.
    type: list
    elements: str
    default: []
"""

EXAMPLES = r"""
- name: Check the proxy settings on every node before changing anything
  kubeha.apiserver.proxy_preflight:
    vip4: 169.254.100.1
    vip6: fd6b:6861::1
    port: 6444
    backends: [10.0.0.11:6443, 10.0.0.12:6443, 10.0.0.13:6443]
    forbidden_ranges: [10.96.0.0/12, 10.244.0.0/16]
  register: preflight
"""

RETURN = r"""
mode:
  description: The proxy mode for this node, V(auto) resolved.
  type: str
  returned: always
  sample: ipvs
mode_reason:
  description: Why this mode - the rule O(mode=auto) applied, with its evidence, or V(asked for).
  type: str
  returned: always
  sample: "IPVS is available (loaded); kube-proxy in iptables mode"
kube_proxy_mode:
  description: The mode of the kube-proxy running on this node; empty when none runs.
  type: str
  returned: always
  sample: nftables
nftables_available:
  description: Whether this node's kernel has nftables.
  type: bool
  returned: always
ipvs_available:
  description: Whether this node's kernel has IPVS.
  type: bool
  returned: always
ipvs_reason:
  description: Why IPVS is (not) available.
  type: str
  returned: always
local_addresses:
  description: This node's addresses (loopback and the proxy's own interface left out).
  type: list
  elements: str
  returned: always
  sample: ["10.0.0.11", "fd00::11"]
backends:
  description: The backends, normalised.
  type: list
  elements: str
  returned: always
  sample: ["10.0.0.11:6443", "[fd00::11]:6443"]
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.kubeha.apiserver.plugins.module_utils._preflight import (  # noqa: E402
    MODES,
    check,
    read_node_facts,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "vip4": {"type": "str", "default": ""},
            "vip6": {"type": "str", "default": ""},
            "port": {"type": "int", "required": True},
            "backends": {"type": "list", "elements": "str", "required": True},
            "mode": {"type": "str", "choices": ["auto", *MODES], "default": "auto"},
            "forbidden_ranges": {"type": "list", "elements": "str", "default": []},
            "interface": {"type": "str", "default": "kha0"},
            "metrics_address": {"type": "str", "default": "127.0.0.1"},
            "metrics_port": {"type": "int", "default": 9445},
            "node_addresses": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    p = module.params
    facts = read_node_facts(module.get_bin_path("ip", opt_dirs=["/sbin", "/usr/sbin"]) or "ip")
    verdict = check(p["vip4"], p["vip6"], p["port"], p["backends"], p["mode"], facts, p["forbidden_ranges"],
                    p["interface"], p["metrics_address"], p["metrics_port"], p["node_addresses"])  # fmt: skip
    for warning in verdict.warnings:
        module.warn(warning)
    local = [a.split("/")[0] for name, addrs in facts.interfaces.items() if name not in ("lo", p["interface"])
             for a in addrs]  # fmt: skip
    result = {"changed": False, "mode": verdict.mode, "backends": verdict.backends, "local_addresses": local,
              "ipvs_available": facts.ipvs_available, "ipvs_reason": facts.ipvs_reason,
              "mode_reason": verdict.mode_reason, "kube_proxy_mode": facts.kube_proxy_mode,
              "nftables_available": facts.nftables_available}  # fmt: skip
    if verdict.errors:
        module.fail_json(msg="; ".join(verdict.errors), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
