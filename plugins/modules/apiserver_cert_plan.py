#!/usr/bin/python
# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: apiserver_cert_plan
short_description: Decide which names an apiserver serving certificate lacks, and how to reissue it
version_added: 0.1.0
description:
  - Pure decision step of the C(kubeha.apiserver.apiserver_cert_sans) role; it reads no file and changes
    nothing. The certificates are read by
    community.crypto's C(x509_certificate_info) (module or filter) and written by its C(openssl_csr_pipe)
    and C(x509_certificate) modules.
  - With O(state=present), validates and normalises O(sans) (IP addresses and DNS names) and, given the
    current certificate's O(certificate) information, returns the names it lacks and the parameters of a
    CSR that keeps its subject, every SAN, key usage, extended key usage, basic constraints and validity.
    Fails naming the value and the cause for an invalid name, and for a certificate that could not be
    reissued without losing something (an extension the CSR cannot carry, a CA certificate, a private key
    or CA key that does not match).
  - With O(state=absent), decides from checksums whether a reset may put the original certificate back.
  - A module rather than a filter on purpose. It takes ten named inputs in two states, which an argument spec
    validates and documents (types, choices, defaults) and a filter's positional arguments would not, and its
    refusals fail the task with a message naming the master and the value, as the role's other steps do.
author: kubeha.apiserver developers (!UNKNOWN)
attributes:
  check_mode:
    support: full
    description: Changes nothing in any mode.
  diff_mode:
    support: none
    description: Nothing to show.
  platform:
    support: full
    platforms: posix
    description: Plain Python, no library needed.
options:
  state:
    description: V(present) plans adding names; V(absent) plans the reset.
    type: str
    choices: [present, absent]
    default: present
  sans:
    description:
      - The names the certificate must carry, as C(IP:ADDRESS), C(DNS:NAME) or a bare address or name.
      - Empty entries are not allowed; duplicates are dropped.
    type: list
    elements: str
    default: []
  certificate:
    description:
      - The current certificate, as community.crypto's C(x509_certificate_info) returns it.
      - Without it only O(sans) is validated.
    type: dict
  ca:
    description: The CA certificate, as C(x509_certificate_info) returns it; checked to be the issuer.
    type: dict
  key_public_key:
    description: The public key (PEM) of the certificate's private key file, to check that they match.
    type: str
  ca_key_public_key:
    description: The public key (PEM) of the CA's private key file, to check that it matches the CA certificate.
    type: str
  label:
    description: A name for the certificate in messages (the host it is on).
    type: str
    default: ""
  current_checksum:
    description: With O(state=absent), the checksum of the certificate now in place.
    type: str
  original_checksum:
    description: With O(state=absent), the checksum of the original certificate the role kept, if any.
    type: str
  issued_checksum:
    description: With O(state=absent), the checksum of the certificate the role issued, if any.
    type: str
"""

EXAMPLES = r"""
- name: Read the apiserver certificate
  ansible.builtin.slurp:
    src: /etc/kubernetes/pki/apiserver.crt
  register: cert

- name: Plan the names it needs
  kubeha.apiserver.apiserver_cert_plan:
    sans: [169.254.100.1, "fd6b:6861::1", DNS:api.internal.example]
    certificate: "{{ cert.content | b64decode | community.crypto.x509_certificate_info }}"
    label: "{{ inventory_hostname }}"
  register: plan
"""

RETURN = r"""
wanted:
  description: O(sans) normalised (C(IP:) compressed addresses, C(DNS:) lower-case names), duplicates dropped.
  type: list
  elements: str
  returned: always
  sample: ["IP:169.254.100.1", "IP:fd6b:6861::1"]
missing:
  description: The wanted names the certificate lacks (empty without O(certificate)).
  type: list
  elements: str
  returned: always
  sample: ["IP:169.254.100.1"]
needs_new:
  description: Whether a new certificate must be issued.
  type: bool
  returned: always
csr:
  description:
    - Options of community.crypto's C(openssl_csr_pipe) for the new certificate (subject_ordered,
      subject_alt_name, key_usage, extended_key_usage, basic_constraints with their criticality,
      digest), and under C(ownca) the C(x509_certificate) validity, digest and subject key identifier
      setting that keep the current certificate's. Empty when no new certificate is needed.
  type: dict
  returned: always
certificate:
  description: The current certificate's SANs, validity and SHA-256 fingerprint (empty without O(certificate)).
  type: dict
  returned: always
action:
  description: With O(state=absent), one of V(none), V(cleanup), V(restore), V(leave).
  type: str
  returned: when O(state=absent)
reason:
  description: With O(state=absent), why.
  type: str
  returned: when O(state=absent)
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.kubeha.apiserver.plugins.module_utils._cert_sans import (  # noqa: E402
    CertPlanError,
    plan,
    plan_reset,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "sans": {"type": "list", "elements": "str", "default": []},
            "certificate": {"type": "dict"},
            "ca": {"type": "dict"},
            "key_public_key": {"type": "str", "no_log": False},
            "ca_key_public_key": {"type": "str", "no_log": False},
            "label": {"type": "str", "default": ""},
            "current_checksum": {"type": "str"},
            "original_checksum": {"type": "str"},
            "issued_checksum": {"type": "str"},
        },
        supports_check_mode=True,
    )
    p = module.params
    where = f"{p['label']}: " if p["label"] else ""
    if p["state"] == "absent":
        action, reason = plan_reset(p["current_checksum"], p["original_checksum"], p["issued_checksum"])
        if action == "leave":
            module.warn(f"{where}{reason}")
        module.exit_json(changed=False, action=action, reason=reason, wanted=[], missing=[], needs_new=False,
                         csr={}, certificate={})  # fmt: skip
    try:
        result = plan(p["certificate"], p["sans"], p["ca"], p["key_public_key"], p["ca_key_public_key"])
    except CertPlanError as exc:
        module.fail_json(msg=f"{where}{exc}")
    module.exit_json(changed=False, **result.as_result())


if __name__ == "__main__":
    main()
