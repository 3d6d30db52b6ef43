#!/usr/bin/python
# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: discovery_access
short_description: Let the nodes read the apiservers' EndpointSlice, and nothing more
version_added: 0.1.0
description:
  - The guard of the C(local_proxy) role finds the apiservers by reading the EndpointSlice C(kubernetes) that
    they keep for the C(default/kubernetes) Service, authenticating with the node's kubelet client certificate
    (user C(system:node:<name>), group C(system:nodes)). The Node authorizer and the default RBAC roles do not let
    nodes read EndpointSlices in that namespace; this module grants exactly that.
  - It keeps a Role with one rule, verb V(get) on the C(endpointslices) of API group C(discovery.k8s.io) named
    C(kubernetes) (C(resourceNames)), and a RoleBinding of the same name that grants it to O(subjects) (by
    default the group C(system:nodes)). No V(list) or V(watch), which Kubernetes cannot restrict to names. Both
    objects are labelled C(app.kubernetes.io/managed-by=kubeha.apiserver).
  - Only the fields the module owns are compared, so a second run changes nothing - the rules, the roleRef,
    the subjects (as a set) and that label. Other labels, annotations and the metadata the apiserver fills
    in are left alone. An existing object without the label is taken over (with a warning).
  - The roleRef of a RoleBinding cannot be changed in Kubernetes. A RoleBinding of that name that refers to
    another role is deleted and created again (only if it is still the object that was read - uid and
    resourceVersion as preconditions); the result says so. Between the two requests the subjects lose the
    access the old binding gave.
  - Both objects are read and planned before anything is written, so invalid input, a missing permission to
    read them, a missing namespace or an object of that name not managed by this module (with O(state=absent))
    fail the task with nothing changed. Updates use the object's C(resourceVersion) and are retried from a fresh
    read when someone else changed it in between.
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
      - One diff per object, of the fields the module owns (the label, the rules; the roleRef and subjects).
        An object that does not exist is shown as an empty mapping.
  platform:
    support: N/A
    platforms: linux
notes:
  - Runs on a control-plane node, where O(kubeconfig) exists; reading it usually needs C(become). Run it once
    per cluster (C(run_once)).
  - The kubeconfig's user needs C(get), C(create), C(update) and C(delete) on C(roles) and C(rolebindings) in
    O(namespace), and, to grant what it does not hold itself, the C(escalate) and C(bind) verbs; the
    C(cluster-admin) role of C(/etc/kubernetes/admin.conf) on a kubeadm cluster has all of them.
  - C(kubernetes.core.k8s) creates and updates a Role and a RoleBinding too, from their definitions, with the
    Kubernetes Python client where it runs. This module also refuses subjects that stand for everyone, compares only
    the fields it owns (a second run changes nothing), deletes and creates again a RoleBinding whose roleRef differs
    (the apiserver refuses to change a roleRef, so an update of such a binding fails), and with O(state=absent)
    deletes only the objects it labelled. Prefer C(kubernetes.core.k8s) for other RBAC objects, or where the grant is
    kept with the cluster's other manifests.
seealso:
  - name: Using RBAC Authorization
    description: Roles, RoleBindings and why a roleRef cannot change.
    link: https://kubernetes.io/docs/reference/access-authn-authz/rbac/
  - name: Using Node Authorization
    description: What the Node authorizer lets kubelets do.
    link: https://kubernetes.io/docs/reference/access-authn-authz/node/
options:
  state:
    description:
      - V(present) creates or corrects both objects. V(absent) deletes the RoleBinding, then the Role; an
        object of that name without the label C(app.kubernetes.io/managed-by=kubeha.apiserver) is not deleted
        and fails the task.
    type: str
    choices: [present, absent]
    default: present
  name:
    description:
      - Name of the Role and of the RoleBinding.
    type: str
    default: kubeha-apiserver:discovery
  namespace:
    description:
      - Namespace of both objects, which is the namespace the EndpointSlices can then be read in. The guard reads
        those of the C(kubernetes) Service, which lives in V(default).
      - It must exist.
    type: str
    default: default
  subjects:
    description:
      - Who is granted the access. The order does not matter and duplicates are written once.
      - The default is every node (kubelets authenticate in the group C(system:nodes)).
      - Subjects that stand for everyone or every workload are refused (C(system:authenticated),
        C(system:unauthenticated), C(system:anonymous), C(system:serviceaccounts) and its per-namespace groups).
    type: list
    elements: dict
    default:
      - kind: Group
        name: system:nodes
    suboptions:
      kind:
        description:
          - The kind of subject. The C(apiGroup) follows from it (V(rbac.authorization.k8s.io) for V(User) and
            V(Group), the core group for V(ServiceAccount)).
        type: str
        required: true
        choices: [User, Group, ServiceAccount]
      name:
        description:
          - The user, group or service account name, such as V(system:node:w1) or V(system:nodes).
        type: str
        required: true
      namespace:
        description:
          - The namespace of a V(ServiceAccount); when left out, O(namespace). Refused for V(User) and V(Group).
        type: str
