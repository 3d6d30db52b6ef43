# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""An address and a port as one endpoint, ``10.0.0.1:6443`` or ``[fd00::1]:6443`` (documented in endpoint.yml).

The text is written by module_utils/_endpoint.py, the collection's one formatter (and parser) of endpoints: what the
playbooks and roles write here is what the preflight, the guard and apiserver_proxy read back.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from ansible.errors import AnsibleFilterError
from ansible_collections.kubeha.apiserver.plugins.module_utils._endpoint import (
    EndpointError,
    format_endpoint,
    parse_port,
)

# A DNS name: dot-separated labels of letters, digits, '-' (not at either end) and '_', an optional final dot.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?"
_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")


def _address(value: Any) -> str:
    """An IP address in its canonical spelling (brackets around an IPv6 one taken off), or a DNS name as it is."""
    if not isinstance(value, str):
        raise AnsibleFilterError(f"endpoint: address {value!r} is not a string (an IP address or a DNS name)")
    text = value.strip()
    if not text:
        raise AnsibleFilterError(f"endpoint: address {value!r} is empty")
    bracketed = text.startswith("[") and text.endswith("]")
    try:
        address = ipaddress.ip_address(text[1:-1] if bracketed else text)
    except ValueError:
        if _NAME.fullmatch(text) and not text.replace(".", "").isdigit():
            return text
        raise AnsibleFilterError(f"endpoint: address {value!r} is neither an IP address nor a DNS name") from None
    if bracketed and address.version == 4:
        raise AnsibleFilterError(f"endpoint: address {value!r}: only IPv6 addresses are written in brackets")
    return str(address)


def _port(port: Any, address: str) -> int:
    """1..65535, an int or its ASCII decimal text (module_utils' parse_port); the error names the address too."""
    text = str(port) if isinstance(port, int) and not isinstance(port, bool) else port
    if isinstance(text, str):
        text = text.strip()
    try:
        return parse_port(text)
    except EndpointError as exc:
        raise AnsibleFilterError(f"endpoint: {address!r}: {exc}") from None


def endpoint(address: Any, port: Any) -> str:
    """``10.0.0.1`` and 6443 -> ``10.0.0.1:6443``; ``fd00::1`` -> ``[fd00::1]:6443``; a DNS name as it is."""
    canonical = _address(address)
    return format_endpoint(canonical, _port(port, canonical))


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"endpoint": endpoint}
