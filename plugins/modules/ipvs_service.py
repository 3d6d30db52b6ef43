#!/usr/bin/python
# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ipvs_service
short_description: Manage a kernel IPVS virtual server and its real servers
version_added: 0.1.0
description:
  - Creates, changes or removes one kernel IPVS virtual server (address, port and protocol) and its
    real servers, idempotently, through netlink with pyroute2.
  - A scheduler or persistence change edits the virtual server in place, and a weight or forwarding
    change edits the real server in place, so established connections are kept.
  - New real servers are added before unlisted ones are removed, so the virtual server never becomes
    empty while its set of real servers is replaced.
  - Loads the C(ip_vs) kernel module and the scheduler's module with C(modprobe) when needed. In check
    mode nothing is loaded; if C(ip_vs) is not loaded the virtual server is reported as absent.
author:
  - kubeha.apiserver developers (!UNKNOWN)
extends_documentation_fragment:
  - kubeha.apiserver.attributes
  - kubeha.apiserver.virtual_service
requirements:
  - pyroute2 >= 0.9.7
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    support: N/A
    platforms: linux
notes:
  - Needs C(CAP_NET_ADMIN) on the target, usually by running the task with C(become).
  - Acts on the network namespace the module runs in.
  - Virtual servers defined by firewall mark are not managed.
options:
  scheduler:
    description:
      - IPVS scheduling algorithm, one of V(rr), V(wrr), V(lc), V(wlc), V(lblc), V(lblcr), V(dh), V(sh),
        V(sed), V(nq), V(fo), V(ovf), V(mh), V(twos).
      - Its kernel module C(ip_vs_<scheduler>) is loaded when it is not loaded or built in.
    type: str
    default: rr
  persistence_timeout:
    description:
      - Makes the service persistent with this timeout in seconds, so a client keeps going to the same
        real server.
      - Omit it, or set V(0), for a service without persistence.
    type: int
  real_servers:
    description:
      - The real servers (destinations) of the service. They must be of the address family of O(address),
        and each address and port may be listed once.
    type: list
    elements: dict
    default: []
    suboptions:
      address:
        description:
          - IPv4 or IPv6 address of the real server.
        type: str
        required: true
      port:
        description:
          - Port of the real server, 1 to 65535.
        type: int
        required: true
      weight:
        description:
          - Weight of the real server, 0 to 65535. V(0) stops new connections to it but keeps the
            established ones.
        type: int
        default: 1
  purge_real_servers:
    description:
      - Remove the real servers of the service that are not listed in O(real_servers).
      - With V(false), unlisted real servers are left as they are.
    type: bool
    default: true
  forwarding:
    description:
      - Packet forwarding method of all real servers, V(masquerade) (NAT), V(direct) (direct routing)
        or V(tunnel) (IP in IP).
    type: str
    choices: [masquerade, direct, tunnel]
    default: masquerade
  state:
    description:
      - Whether the virtual server must exist. V(absent) deletes it with all its real servers.
    type: str
    choices: [present, absent]
    default: present
"""

EXAMPLES = r"""
- name: Balance a node-local address over all kube-apiservers
  kubeha.apiserver.ipvs_service:
    address: 169.254.100.1
    port: 6443
    scheduler: rr
    real_servers:
      - address: 10.0.0.11
        port: 6443
      - address: 10.0.0.12
        port: 6443
      - address: 10.0.0.13
        port: 6443
  become: true

- name: Drain one apiserver (weight 0 keeps its established connections)
  kubeha.apiserver.ipvs_service:
    address: 169.254.100.1
    port: 6443
    real_servers:
      - address: 10.0.0.11
        port: 6443
        weight: 0
      - address: 10.0.0.12
        port: 6443
      - address: 10.0.0.13
        port: 6443
  become: true

- name: IPv6 virtual server with persistence, leaving unlisted real servers alone
  kubeha.apiserver.ipvs_service:
    address: fd00:100::1
    port: 6443
    scheduler: wlc
    persistence_timeout: 300
    purge_real_servers: false
    real_servers:
      - address: fd00::11
        port: 6443
        weight: 2
  become: true

