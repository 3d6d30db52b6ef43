# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # How every module that talks to the apiserver reaches it: the kubeconfig whose current context it uses. Its
    # argument spec is module_utils/_kubeapi.py's KUBECONFIG_CONNECTION_SPEC, which also holds allow_insecure (doc
    # fragment kubeconfig_security): a module takes both fragments.
    DOCUMENTATION = r"""
options:
  kubeconfig:
    description:
      - Kubeconfig file whose current context is used to reach the apiserver. Certificates, keys and token files
        may be inline (C(*-data)) or file paths, relative to the kubeconfig's directory.
    type: path
    default: /etc/kubernetes/admin.conf
notes:
  - Talks to the apiserver with the Python standard library and PyYAML, with no Kubernetes Python client on the
    node, using the credentials of O(kubeconfig) (a client certificate or a bearer token).
  - Proxy variables of the environment (C(HTTPS_PROXY)) are ignored; the apiserver is reached directly.
    Kubeconfig credential plugins (C(exec), C(auth-provider)), C(proxy-url) and C(tls-server-name) are not
    supported.
"""
