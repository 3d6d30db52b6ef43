#!/usr/bin/python
# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: nftables_service
short_description: Balance a virtual address and port over weighted backends in the kernel, with nftables
version_added: 0.1.0
description:
  - Makes one virtual service (address, port and protocol) of the node's own traffic go to its backends, balanced
    by the kernel with nftables, in a table of the collection's own (O(table)), never in kube-proxy's. The kernel
    path for nodes whose kernel has no IPVS, and beside kube-proxy in nftables mode, which deletes every IPVS
    virtual server when it starts.
  - "One rule per service in the table's C(output) nat chain: the destination is rewritten (DNAT) to a backend
    chosen at random in proportion to its weight (C(numgen random) over a map); a backend with weight V(0) gets no
    new connection and keeps its established ones; when every backend weighs V(0) new connections are refused at
    once with a TCP reset. Traffic from a virtual address leaving by another interface than loopback is masqueraded,
    so that the backends' replies come back."
  - Every change rewrites the whole table in one C(nft -f) transaction, keeping the table's other services, so the
    rules are never missing even for a packet, and established connections keep their translation (it lives in
    conntrack). The table is read back with C(nft -j), so a table someone altered or flushed is seen and rewritten.
  - Only the node's own connections are balanced (the C(output) hook), as a node-local proxy does; it is not a router.
author:
  - kubeha.apiserver developers (!UNKNOWN)
extends_documentation_fragment:
  - kubeha.apiserver.attributes
  - kubeha.apiserver.virtual_service
requirements:
  - nft (nftables 1.0 or later) on the target
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    support: full
    platforms: linux
notes:
  - Needs C(CAP_NET_ADMIN) on the target, usually by running the task with C(become).
  - Acts on the network namespace the module runs in.
  - The virtual address must be routable from the node, usually an address of the node itself (on C(lo) or a
    dummy interface), so that a connection to it gets a source address before the translation.
  - Weights are kept as the smallest integers in the same proportions (V(2) and V(4) are stored, and returned, as
    V(1) and V(2)); a backend with weight V(0) is not stored.
options:
  backends:
    description:
      - The backends of the service, each of the address family of O(address) and listed once.
    type: list
    elements: dict
    default: []
    suboptions:
      address:
        description: IPv4 or IPv6 address of the backend.
        type: str
        required: true
      port:
        description: Port of the backend, 1 to 65535.
        type: int
        required: true
      weight:
        description:
          - Weight of the backend, 0 to 65535; its share of new connections is its weight over the sum of the
            weights. V(0) stops new connections to it and keeps the established ones.
        type: int
        default: 1
  table:
    description:
      - Name of the C(inet) table that holds the services. The module owns it and rewrites it whole; anything in
        it that the module would not have written is dropped (and reported as changed).
    type: str
    default: kubeha_apiserver_lb
  state:
    description:
      - Whether the service must exist. With V(absent) its rule goes, and the table with the last one.
    type: str
    choices: [present, absent]
    default: present
"""

EXAMPLES = r"""
- name: Balance a node-local address over every apiserver, preferring none
  kubeha.apiserver.nftables_service:
    address: 169.254.100.1
    port: 6444
    backends:
      - {address: 10.0.0.11, port: 6443}
      - {address: 10.0.0.12, port: 6443}
      - {address: 10.0.0.13, port: 6443}
  become: true

- name: Drain one apiserver (weight 0 keeps its established connections)
  kubeha.apiserver.nftables_service:
    address: 169.254.100.1
    port: 6444
    backends:
      - {address: 10.0.0.11, port: 6443, weight: 0}
      - {address: 10.0.0.12, port: 6443}
      - {address: 10.0.0.13, port: 6443}
  become: true

- name: Remove the service (the table goes with its last service)
  kubeha.apiserver.nftables_service:
    address: 169.254.100.1
    port: 6444
    state: absent
  become: true
"""

RETURN = r"""
service:
  description: The service as the table holds it after the task (or would, in check mode); none when absent.
  returned: success
  type: dict
  sample:
    address: 169.254.100.1
    port: 6444
    protocol: tcp
    backends: [{address: 10.0.0.11, port: 6443, weight: 1}, {address: 10.0.0.12, port: 6443, weight: 1}]
services:
  description: Every service of the table after the task, by C(protocol address:port).
  returned: success
  type: dict
  sample: {"tcp 169.254.100.1:6444": [{address: 10.0.0.11, port: 6443, weight: 1}]}
foreign:
  description: What the table held that the module would not have written (dropped by a change).
  returned: success
  type: list
  elements: str
  sample: []
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.kubeha.apiserver.plugins.module_utils._nftables import (  # noqa: E402
    DEFAULT_TABLE,
    NftablesError,
    apply,
    backends_from,
    describe,
    effective,
    plan,
    read_table,
    service_key,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._virtual_service import (  # noqa: E402
    DESTINATION_SPEC,
    VIRTUAL_SERVICE_SPEC,
)

ARGUMENT_SPEC = {
    **VIRTUAL_SERVICE_SPEC,
    "backends": DESTINATION_SPEC,
    "table": {"type": "str", "default": DEFAULT_TABLE},
    "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
}


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    p = module.params
    nft = module.get_bin_path("nft", required=True, opt_dirs=["/usr/sbin", "/sbin"])

    def run(argv, data=None):
        return module.run_command([nft, *argv[1:]], data=data, binary_data=True)

    try:
        if not p["table"].replace("_", "").replace("-", "").isalnum():
            raise NftablesError(f"table {p['table']!r}: use letters, digits, '_' and '-' only")
        key = service_key(p["address"], p["port"], p["protocol"])
        wanted = backends_from(key, p["backends"]) if p["state"] == "present" else None
        reading = read_table(run, p["table"])
        change = plan(reading, key, wanted, p["table"])
        if change.changed and not module.check_mode:
            apply(run, change.text or "")
    except NftablesError as exc:
        module.fail_json(msg=str(exc))
    after = {k: effective(v) for k, v in change.after.items()}
    result = {
        "changed": change.changed,
        "services": describe(after),
        "foreign": change.foreign,
        "service": None,
    }
    if key in after:
        result["service"] = {
            "address": str(key.address),
            "port": key.port,
            "protocol": key.protocol,
            "backends": describe({key: after[key]})[key.describe()],
        }
    if module._diff:
        result["diff"] = {
            "before": describe({k: effective(v) for k, v in change.before.items()}),
            "after": describe(after),
        }
    module.exit_json(**result)


if __name__ == "__main__":
    main()
