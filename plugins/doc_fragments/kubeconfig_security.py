# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # The option every module that talks to the apiserver with a kubeconfig shares (module_utils/_kubeapi.py,
    # KUBECONFIG_SECURITY_SPEC, is its argument spec).
    DOCUMENTATION = r"""
options:
  allow_insecure:
    description:
      - Accept a kubeconfig whose cluster is reached without verifying the apiserver, that is with an C(http://)
        server, with C(insecure-skip-tls-verify), or with no certificate authority (neither
        C(certificate-authority-data) nor C(certificate-authority); the system's trust store is then used).
      - By default such a kubeconfig is refused before the apiserver is contacted, since the credentials it
        holds would be sent to whoever answers at that address.
    type: bool
    default: false
"""
