#!/usr/bin/python
# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: apiserver_readyz
short_description: Wait until kube-apiservers answer /readyz from the node, the cluster CA verified
version_added: 0.1.0
description:
  - Sends C(GET /readyz) over HTTPS from the node the task runs on to each of O(endpoints), the certificate verified
    against the cluster CA (O(ca_file)) and, with a client certificate when one is given, so that it works with
    C(--anonymous-auth=false). An endpoint is ready when it answers status 200 with the body C(ok).
  - The probes are those of the proxy's guard (the same code), each bounded by one hard deadline, O(timeout), that
    covers the connect, the TLS handshake, the request and the answer.
  - Probes in rounds, O(interval) apart, until O(require) holds (V(all) of the endpoints, or V(any) of them) or
    O(wait) seconds have passed. An endpoint that answered ready once is not probed again. With O(wait=0) it probes
    once.
  - "Fails when the requirement does not hold, naming each endpoint that is not ready and why (for example
    C(192.0.2.1:6443 does not answer /readyz: connection refused)); the return values go with the failure."
  - Fails before any probe on bad input, naming the value - a malformed endpoint, a CA file or client certificate
    that cannot be loaded, a client key without its certificate, a certificate without a key.
  - Changes nothing (RV(ignore:changed) is always V(false)), and probes in check mode too.
author:
  - kubeha.apiserver developers (!UNKNOWN)
extends_documentation_fragment:
  - kubeha.apiserver.attributes
attributes:
  check_mode:
    support: full
    details:
      - Probes in check mode as in a normal run; it only reads.
  diff_mode:
    support: none
  platform:
    support: full
    platforms: posix
notes:
  - It checks reachability from the node it runs on; use C(delegate_to) to probe from another node.
  - Needs only Python's standard library on the node.
  - The whole task takes at most O(wait) plus O(timeout) seconds - a round starts only before O(wait) has passed.
seealso:
  - module: kubeha.apiserver.apiserver_proxy
options:
  endpoints:
    description:
      - The apiservers, as C(ADDRESS:PORT), an IPv6 address in brackets (C([ADDRESS]:PORT)). IP addresses only.
      - An empty list satisfies O(require=all) without any probe.
    type: list
    elements: str
    required: true
  ca_file:
    description:
      - The cluster CA certificate (PEM) on the node; the only CA the served certificates are verified against.
    type: path
    required: true
  client_cert_file:
    description:
      - A client certificate (PEM) on the node, presented to every endpoint. Without it the probes are anonymous.
      - When O(client_key_file) is not given, this file must hold the private key too.
    type: path
  client_key_file:
    description:
      - The private key of O(client_cert_file); only with O(client_cert_file).
    type: path
  server_name:
    description:
      - The name the served certificates must carry (and the TLS server name sent), for all endpoints.
      - Not given, each certificate must carry the endpoint's IP address.
      - V(kubernetes), which every apiserver certificate carries, for a VIP that the certificates may not name.
    type: str
  timeout:
    description: Seconds one probe may take in all, connect to answer.
    type: float
    default: 3
  wait:
    description: Seconds to keep probing until O(require) holds; V(0) probes once.
    type: float
    default: 0
  interval:
    description: Seconds between two rounds of probes.
    type: float
    default: 1
  require:
    description: V(all) - every endpoint must be ready; V(any) - one is enough.
    type: str
    choices: [all, any]
    default: all
"""

EXAMPLES = r"""
- name: Wait (30 s at most) until every other master answers /readyz, checked from this master
  kubeha.apiserver.apiserver_readyz:
    endpoints: [10.0.0.12:6443, "[fd00::13]:6443"]
    ca_file: /etc/kubernetes/pki/ca.crt
    client_cert_file: /etc/kubernetes/pki/apiserver-kubelet-client.crt
    client_key_file: /etc/kubernetes/pki/apiserver-kubelet-client.key
    wait: 30
    interval: 2

- name: Is one master ready for this node (one round, no failure)
  kubeha.apiserver.apiserver_readyz:
    endpoints: [10.0.0.11:6443, 10.0.0.12:6443, 10.0.0.13:6443]
    ca_file: /etc/kubernetes/pki/ca.crt
    require: any
  register: masters
  failed_when: false

- name: Wait until the apiservers answer through the node-local VIP
  kubeha.apiserver.apiserver_readyz:
    endpoints: [169.254.100.1:6444]
    ca_file: /etc/kubernetes/pki/ca.crt
    server_name: kubernetes
    wait: 60
"""

RETURN = r"""
probes:
  description: One entry per endpoint given, in the order given.
  type: list
  elements: dict
  returned: always, unless the input is refused
  contains:
    endpoint:
      description: The endpoint, normalised (C(ADDRESS:PORT), an IPv6 address in brackets).
      type: str
      sample: 10.0.0.12:6443
    ready:
      description: Whether it answered C(/readyz) with status 200 and C(ok), its certificate verified.
      type: bool
      sample: true
    reason:
      description: Why it is not ready (from its last probe); empty when it is ready.
      type: str
      sample: connection refused
    elapsed:
      description: Seconds its last probe took.
      type: float
      sample: 0.012
    attempts:
      description: How many rounds probed it.
      type: int
      sample: 1
ready:
  description: The endpoints that answered ready, normalised, in the order given.
  type: list
  elements: str
  returned: always, unless the input is refused
  sample: ["10.0.0.12:6443"]
not_ready:
  description: The endpoints that did not, normalised, in the order given.
  type: list
  elements: str
  returned: always, unless the input is refused
  sample: ["[fd00::13]:6443"]
elapsed:
  description: Seconds the whole wait took.
  type: float
  returned: always, unless the input is refused
  sample: 2.031
"""

from ansible_collections.kubeha.apiserver.plugins.module_utils._module_runner import run_module  # noqa: E402
from ansible_collections.kubeha.apiserver.plugins.module_utils._readyz import ReadyzError, run  # noqa: E402

ARGUMENT_SPEC = {
    "endpoints": {"type": "list", "elements": "str", "required": True},
    "ca_file": {"type": "path", "required": True},
    "client_cert_file": {"type": "path"},
    "client_key_file": {"type": "path"},
    "server_name": {"type": "str"},
    "timeout": {"type": "float", "default": 3},
    "wait": {"type": "float", "default": 0},
    "interval": {"type": "float", "default": 1},
    "require": {"type": "str", "choices": ["all", "any"], "default": "all"},
}


def main() -> None:
    run_module(ARGUMENT_SPEC, lambda module: run(module.params), ReadyzError, diff=False)


if __name__ == "__main__":
    main()