"""

EXAMPLES = r"""
- name: Let every node's guard discover the apiservers
  kubeha.apiserver.discovery_access:
  become: true
  run_once: true

- name: Only two nodes, under a name of our own
  kubeha.apiserver.discovery_access:
    name: apiserver-discovery
    subjects:
      - kind: User
        name: system:node:w1
      - kind: User
        name: system:node:w2
  become: true
  run_once: true

- name: A service account (in namespace monitoring) may read the apiserver EndpointSlices too
  kubeha.apiserver.discovery_access:
    name: kubeha-apiserver:discovery
    subjects:
      - kind: Group
        name: system:nodes
      - kind: ServiceAccount
        name: prometheus
        namespace: monitoring
  become: true
  run_once: true

- name: Take the access away again
  kubeha.apiserver.discovery_access:
    state: absent
  become: true
  run_once: true
"""

RETURN = r"""
actions:
  description:
    - What was done, one line per changed object (in check mode, what would be done); empty when nothing
      changed. A recreated RoleBinding says why.
  returned: success, or failure after a change
  type: list
  elements: str
  sample:
    - created Role default/kubeha-apiserver:discovery
    - created RoleBinding default/kubeha-apiserver:discovery
role:
  description: The Role.
  returned: success, or failure after a change
  type: dict
  contains:
    kind:
      description: V(Role).
      type: str
      sample: Role
    namespace:
      description: Its namespace.
      type: str
      sample: default
    name:
      description: Its name.
      type: str
      sample: kubeha-apiserver:discovery
    action:
      description:
        - V(created), V(updated), V(deleted) or V(unchanged), or V(absent) when it does not exist and should
          not. In check mode, what would be done.
      type: str
      sample: created
    changed:
      description: Whether it was (or would be) changed.
      type: bool
      sample: true
    exists:
      description: Whether it exists afterwards.
      type: bool
      sample: true
    reason:
      description: Why, when the action needs explaining; otherwise empty.
      type: str
      sample: ""
    rules:
      description: Its rules afterwards, only their non-empty fields; empty when it does not exist.
      type: list
      elements: dict
      sample:
        - apiGroups: [discovery.k8s.io]
          resources: [endpointslices]
          resourceNames: [kubernetes]
          verbs: [get]
role_binding:
  description: The RoleBinding, with the keys of RV(role) except C(rules).
  returned: success, or failure after a change
  type: dict
  contains:
    kind:
      description: V(RoleBinding).
      type: str
      sample: RoleBinding
    namespace:
      description: Its namespace.
      type: str
      sample: default
    name:
      description: Its name.
      type: str
      sample: kubeha-apiserver:discovery
    action:
      description:
        - As for RV(role.action), and V(recreated) when it referred to another role and was deleted and created
          again, since a roleRef cannot be changed.
      type: str
      sample: recreated
    changed:
      description: Whether it was (or would be) changed.
      type: bool
      sample: true
    exists:
      description: Whether it exists afterwards.
      type: bool
      sample: true
    reason:
      description: Why, when the action needs explaining (the old roleRef of a recreated binding); otherwise empty.
      type: str
      sample: >-
        its roleRef ClusterRole 'view' (apiGroup 'rbac.authorization.k8s.io') cannot be changed in place (roleRef
        is immutable), so it was deleted and created again with Role 'kubeha-apiserver:discovery'
    role_ref:
      description: Its roleRef afterwards; empty when it does not exist.
      type: dict
      sample: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: "kubeha-apiserver:discovery"}
    subjects:
      description: Its subjects afterwards; empty when it does not exist.
      type: list
      elements: dict
      sample:
        - {kind: Group, apiGroup: rbac.authorization.k8s.io, name: "system:nodes"}
"""

from ansible_collections.kubeha.apiserver.plugins.module_utils._discovery_access import run  # noqa: E402
from ansible_collections.kubeha.apiserver.plugins.module_utils._discovery_subjects import (  # noqa: E402
    DEFAULT_NAME,
    DEFAULT_NAMESPACE,
    DEFAULT_SUBJECTS,
    SUBJECT_KINDS,
    DiscoveryAccessError,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._kubeapi import (  # noqa: E402
    KUBECONFIG_CONNECTION_SPEC,
    client_factory,
    connect,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._module_runner import run_module  # noqa: E402

ARGUMENT_SPEC = {
    "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
    "name": {"type": "str", "default": DEFAULT_NAME},
    "namespace": {"type": "str", "default": DEFAULT_NAMESPACE},
    "subjects": {
        "type": "list",
        "elements": "dict",
        "default": [dict(s) for s in DEFAULT_SUBJECTS],
        "options": {
            "kind": {"type": "str", "required": True, "choices": list(SUBJECT_KINDS)},
            "name": {"type": "str", "required": True},
            "namespace": {"type": "str"},
        },
    },
    **KUBECONFIG_CONNECTION_SPEC,
}

make_client = connect  # the apiserver client from the connection options; unit tests replace it


def main() -> None:
    run_module(
        ARGUMENT_SPEC,
        lambda module: run(module.params, client_factory(module.params, make_client), module.check_mode),
        DiscoveryAccessError,
    )


if __name__ == "__main__":
    main()
