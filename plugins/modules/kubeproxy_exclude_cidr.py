#!/usr/bin/python
# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: kubeproxy_exclude_cidr
short_description: Keep addresses in kube-proxy's ipvs.excludeCIDRs in the kubeadm ConfigMap
version_added: 0.1.0
description:
  - kube-proxy in IPVS mode deletes the IPVS virtual servers it does not own unless their address is inside
    one of its C(ipvs.excludeCIDRs). This module adds addresses or CIDRs to that list (or removes them) in
    the KubeProxyConfiguration that kubeadm keeps under the C(config.conf) key of the
    C(kube-system/kube-proxy) ConfigMap.
  - Only the C(excludeCIDRs) value under C(ipvs:) is rewritten; every other line of the configuration text
    is kept byte-for-byte. The edited text is parsed again and must equal the intended configuration,
    otherwise nothing is written.
  - The ConfigMap is updated with its C(resourceVersion) (optimistic concurrency) and the update is retried
    from a fresh read when someone else changed it in between.
  - Existing entries are kept in their order and spelling; new ones are appended in canonical form. Entries
    are compared as networks, so V(fd00::1/128) and V(FD00:0:0::1/128) are the same entry, but an address
    inside a wider listed CIDR is still added as its own entry.
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
    support: full
  platform:
    support: N/A
    platforms: linux
notes:
  - Runs on a control-plane node, where O(kubeconfig) exists; reading it usually needs C(become).
  - On a cluster whose kube-proxy is not managed by kubeadm (no C(kube-system/kube-proxy) ConfigMap) the
    module fails without changing anything; excludeCIDRs must then be set in kube-proxy's own configuration
    file or with its C(--ipvs-exclude-cidrs) flag.
  - The list is harmless when kube-proxy does not run in IPVS mode; the module then warns that it is not needed.
  - kube-proxy reads its configuration when it starts. With O(restart), its DaemonSet is restarted like
    C(kubectl rollout restart) does whenever its pods run another ConfigMap than the one there now; the DaemonSet
    carries the digest of the ConfigMap it was last restarted for (annotation
    C(kubeha.apiserver/restarted-for-configmap), recorded before a change), so a run that changed the ConfigMap
    and died before the restart is completed by the next run. A DaemonSet without that annotation is taken to
    run the ConfigMap as it is.
  - The restart is the C(kubectl rollout restart) patch of the pod template, which a C(kubernetes.core.k8s) task
    can make too (and wait for, with its C(wait)), with the Kubernetes Python client where it runs. This module
    makes it only when kube-proxy's pods run another ConfigMap than the one there now, which also completes a
    restart that a failed run left undone, and refuses an C(OnDelete) DaemonSet when waiting. Prefer
    C(kubernetes.core.k8s) to restart kube-proxy whatever its configuration, or for other objects.
options:
  cidrs:
    description:
      - IPv4 or IPv6 addresses or CIDRs, which may be mixed (dual-stack). A bare address stands for a
        V(/32) or V(/128).
      - A CIDR with host bits set, such as V(10.0.0.1/24), is refused. All values are checked before the
        apiserver is contacted.
    type: list
    elements: str
    required: true
  state:
    description:
      - V(present) adds the missing O(cidrs) at the end of the list; V(absent) removes them. Other entries
        are left alone. When the list becomes empty it is written as V(null), as kubeadm writes it.
    type: str
    choices: [present, absent]
    default: present
  namespace:
    description:
      - Namespace of the ConfigMap and of the DaemonSet.
    type: str
    default: kube-system
  configmap:
    description:
      - Name of the ConfigMap that holds kube-proxy's configuration.
    type: str
    default: kube-proxy
  key:
    description:
      - Key of the ConfigMap whose value is the KubeProxyConfiguration text.
    type: str
    default: config.conf
  restart:
    description:
      - When kube-proxy's pods run another ConfigMap than the one there now (this task changed it, or an
        earlier run changed it and did not get to the restart), restart kube-proxy's DaemonSet the way
        C(kubectl rollout restart) does, by setting the C(kubectl.kubernetes.io/restartedAt) annotation of
        its pod template; the same patch records the ConfigMap's digest on the DaemonSet. Not in check mode.
      - The DaemonSet must exist; this is checked before anything is written.
    type: bool
    default: false
  daemonset:
    description:
      - Name of kube-proxy's DaemonSet, for O(restart).
    type: str
    default: kube-proxy
  wait:
    description:
      - With O(restart), wait until the DaemonSet has rolled out, that is all its pods are updated and
        available.
    type: bool
    default: false
  wait_timeout:
    description:
      - How many seconds to wait for the rollout with O(wait).
    type: int
    default: 300
"""

EXAMPLES = r"""
- name: Keep kube-proxy away from the node-local apiserver addresses
  kubeha.apiserver.kubeproxy_exclude_cidr:
    cidrs:
      - 169.254.100.1
      - fd00:100::1
  become: true
  run_once: true

- name: Same, and restart kube-proxy now, waiting for it to be back everywhere
  kubeha.apiserver.kubeproxy_exclude_cidr:
    cidrs: [169.254.100.1/32, fd00:100::1/128]
    restart: true
    wait: true
    wait_timeout: 600
  become: true
  run_once: true

- name: Remove the addresses again
  kubeha.apiserver.kubeproxy_exclude_cidr:
    cidrs: [169.254.100.1, fd00:100::1]
    state: absent
  become: true
  run_once: true
"""

RETURN = r"""
exclude_cidrs:
  description:
    - The C(ipvs.excludeCIDRs) list after the change (or as it would be in check mode). Existing entries
      keep their spelling.
  returned: success
  type: list
  elements: str
  sample: [169.254.100.1/32, fd00:100::1/128]
mode:
  description: kube-proxy's C(mode) in the configuration; empty means the platform default (iptables on Linux).
  returned: success
  type: str
  sample: ipvs
mode_is_ipvs:
  description: Whether that mode is V(ipvs), the only mode where C(excludeCIDRs) matters.
  returned: success
  type: bool
  sample: true
restarted:
  description:
    - Whether kube-proxy's DaemonSet was restarted (in check mode, whether it would be). A restart is a change.
  returned: success
  type: bool
  sample: false
"""

from ansible_collections.kubeha.apiserver.plugins.module_utils._kubeapi import (  # noqa: E402
    KUBECONFIG_CONNECTION_SPEC,
    client_factory,
    connect,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._kubeproxy import KubeProxyConfigError, run  # noqa: E402
from ansible_collections.kubeha.apiserver.plugins.module_utils._module_runner import run_module  # noqa: E402

ARGUMENT_SPEC = {
    "cidrs": {"type": "list", "elements": "str", "required": True},
    "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
    "namespace": {"type": "str", "default": "kube-system"},
    "configmap": {"type": "str", "default": "kube-proxy"},
    "key": {"type": "str", "default": "config.conf", "no_log": False},
    "restart": {"type": "bool", "default": False},
    "daemonset": {"type": "str", "default": "kube-proxy"},
    "wait": {"type": "bool", "default": False},
    "wait_timeout": {"type": "int", "default": 300},
    **KUBECONFIG_CONNECTION_SPEC,
}

make_client = connect  # the apiserver client from the connection options; unit tests replace it


def main() -> None:
    run_module(
        ARGUMENT_SPEC,
        lambda module: run(module.params, client_factory(module.params, make_client), module.check_mode),
        KubeProxyConfigError,
    )


if __name__ == "__main__":
    main()
