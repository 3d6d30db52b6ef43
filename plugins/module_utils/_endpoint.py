# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to the kubeha.apiserver collection: not a public API, may change without notice.
"""Endpoints: ``ADDRESS:PORT``, an IPv6 address in brackets. The collection's one parser and formatter.

A port is ASCII decimal only: ``str.isdigit()`` also takes ``"²"`` (which ``int()`` then refuses) and
``"٦"`` (which ``int()`` reads as 6), so a value that looks like no port must not become one.
"""

from __future__ import annotations

import ipaddress
import re

_PORT = re.compile(r"[0-9]+")
EXAMPLE = "ADDRESS:PORT (an IPv6 address as [ADDRESS]:PORT)"


class EndpointError(ValueError):
    """A value that is not an endpoint; the message starts with the value."""


def parse_port(text: str, low: int = 1) -> int:
    """``"6443"`` -> 6443: ASCII digits, ``low``..65535; ``EndpointError`` naming the text otherwise."""
    if not isinstance(text, str) or not _PORT.fullmatch(text) or not low <= int(text) <= 65535:
        raise EndpointError(f"port {text!r} is not {low}-65535")
    return int(text)


def split_endpoint(text: str) -> tuple[str, int]:
    """``10.0.0.1:6443`` or ``[fd00::1]:6443`` -> (the canonical address, the port).

    An IPv6 address must be in brackets (``fd00::1:6443`` would be ambiguous), and only an IPv6 address may be.
    """
    if not isinstance(text, str):
        raise EndpointError(f"{text!r} is not {EXAMPLE}")
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not _PORT.fullmatch(port):
        raise EndpointError(f"{text!r} is not {EXAMPLE}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            raise EndpointError(f"{text!r}: only IPv6 addresses are written in brackets")
    elif ":" in host:
        raise EndpointError(f"{text!r}: write an IPv6 address in brackets, as [ADDRESS]:PORT")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise EndpointError(f"{text!r}: {host!r} is not an IP address") from None
    try:
        return str(address), parse_port(port)
    except EndpointError as exc:
        raise EndpointError(f"{text!r}: {exc}") from None


def format_endpoint(address: object, port: int) -> str:
    """``10.0.0.1:6443`` or ``[fd00::1]:6443`` (an address object or its text)."""
    return f"[{address}]:{port}" if ":" in str(address) else f"{address}:{port}"