- name: Remove the virtual server
  kubeha.apiserver.ipvs_service:
    address: 169.254.100.1
    port: 6443
    state: absent
  become: true
"""

RETURN = r"""
service:
  description:
    - The virtual server as read back from the kernel after the changes, or as it would be in check mode.
    - Empty when the virtual server does not exist.
  returned: success
  type: dict
  contains:
    address:
      description: Virtual address (IPv6 normalised).
      returned: when the virtual server exists
      type: str
      sample: 169.254.100.1
    port:
      description: Virtual port.
      returned: when the virtual server exists
      type: int
      sample: 6443
    protocol:
      description: Transport protocol.
      returned: when the virtual server exists
      type: str
      sample: tcp
    scheduler:
      description: Scheduling algorithm.
      returned: when the virtual server exists
      type: str
      sample: rr
    persistence_timeout:
      description: Persistence timeout in seconds, V(null) when the service is not persistent.
      returned: when the virtual server exists
      type: int
      sample: null
    real_servers:
      description: The real servers, sorted by address and port.
      returned: when the virtual server exists
      type: list
      elements: dict
      contains:
        address:
          description: Address of the real server.
          returned: always
          type: str
          sample: 10.0.0.11
        port:
          description: Port of the real server.
          returned: always
          type: int
          sample: 6443
        weight:
          description: Weight of the real server.
          returned: always
          type: int
          sample: 1
        forwarding:
          description:
            - Forwarding method, V(masquerade), V(direct) or V(tunnel).
            - V(local) when an (older) kernel reports a real server on a local address as such.
          returned: always
          type: str
          sample: masquerade
        active_connections:
          description: Active connections to the real server (0 in check mode for real servers not yet added).
          returned: always
          type: int
          sample: 3
        inactive_connections:
          description: Inactive connections to the real server.
          returned: always
          type: int
          sample: 0
actions:
  description: What was done, or would be done in check mode, in order; empty when nothing changed.
  returned: success
  type: list
  elements: str
  sample:
    - add real server 10.0.0.13:6443 to TCP 169.254.100.1:6443 (weight 1, masquerade)
    - set real server 10.0.0.11:6443 of TCP 169.254.100.1:6443 (weight 0, masquerade)
    - delete real server 10.0.0.14:6443 from TCP 169.254.100.1:6443
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib  # noqa: E402
from ansible_collections.kubeha.apiserver.plugins.module_utils._ipvs import (  # noqa: E402
    MissingLibraryError,
    PyRoute2IPVS,
    ensure,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._ipvs_model import IPVSError  # noqa: E402
from ansible_collections.kubeha.apiserver.plugins.module_utils._virtual_service import (  # noqa: E402
    DESTINATION_SPEC,
    VIRTUAL_SERVICE_SPEC,
)

ARGUMENT_SPEC = {
    **VIRTUAL_SERVICE_SPEC,
    "scheduler": {"type": "str", "default": "rr"},
    "persistence_timeout": {"type": "int"},
    "real_servers": DESTINATION_SPEC,
    "purge_real_servers": {"type": "bool", "default": True},
    "forwarding": {"type": "str", "choices": ["masquerade", "direct", "tunnel"], "default": "masquerade"},
    "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
}


def make_adapter() -> PyRoute2IPVS:
    """The kernel adapter (replaced by a fake in unit tests)."""
    return PyRoute2IPVS()


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    modprobe = module.get_bin_path("modprobe", opt_dirs=["/sbin", "/usr/sbin"]) or "modprobe"
    try:
        outcome = ensure(module.params, make_adapter, module.run_command, module.check_mode, modprobe=modprobe)
    except MissingLibraryError as exc:
        module.fail_json(msg=missing_required_lib("pyroute2"), exception=exc.import_traceback)
    except IPVSError as exc:
        module.fail_json(msg=str(exc))
    result = {"changed": outcome.changed, "actions": outcome.actions, "service": outcome.service}
    if module._diff:
        result["diff"] = outcome.diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
