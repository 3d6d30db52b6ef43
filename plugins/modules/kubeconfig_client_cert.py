#!/usr/bin/python
# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: kubeconfig_client_cert
short_description: Find the client certificate and key of a kubeconfig on the node, returning none of their secrets
version_added: 0.1.0
description:
  - Reads a kubeconfig file on the node (kubelet's C(/etc/kubernetes/kubelet.conf) by default in the
    C(kubeha.apiserver.local_proxy) role) and returns the names of the files that hold the client certificate
    and key of its current context's user, for a program that presents that identity (the proxy's guard).
    The kubeconfig never travels to the controller, so no verbosity and no callback can show its key.
  - When the user names files (C(client-certificate) and C(client-key), as kubelet's rotating
    C(kubelet-client-current.pem)), they are returned as they are, so a rotation is followed; a copy that an
    earlier run left in O(dest) is removed.
  - When the certificate or the key is embedded (C(client-certificate-data), C(client-key-data)), both are
    written into O(dest), one file of mode C(0600), replaced atomically and only when its bytes or mode differ.
  - Before anything is written, the certificate and key must load together (the key is held in an anonymous
    memory file for that, never on a disk); otherwise the task fails naming the file and the reason and changes
    nothing. File names relative to the kubeconfig's directory are resolved as kubectl does.
author:
  - kubeha.apiserver developers (!UNKNOWN)
extends_documentation_fragment:
  - kubeha.apiserver.attributes
requirements:
  - PyYAML
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details:
      - O(dest) is described by its certificate's SHA-256 fingerprint and its mode, never by its content.
  platform:
    support: full
    platforms: posix
notes:
  - Reading kubelet's kubeconfig and its key usually needs C(become).
  - A user that authenticates otherwise (a token, an C(exec) or C(auth-provider) plugin) is refused, naming it.
seealso:
  - module: kubeha.apiserver.kubeconfig_server
  - module: kubeha.apiserver.apiserver_proxy
options:
  kubeconfig:
    description:
      - The kubeconfig file on the node. A name used twice in its contexts, clusters or users is refused.
    type: path
    required: true
  context:
    description:
      - The context whose user is read; the file's C(current-context) when not given.
    type: str
  dest:
    description:
      - The private file for embedded credentials (certificate, then key, PEM). Its directory must exist.
    type: path
    required: true
"""

EXAMPLES = r"""
- name: Find the certificate kubelet presents, for the guard's probes
  kubeha.apiserver.kubeconfig_client_cert:
    kubeconfig: /etc/kubernetes/kubelet.conf
    dest: /etc/kubeha-apiserver/client.pem
  become: true
  register: client_cert

- name: Show which files hold it (names only)
  ansible.builtin.debug:
    msg: "{{ client_cert.cert_file }} {{ client_cert.key_file | default('(key in the same file)', true) }}"
"""

RETURN = r"""
cert_file:
  description: The file that holds the client certificate (O(dest) for embedded credentials).
  returned: success
  type: str
  sample: /var/lib/kubelet/pki/kubelet-client-current.pem
key_file:
  description: The file that holds the key, or V(null) when it is RV(cert_file) itself.
  returned: success
  type: str
  sample: null
source:
  description: V(files) when the kubeconfig names the files, V(embedded) when they were written to O(dest).
  returned: success
  type: str
  sample: files
user:
  description: The name of the kubeconfig user that was read.
  returned: success
  type: str
  sample: default-auth
fingerprint:
  description: The SHA-256 fingerprint of the client certificate (the first one, for a chain).
  returned: success
  type: str
  sample: SHA256:3F:0A:...
"""

from ansible_collections.kubeha.apiserver.plugins.module_utils._client_cert import ClientCertError, run  # noqa: E402
from ansible_collections.kubeha.apiserver.plugins.module_utils._module_runner import run_module  # noqa: E402

ARGUMENT_SPEC = {
    "kubeconfig": {"type": "path", "required": True},
    "context": {"type": "str"},
    "dest": {"type": "path", "required": True},
}


def main() -> None:
    run_module(
        ARGUMENT_SPEC,
        lambda module: run(module.params, module.check_mode),
        ClientCertError,
        context=("kubeconfig",),
    )


if __name__ == "__main__":
    main()
