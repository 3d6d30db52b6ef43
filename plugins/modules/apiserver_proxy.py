#!/usr/bin/python
# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: apiserver_proxy
short_description: Converge a node's local apiserver proxy at once and report the health of every apiserver
version_added: 0.1.0
description:
  - Runs one round of the node's guard from its configuration file, as written by the
    R(kubeha.apiserver.local_proxy,ansible_collections.kubeha.apiserver.local_proxy_role) role. That is the VIP
    interface and source NAT, a C(/readyz) probe of every apiserver with the cluster CA verified, then the
    IPVS virtual servers (through the same logic as M(kubeha.apiserver.ipvs_service)) or the haproxy
    configuration, and the state file restored at boot.
  - Used by the role and the day-2 playbooks to converge every node at once instead of waiting for the guard.
  - Reports C(changed) only when the data path moved (IPVS services, haproxy configuration, interface).
author: kubeha.apiserver developers (!UNKNOWN)
requirements:
  - pyroute2 >= 0.9.7 (IPVS mode)
attributes:
  check_mode:
    support: full
    description: Probes and plans against the live data path, applies nothing.
  diff_mode:
    support: none
    description: The health table and O(ignore:actions) say what changed.
  platform:
    support: full
    platforms: linux
    description: Linux with systemd; IPVS mode needs a kernel with IPVS.
notes:
  - Needs root (C(CAP_NET_ADMIN)). Run it with the guard's own Python (the role's virtualenv).
options:
  config:
    description: The guard's JSON configuration file on the node.
    type: path
    default: /etc/kubeha-apiserver/guard.json
  apply:
    description:
      - V(false) only probes and reports what would change (as check mode does), then runs the VIP check.
    type: bool
    default: true
  require_ready:
    description: Fail when no apiserver answers C(/readyz) (the proxy is still applied, failing open).
    type: bool
    default: true
  verify_timeout:
    description:
      - Seconds to wait until C(GET https://VIP:port/readyz) from the node succeeds, certificate verified
        against the cluster CA (for the name C(kubernetes), which every apiserver certificate carries).
      - V(0) skips this check. Skipped in check mode.
    type: int
    default: 60
"""

EXAMPLES = r"""
- name: Converge the local proxy now, with the guard's virtualenv
  kubeha.apiserver.apiserver_proxy:
    config: /etc/kubeha-apiserver/guard.json
  vars:
    ansible_python_interpreter: /opt/kubeha-apiserver/venv/bin/python
  register: proxy

- name: Show which apiservers this node can use
  ansible.builtin.debug:
    msg: "{{ proxy.backends | selectattr('ready') | map(attribute='backend') | list }}"
"""

RETURN = r"""
mode:
  description: The proxy mode of the node.
  type: str
  returned: always
  sample: ipvs
actions:
  description: What was (or would be) changed.
  type: list
  elements: str
  returned: always
  sample: ["updated IPVS service 169.254.100.1 port 6444"]
backends:
  description: The health table, one entry per apiserver.
  type: list
  elements: dict
  returned: always
  contains:
    backend:
      description: The apiserver, C(ADDRESS:PORT).
      type: str
    ready:
      description: Whether it answered C(/readyz) with C(ok) over verified TLS.
      type: bool
    latency_ms:
      description: The probe's duration.
      type: float
    weight:
      description: Its weight in the proxy (0 takes no new connections).
      type: int
    error:
      description: Why the probe failed, empty when ready.
      type: str
fail_open:
  description: True when no apiserver was ready and every backend was kept.
  type: bool
  returned: always
ready:
  description: How many apiservers are ready.
  type: int
  returned: always
vip_errors:
  description: Per VIP, why C(/readyz) through it failed; empty strings when it answered.
  type: dict
  returned: when O(verify_timeout) is not 0 and not in check mode
  sample: {"169.254.100.1": ""}
"""

from dataclasses import asdict  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.kubeha.apiserver.plugins.module_utils._converge import (  # noqa: E402
    converge,
    predict,
    wait_vip_ready,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_config import GuardError, load_config  # noqa: E402
from ansible_collections.kubeha.apiserver.plugins.module_utils._ipvs_model import IPVSError  # noqa: E402


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "config": {"type": "path", "default": "/etc/kubeha-apiserver/guard.json"},
            "apply": {"type": "bool", "default": True},
            "require_ready": {"type": "bool", "default": True},
            "verify_timeout": {"type": "int", "default": 60},
        },
        supports_check_mode=True,
    )
    try:
        cfg = load_config(module.params["config"])
        outcome = (
            predict(cfg) if module.check_mode or not module.params["apply"] else converge(cfg, module.params["config"])
        )
    except (GuardError, IPVSError) as exc:
        module.fail_json(msg=str(exc))
    result = asdict(outcome)
    if module.params["require_ready"] and outcome.ready == 0:
        module.fail_json(msg="no apiserver answers /readyz from this node: " + "; ".join(
            f"{b['backend']}: {b['error']}" for b in outcome.backends), **result)  # fmt: skip
    if module.params["verify_timeout"] and not module.check_mode:
        result["vip_errors"] = wait_vip_ready(cfg, module.params["verify_timeout"])
        failed = {vip: err for vip, err in result["vip_errors"].items() if err}
        if failed:
            module.fail_json(msg="the VIP does not answer /readyz from this node: " + "; ".join(
                f"{vip}:{cfg.port}: {err}" for vip, err in failed.items()), **result)  # fmt: skip
    module.exit_json(**result)


if __name__ == "__main__":
    main()
