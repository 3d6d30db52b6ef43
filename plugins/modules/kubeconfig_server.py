#!/usr/bin/python
# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: kubeconfig_server
short_description: Point a kubeconfig file on a node at another apiserver endpoint, proven with its own credentials
version_added: 0.1.0
description:
  - Rewrites the C(server) of the cluster that the current context of a kubeconfig file uses (kubelet's
    C(/etc/kubernetes/kubelet.conf), a kube-proxy kubeconfig...), typically to the node-local endpoint
    U(https://169.254.100.1:6444) that the C(kubeha.apiserver.local_proxy) role serves on every node.
  - Before writing, and by default, proves that the new server works for this very file. It sends one
    authenticated request, a C(SelfSubjectReview) (C(POST /apis/authentication.k8s.io/v1/selfsubjectreviews),
    which any authenticated identity may make and which stores nothing), to the new server with the file's own
    credentials (client certificate or token) and the cluster CA it names, and returns the user the apiserver
    reports, for example C(system:node:w1). When that fails (connection refused, a certificate that does not
    name the server, credentials refused) the task fails naming the server and the error, and the file is not
    touched.
  - Only the characters of that one C(server) value change; every other byte of the file stays as it is (other
    clusters of a kubeconfig with several are never changed). The edited text is parsed again and must equal
    the intended document, otherwise nothing is written. The file is replaced atomically and keeps its mode
    and owner.
  - The first time the file is changed, an exact copy of it is kept as C(<path>.kubeha-orig) (never
    overwritten later). O(state=absent) puts that copy back, byte for byte, when the file differs from it only
    in the server value, and removes the copy; when the file was changed in other ways since (a certificate
    renewed by another tool, say), it warns and leaves both files as they are.
  - Nothing restarts the program that reads the file; that is the caller's job (the
    C(kubeha.apiserver.kubeconfig_endpoint) role restarts the unit, verifies again and rolls back).
author:
  - kubeha.apiserver developers (!UNKNOWN)
extends_documentation_fragment:
  - kubeha.apiserver.attributes
  - kubeha.apiserver.kubeconfig_security
requirements:
  - PyYAML
attributes:
  check_mode:
    support: full
    details:
      - The verification still runs in check mode (a SelfSubjectReview changes nothing), so check mode also
        tells whether the change would be accepted.
  diff_mode:
    support: full
    details:
      - The text before and after. Values of C(client-key-data), C(token) and C(password) are replaced by a
        placeholder on both sides, so the diff never shows a private key or a token.
  platform:
    support: full
    platforms: posix
notes:
  - Reading and writing the files of C(/etc/kubernetes) usually needs C(become).
  - For O(verify), the new server's certificate must name its host (for the node-local endpoint, the VIP must be
    among the SANs of every apiserver's serving certificate; see the C(kubeha.apiserver.apiserver_cert_sans)
    role) and must be signed by the CA the kubeconfig names.
  - Proxy variables of the environment (C(HTTPS_PROXY)) are ignored; the server is reached directly. Kubeconfig
    credential plugins (C(exec), C(auth-provider)), C(proxy-url) and C(tls-server-name) cannot be verified; use
    O(verify=false) for such files.
seealso:
  - module: kubeha.apiserver.cluster_endpoint
  - module: kubeha.apiserver.apiserver_proxy
