# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The argument spec of the virtual service the kernel data-path modules manage (ipvs_service, nftables_service);
its documentation is the doc fragment kubeha.apiserver.virtual_service."""

from __future__ import annotations

VIRTUAL_SERVICE_SPEC = {
    "address": {"type": "str", "required": True},
    "port": {"type": "int", "required": True},
    "protocol": {"type": "str", "choices": ["tcp", "udp"], "default": "tcp"},
}

# One weighted destination of the service (ipvs_service's real_servers, nftables_service's backends).
DESTINATION_SPEC = {
    "type": "list",
    "elements": "dict",
    "default": [],
    "options": {
        "address": {"type": "str", "required": True},
        "port": {"type": "int", "required": True},
        "weight": {"type": "int", "default": 1},
    },
}
