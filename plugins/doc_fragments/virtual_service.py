# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # The virtual service the kernel data-path modules (ipvs_service, nftables_service) manage, named the same way.
    DOCUMENTATION = r"""
options:
  address:
    description:
      - Virtual IPv4 or IPv6 address of the service. IPv6 addresses are normalised.
    type: str
    required: true
  port:
    description:
      - Virtual port of the service, 1 to 65535.
    type: int
    required: true
  protocol:
    description:
      - Transport protocol of the service.
    type: str
    choices: [tcp, udp]
    default: tcp
"""
