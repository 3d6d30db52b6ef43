#!/usr/bin/python
# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: cluster_endpoint
short_description: Point the cluster's own objects at the node-local apiserver endpoint
version_added: 0.1.0
description:
  - Makes the objects through which nodes and kube-proxy find kube-apiserver name the node-local endpoint
    (by default U(https://169.254.100.1:6444)) that the C(local_proxy) role serves on every node. The targets
    are the following.
  - V(cluster_info) - the C(server) of the kubeconfig under the C(kubeconfig) key of the
    C(kube-public/cluster-info) ConfigMap, which C(kubeadm join) reads to find the cluster.
  - V(kube_proxy) - the C(server) of the kubeconfig under the C(kubeconfig.conf) key of the
    C(kube-system/kube-proxy) ConfigMap, which kube-proxy uses when kubeadm manages it.
  - V(kubeadm_config) - the entries O(cert_sans) in C(apiServer.certSANs) of the ClusterConfiguration that
    kubeadm keeps under the C(ClusterConfiguration) key of the C(kube-system/kubeadm-config) ConfigMap, so that
    C(kubeadm) issues later apiserver certificates (upgrades, new masters) for the endpoint too.
  - Only the characters of the C(server) value, or the lines of the C(certSANs) entries, are rewritten; every
    other byte of the texts is kept. The edited text is parsed again and must equal the intended document,
    otherwise nothing is written.
  - The server a kubeconfig had before is kept in the ConfigMap's annotation C(kubeha.apiserver/original-server),
    and O(state=absent) puts exactly that value back and removes the annotation, so the ConfigMap is as it
    was.
  - C(controlPlaneEndpoint) of the ClusterConfiguration is never changed, on purpose. C(kubeadm join) and
    C(kubeadm upgrade) use it, and so do the kubeconfigs and certificates kubeadm writes on other machines;
    the node-local endpoint only exists on the nodes that run the local proxy, so a machine without it (a
    new node before the proxy is installed, an administrator's workstation) could no longer reach the cluster.
    The apiserver certificates must still carry the endpoint's address, which is what O(cert_sans) records.
  - Every target is read and planned before anything is written, so a missing or unreadable object fails the
    task with nothing changed. Each ConfigMap is updated with its C(resourceVersion) (optimistic concurrency)
    and the update is retried from a fresh read when someone else changed it in between.
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
    details:
      - One diff per ConfigMap, of the edited key's text; for a kubeconfig the annotation is shown as a first
        comment line.
  platform:
    support: N/A
    platforms: linux
notes:
  - Runs on a control-plane node, where O(kubeconfig) exists; reading it usually needs C(become). Run it once
    per cluster (C(run_once)).
  - Apply it once the local proxy runs on every node, and after the apiserver certificates carry the endpoint's
    address; a kubeconfig pointing at an endpoint that is not there, or whose certificate does not name it,
    fails its TLS connections.
  - The C(jws-kubeconfig-<token id>) keys of cluster-info are detached JWS signatures (HS256, keyed with the
    bootstrap token's secret) of its kubeconfig. kube-controller-manager's C(bootstrapsigner) controller
    recomputes them after the kubeconfig changes; C(kubeadm join --discovery-token) refuses cluster-info until
    then. With O(wait_signed) the module waits for it and checks every signature itself.
  - kube-proxy reads its kubeconfig when it starts, so it uses the new server from its next restart on.
  - C(kubeadm upgrade apply) rewrites the C(kube-system/kube-proxy) ConfigMap from C(controlPlaneEndpoint); run
    this module again after an upgrade.
  - C(kubernetes.core.k8s) can write these ConfigMaps too, as whole values, with the Kubernetes Python client where
    it runs. This module changes only the characters of the server and the lines of C(certSANs), keeps the server
    it replaced so that O(state=absent) restores it, and checks cluster-info's bootstrap signatures.
    Its kube-proxy restart is the C(kubectl rollout restart) patch of the pod template, which a C(kubernetes.core.k8s)
    task can make too; this module makes it only when kube-proxy's pods run another ConfigMap than the one there now,
    which also completes a restart that a failed run left undone. Prefer C(kubernetes.core.k8s) for other objects, or
    to restart a workload whatever its configuration, from a controller that has the Kubernetes Python client.
  - Changing C(certSANs) in kubeadm-config does not reissue any certificate; the certificates on the masters
    must be reissued (for example C(kubeadm init phase certs apiserver) with the same configuration) for
    clients to accept the endpoint. The module warns when the server's host is not among the SANs.
seealso:
  - module: kubeha.apiserver.kubeproxy_exclude_cidr
  - module: kubeha.apiserver.apiserver_proxy
options:
  server:
    description:
      - The node-local endpoint, an C(https://) URL with an IP address or DNS name and usually a port, such as
        V(https://169.254.100.1:6444) or V(https://[fd6b:6861::1]:6444) (an IPv6 address in brackets). No path,
        query or user information. It is written in canonical form (lower case, IPv6 compressed).
      - Required with O(state=present). With O(state=absent) it is optional; when given, a kubeconfig that
        points at it without the annotation is reported in a warning.
    type: str
  cert_sans:
    description:
      - IP addresses and DNS names (a leading V(*.) wildcard is allowed) to have in C(apiServer.certSANs) of
        kubeadm's ClusterConfiguration. Addresses are compared as addresses and names without regard to case;
        existing entries keep their spelling and order, new ones are appended in canonical form.
      - With O(state=absent), exactly these entries are removed and no others.
      - IPv6 addresses are written without brackets; networks (V(10.0.0.0/8)) are refused.
    type: list
    elements: str
    default: []
  targets:
    description:
      - The objects to handle, see the description. Leave out those a cluster does not have, such as
        V(kube_proxy) where kube-proxy is not deployed by kubeadm.
    type: list
    elements: str
    choices: [cluster_info, kubeadm_config, kube_proxy]
    default: [cluster_info, kubeadm_config, kube_proxy]
  state:
    description:
      - V(present) points the kubeconfigs at O(server) and adds O(cert_sans).
      - V(absent) restores the server each kubeconfig had before (from the annotation; a ConfigMap without it
        is left alone) and removes O(cert_sans).
    type: str
    choices: [present, absent]
    default: present
  kubeadm_config_required:
    description:
      - When V(false), a cluster without the C(kube-system/kubeadm-config) ConfigMap (or without its
        C(ClusterConfiguration) key), that is one not set up with kubeadm, is skipped with a message in the
        result and a warning. When V(true), that fails the task before anything is changed.
    type: bool
    default: false
  wait_signed:
    description:
      - After the change (and also when nothing changed), wait until the C(jws-kubeconfig-<id>) signature of
        every bootstrap token that signs cluster-info (a C(bootstrap.kubernetes.io/token) secret in
        C(kube-system) with C(usage-bootstrap-signing=true) that has not expired) validates against the
        kubeconfig now in cluster-info, computing the signature as C(kubeadm join) does.
      - Needs permission to read secrets in C(kube-system). Only with the V(cluster_info) target; never in check
        mode.
    type: bool
    default: false
  restart_kube_proxy:
    description:
      - Name of kube-proxy's DaemonSet in C(kube-system) to restart (as C(kubectl rollout restart) does) when its
        pods run another C(kube-proxy) ConfigMap than the one there now, since kube-proxy reads C(kubeconfig.conf)
        only when it starts. The DaemonSet carries the digest of the ConfigMap it was last restarted for (annotation
        C(kubeha.apiserver/restarted-for-configmap), recorded before a change), so a run that changed the target and
        died before the restart is completed by the next run; without that annotation the pods are taken to run
        the ConfigMap as it is. The DaemonSet is read before anything is written.
      - Empty (the default) restarts nothing. Where kube-proxy is a systemd unit, restart the unit instead.
    type: str
    default: ""
  timeout:
    description:
      - How many seconds to wait for the signatures with O(wait_signed). On timeout the task fails and names
        the tokens whose signature is still out of date.
    type: int
    default: 120
"""

EXAMPLES = r"""
- name: Point cluster-info and kube-proxy at the node-local endpoint, record its SANs for kubeadm
  kubeha.apiserver.cluster_endpoint:
    server: https://169.254.100.1:6444
    cert_sans: [169.254.100.1]
    wait_signed: true
  become: true
  run_once: true

- name: Dual-stack cluster reached over IPv6
  kubeha.apiserver.cluster_endpoint:
    server: https://[fd6b:6861::1]:6444
    cert_sans: [169.254.100.1, fd6b:6861::1]
  become: true
  run_once: true

- name: Only kubeadm's discovery information, on a cluster whose kube-proxy is not deployed by kubeadm
  kubeha.apiserver.cluster_endpoint:
    server: https://169.254.100.1:6444
    targets: [cluster_info]
  become: true
  run_once: true

- name: Put back the servers the objects had, and remove the SANs
  kubeha.apiserver.cluster_endpoint:
    cert_sans: [169.254.100.1, fd6b:6861::1]
    state: absent
    wait_signed: true
  become: true
  run_once: true
"""

RETURN = r"""
server:
  description: The endpoint in canonical form, or V(null) when it was not given (O(state=absent)).
  returned: success
  type: str
  sample: https://169.254.100.1:6444
changed_objects:
  description: The ConfigMaps that were changed (in check mode, that would be changed), as C(namespace/name).
  returned: success
  type: list
  elements: str
  sample: [kube-public/cluster-info, kube-system/kube-proxy]
kube_proxy_restarted:
  description:
    - Whether kube-proxy's DaemonSet was restarted (in check mode, whether it would be); see O(restart_kube_proxy).
      A restart is a change.
  returned: success
  type: bool
  sample: true
signed_tokens:
  description:
    - With O(wait_signed), the ids of the bootstrap tokens whose signature of cluster-info was checked and
      valid; otherwise empty.
  returned: success
  type: list
  elements: str
  sample: [abcdef]
objects:
  description:
    - One entry per target in O(targets), keyed by the target's name, saying what it was and is (or would be
      in check mode).
  returned: success
  type: dict
  contains:
    cluster_info:
      description:
        - The C(kube-public/cluster-info) ConfigMap.
        - Has the keys C(object), C(key), C(changed), C(skipped), C(message), C(before) and C(after) (the
          server before and after) and C(original_server) (the value of the annotation after the task, V(null)
          when there is none).
      returned: when V(cluster_info) is in O(targets)
      type: dict
      sample:
        object: kube-public/cluster-info
        key: kubeconfig
        changed: true
        skipped: false
        before: https://10.0.0.11:6443
        after: https://169.254.100.1:6444
        original_server: https://10.0.0.11:6443
        message: ""
    kube_proxy:
      description:
        - The C(kube-system/kube-proxy) ConfigMap, with the same keys as RV(objects.cluster_info).
      returned: when V(kube_proxy) is in O(targets)
      type: dict
      sample:
        object: kube-system/kube-proxy
        key: kubeconfig.conf
        changed: true
        skipped: false
        before: https://10.0.0.11:6443
        after: https://169.254.100.1:6444
        original_server: https://10.0.0.11:6443
        message: ""
    kubeadm_config:
      description:
        - The C(kube-system/kubeadm-config) ConfigMap.
        - Has the keys C(object), C(key), C(changed), C(message), C(skipped) (V(true) when the cluster has no
          kubeadm-config; C(message) says why), C(before) and C(after) (the C(apiServer.certSANs) lists),
          C(added), C(removed) and C(control_plane_endpoint) (as found, never changed).
      returned: when V(kubeadm_config) is in O(targets)
      type: dict
      sample:
        object: kube-system/kubeadm-config
        key: ClusterConfiguration
        changed: true
        skipped: false
        before: [10.0.0.11, cp1]
        after: [10.0.0.11, cp1, 169.254.100.1]
        added: [169.254.100.1]
        removed: []
        control_plane_endpoint: 10.0.0.11:6443
        message: ""
"""

from ansible_collections.kubeha.apiserver.plugins.module_utils._cluster_endpoint import run  # noqa: E402
from ansible_collections.kubeha.apiserver.plugins.module_utils._cluster_endpoint_input import (  # noqa: E402
    TARGETS,
    ClusterEndpointError,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._kubeapi import (  # noqa: E402
    KUBECONFIG_CONNECTION_SPEC,
    client_factory,
    connect,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._module_runner import run_module  # noqa: E402

ARGUMENT_SPEC = {
    "server": {"type": "str"},
    "cert_sans": {"type": "list", "elements": "str", "default": []},
    "targets": {"type": "list", "elements": "str", "choices": list(TARGETS), "default": list(TARGETS)},
    "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
    "kubeadm_config_required": {"type": "bool", "default": False},
    "wait_signed": {"type": "bool", "default": False},
    "restart_kube_proxy": {"type": "str", "default": ""},
    "timeout": {"type": "int", "default": 120},
    **KUBECONFIG_CONNECTION_SPEC,
}

make_client = connect  # the apiserver client from the connection options; unit tests replace it


def main() -> None:
    run_module(
        ARGUMENT_SPEC,
        lambda module: run(module.params, client_factory(module.params, make_client), module.check_mode),
        ClusterEndpointError,
        required_if=[("state", "present", ["server"])],
    )


if __name__ == "__main__":
    main()
