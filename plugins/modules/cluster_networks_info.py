#!/usr/bin/python
# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: cluster_networks_info
short_description: Read a Kubernetes cluster's service and pod ranges
version_added: 0.1.0
description:
  - Reads the ranges a cluster gives Services and pods, so that a node-local VIP inside one of them can be
    refused before any change (the C(local_proxy) role's preflight adds them to C(local_proxy_forbidden_ranges)).
  - "Sources, each named in RV(found): kubeadm-config's C(networking) (C(serviceSubnet), C(podSubnet)), the Nodes'
    C(spec.podCIDRs), and on the node it runs on the flags of the control plane: C(--service-cluster-ip-range) of
    kube-apiserver, C(--cluster-cidr) and C(--service-cluster-ip-range) of kube-controller-manager, from the running
    processes (static pods or systemd units) and from kubeadm's static-pod manifests."
  - A source that is absent (no kubeadm-config on a cluster kubeadm did not make, no manifests on a binary install)
    is skipped; a value in a source that is not a CIDR is left out with a warning naming it.
  - Reads only.
author:
  - kubeha.apiserver developers (!UNKNOWN)
extends_documentation_fragment:
  - kubeha.apiserver.attributes
  - kubeha.apiserver.kubeconfig_connection
  - kubeha.apiserver.kubeconfig_security
requirements:
  - PyYAML
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    support: full
    platforms: linux
notes:
  - Runs on a control-plane node, where O(kubeconfig) and the control plane's processes are; reading them needs
    C(become).
options:
  manifest_dir:
    description:
      - Directory of kubeadm's static-pod manifests.
    type: path
    default: /etc/kubernetes/manifests
"""

EXAMPLES = r"""
- name: Read the cluster's service and pod ranges
  kubeha.apiserver.cluster_networks_info:
  become: true
  run_once: true
  register: cluster_networks

- name: Refuse a VIP inside them
  kubeha.apiserver.proxy_preflight:
    vip4: 169.254.100.1
    port: 6444
    backends: [192.0.2.11:6443]
    forbidden_ranges: "{{ cluster_networks.ranges }}"
"""

RETURN = r"""
ranges:
  description:
    - Every service and pod range found, once, leaving out those inside another (a Node's podCIDR inside
      C(--cluster-cidr)).
  returned: success
  type: list
  elements: str
  sample: [10.96.0.0/12, 10.244.0.0/16, fd00:10:96::/112]
service_ranges:
  description: The service ranges found.
  returned: success
  type: list
  elements: str
  sample: [10.96.0.0/12]
pod_ranges:
  description: The pod ranges found (the Nodes' podCIDRs included).
  returned: success
  type: list
  elements: str
  sample: [10.244.0.0/16, 10.244.1.0/24]
found:
  description: Each range as found, with where it was read.
  returned: success
  type: list
  elements: dict
  sample:
    - range: 10.96.0.0/12
      kind: service
      source: "kube-apiserver --service-cluster-ip-range (/etc/kubernetes/manifests/kube-apiserver.yaml)"
"""

from ansible_collections.kubeha.apiserver.plugins.module_utils._cluster_networks import ClusterNetworksError, run  # noqa: E402
from ansible_collections.kubeha.apiserver.plugins.module_utils._kubeapi import (  # noqa: E402
    KUBECONFIG_CONNECTION_SPEC,
    client_factory,
    connect,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._module_runner import run_module  # noqa: E402

ARGUMENT_SPEC = {
    "manifest_dir": {"type": "path", "default": "/etc/kubernetes/manifests"},
    **KUBECONFIG_CONNECTION_SPEC,
}

make_client = connect  # the apiserver client from the connection options; unit tests replace it


def main() -> None:
    run_module(
        ARGUMENT_SPEC,
        lambda module: run(module.params, client_factory(module.params, make_client)),
        ClusterNetworksError,
        diff=False,
    )


if __name__ == "__main__":
    main()
