# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The address the other nodes reach a host at, from its inventory variables (documented in node_address.yml)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from typing import Any

from ansible.errors import AnsibleFilterError

# kubespray's access_ip (the address other nodes reach it at), then its ip (the node's own), then Ansible's.
ADDRESS_VARIABLES = ("access_ip", "ip", "ansible_host")


def address_name(host: Mapping[str, Any]) -> tuple[str, str]:
    """``(variable, value)``: the first of ADDRESS_VARIABLES the host sets, else its inventory name."""
    for variable in ADDRESS_VARIABLES:
        value = host.get(variable)
        if value not in (None, ""):
            return variable, str(value).strip()
    return "inventory_hostname", str(host.get("inventory_hostname", ""))


def literal(text: str) -> str | None:
    """The canonical spelling of an IP address (brackets allowed around IPv6), or None for a name."""
    try:
        return str(ipaddress.ip_address(text[1:-1] if text.startswith("[") and text.endswith("]") else text))
    except ValueError:
        return None


def resolve(name: str, where: str) -> str:
    """One address for a DNS name, resolved here (the controller): IPv4 first, then the lowest, so the same answer
    set gives the same address on every run whatever order the resolver returns it in."""
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        # from None: the message says it all (Ansible would append the resolver's error a second time).
        raise AnsibleFilterError(f"{where}: cannot resolve {name!r} on the controller: {reason}") from None
    addresses = {ipaddress.ip_address(str(info[4][0]).partition("%")[0]) for info in infos}
    if not addresses:
        raise AnsibleFilterError(f"{where}: {name!r} resolves to no address on the controller")
    return str(min(addresses, key=lambda a: (a.version, a)))


def node_address(host: Mapping[str, Any], resolved: Mapping[str, str] | None = None) -> str:
    """The host's address: an IP literal as it is (canonical), a name as ``resolved`` has it, else resolved now."""
    if not isinstance(host, Mapping):
        raise AnsibleFilterError(f"node_address expects a host's variables (hostvars[NAME]), not {type(host).__name__}")
    variable, value = address_name(host)
    name = str(host.get("inventory_hostname", "?"))
    if not value:
        raise AnsibleFilterError(f"host {name}: {variable} is empty")
    address = literal(value)
    if address is not None:
        return address
    if resolved and name in resolved:
        return str(resolved[name])
    return resolve(value, f"host {name} ({variable})")


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"node_address": node_address}