options:
  path:
    description:
      - The kubeconfig file. It must have a C(current-context) whose cluster has a C(server).
    type: path
    required: true
  server:
    description:
      - The endpoint to point the file at, an C(https://) URL with an IP address or DNS name and usually a port,
        such as V(https://169.254.100.1:6444) or V(https://[fd6b:6861::1]:6444) (an IPv6 address in brackets).
        No path, query or user information. It is written in canonical form (lower case, IPv6 compressed), and a
        file already naming it in another spelling is left as it is.
      - Required with O(state=present). With O(state=absent) it is optional; when given, a file that points at
        it without a C(<path>.kubeha-orig) copy is reported in a warning.
    type: str
  state:
    description:
      - V(present) points the file at O(server).
      - V(absent) restores C(<path>.kubeha-orig) as described above and removes it.
    type: str
    choices: [present, absent]
    default: present
  verify:
    description:
      - Before writing, make the authenticated request described above to the server about to be written (with
        O(state=absent), the original server) and fail, writing nothing, when it does not succeed.
      - Not made when nothing is to be written, unless O(verify_always).
    type: bool
    default: true
  verify_always:
    description:
      - Also verify when the file already points at O(server) (nothing to write). Use it to check a file after
        the program that reads it was restarted. Needs O(verify).
    type: bool
    default: false
  backup:
    description:
      - Before replacing the file, keep a copy of it next to it, named C(<path>.<pid>.<YYYY-MM-DD@HH:MM:SS>~)
        as Ansible's other modules name backups; its name is returned in RV(backup_file).
      - Only the three newest such backups are kept (older ones are removed after the new one is made); the copy
        of the original, C(<path>.kubeha-orig), is never removed by this option.
    type: bool
    default: true
  restart_marker:
    description:
      - A file holding the SHA-256 of the kubeconfig's content that the service reading it last started with.
        Before the file is changed, a missing marker records the content as it is (what the service runs now).
      - RV(restart_due) then says whether the service runs other content than the file's, also when an earlier
        run changed the file and died before restarting the service. Record RV(digest) in the marker once the
        service has restarted (the P(kubeha.apiserver.kubeconfig_endpoint#role) role does).
      - Without it RV(restart_due) is always V(false).
    type: path
  timeout:
    description:
      - Seconds to wait for the server's answer when verifying.
    type: int
    default: 10
"""

EXAMPLES = r"""
- name: Point kubelet at the node-local endpoint, after proving it works with kubelet's own certificate
  kubeha.apiserver.kubeconfig_server:
    path: /etc/kubernetes/kubelet.conf
    server: https://169.254.100.1:6444
  become: true
  register: kubelet_kubeconfig

- name: Restart kubelet when its kubeconfig changed
  ansible.builtin.systemd_service:
    name: kubelet.service
    state: restarted
  become: true
  when: kubelet_kubeconfig.changed

- name: Check it again after the restart (nothing to write, one authenticated request)
  kubeha.apiserver.kubeconfig_server:
    path: /etc/kubernetes/kubelet.conf
    server: https://169.254.100.1:6444
    verify_always: true
  become: true

- name: Put back the server the file had before
  kubeha.apiserver.kubeconfig_server:
    path: /etc/kubernetes/kubelet.conf
    state: absent
  become: true
"""

RETURN = r"""
path:
  description: The kubeconfig file.
  returned: always
  type: str
  sample: /etc/kubernetes/kubelet.conf
server:
  description: O(server) in canonical form, or V(null) when it was not given.
  returned: success
  type: str
  sample: https://169.254.100.1:6444
before:
  description: The server of the current context's cluster before the task.
  returned: success
  type: str
  sample: https://10.0.0.11:6443
after:
  description: The server after the task (in check mode, what it would be).
  returned: success
  type: str
  sample: https://169.254.100.1:6444
verified:
  description: Whether the authenticated request was made and succeeded (see O(verify)).
  returned: success
  type: bool
  sample: true
username:
  description: The user the apiserver authenticated the file's credentials as, when verified; else V(null).
  returned: success
  type: str
  sample: system:node:w1
groups:
  description: The groups the apiserver reported for that user, when verified; else empty.
  returned: success
  type: list
  elements: str
  sample: [system:nodes, system:authenticated]
restart_due:
  description:
    - Whether the service reading the file runs other content than the file's (in check mode, than the file would
      have), by O(restart_marker); V(false) without it.
  returned: success
  type: bool
  sample: true
digest:
  description: The SHA-256 of the file's content after the task (in check mode, as it would be); for O(restart_marker).
  returned: success
  type: str
  sample: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
backup_file:
  description: The backup made before the file was replaced (O(backup)); V(null) when none was made.
  returned: success
  type: str
  sample: /etc/kubernetes/kubelet.conf.4242.2024-05-01@12:00:00~
original_file:
  description:
    - Where the copy of the file as it was before its first change is kept (C(<path>.kubeha-orig)); after
      O(state=absent) restored it, it no longer exists.
  returned: success
  type: str
  sample: /etc/kubernetes/kubelet.conf.kubeha-orig
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.kubeha.apiserver.plugins.module_utils._kubeapi import (  # noqa: E402
    KUBECONFIG_SECURITY_SPEC,
    KubeClient,
    load_kubeconfig,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._kubeconfig_server import (  # noqa: E402
    Files,
    KubeconfigServerError,
    Outcome,
    run,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._module_runner import run_module  # noqa: E402

ARGUMENT_SPEC = {
    "path": {"type": "path", "required": True},
    "server": {"type": "str"},
    "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
    "verify": {"type": "bool", "default": True},
    "verify_always": {"type": "bool", "default": False},
    "backup": {"type": "bool", "default": True},
    "restart_marker": {"type": "path"},
    "timeout": {"type": "int", "default": 10},
    **KUBECONFIG_SECURITY_SPEC,
}


class ModuleFiles(Files):
    """Backups and the final rename through AnsibleModule (its backup names, SELinux contexts)."""

    def __init__(self, module: AnsibleModule) -> None:
        self.module = module

    def backup(self, path: str) -> str:
        return self.module.backup_local(path)

    def move(self, src: str, dest: str) -> None:
        self.module.atomic_move(src, dest)


def make_client(path: str, server: str, timeout: int, allow_insecure: bool = False) -> KubeClient:
    """A client with the credentials of the kubeconfig ``path``, sent to ``server`` (replaced in unit tests)."""
    return KubeClient(load_kubeconfig(path, allow_insecure=allow_insecure), timeout=timeout, server_override=server)


def switch(module: AnsibleModule) -> Outcome:
    """The run, with this file's client (the kubeconfig's own credentials sent to the server to verify)."""
    p = module.params
    return run(
        p,
        lambda path, server: make_client(path, server, p["timeout"], p["allow_insecure"]),
        module.check_mode,
        ModuleFiles(module),
    )


def main() -> None:
    run_module(
        ARGUMENT_SPEC,
        switch,
        KubeconfigServerError,
        required_if=[("state", "present", ["server"])],
        context=("path",),
    )


if __name__ == "__main__":
    main()
