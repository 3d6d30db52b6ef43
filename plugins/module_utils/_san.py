# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to the kubeha.apiserver collection: not a public API, may change without notice.
"""Certificate names (SANs): the collection's one normaliser and comparison.

A SAN is an IP address (canonical, compressed) or a DNS name (lower case, RFC 1123 labels, optionally a leading
``*.`` over two or more labels). Used by the certificate role's plan (``IP:``/``DNS:`` as community.crypto
writes them) and by cluster_endpoint (kubeadm's ``certSANs``, bare).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DIGITS = re.compile(r"[0-9]+")
_PREFIX = re.compile(r"^(?P<kind>[A-Za-z]+):(?P<value>.*)$", re.DOTALL)


class SanError(ValueError):
    """Why a value is not a SAN, as a clause ("it is a network: ..."); the callers name the value before it.
    ``dns_problem``: for a value read as a DNS name, what is wrong with it (a caller may word its own message)."""

    def __init__(self, message: str, dns_problem: str | None = None) -> None:
        super().__init__(message)
        self.dns_problem = dns_problem


@dataclass(frozen=True)
class San:
    kind: str  # "IP" or "DNS"
    value: str  # canonical: a compressed address, a lower-case name

    @property
    def prefixed(self) -> str:
        """``IP:10.0.0.1`` or ``DNS:api.example``, as community.crypto writes SANs."""
        return f"{self.kind}:{self.value}"


def dns_name_problem(name: str, wildcard: bool = True) -> str | None:
    """Why lower-case `name` is not a DNS name (RFC 1123 labels; a leading ``*.`` if `wildcard`), or None."""
    if not name:
        return "empty"
    if len(name) > 253:
        return "longer than 253 characters"
    labels = name.split(".")
    for index, label in enumerate(labels):
        if wildcard and label == "*" and index == 0 and len(labels) > 2:
            continue
        if not _DNS_LABEL.fullmatch(label):
            return f"label {label!r} is not 1-63 letters, digits or inner hyphens"
    if _DIGITS.fullmatch(labels[-1]):
        return "all-numeric last label: not a DNS name, and not a valid IP address either"
    return None


def _address(text: str) -> str | None:
    if "%" in text:  # ipaddress takes a zone index; a certificate cannot hold one
        return None
    try:
        return ipaddress.ip_address(text).compressed
    except ValueError:
        return None


def parse_san(value: object, prefixes: bool = True) -> San:
    """One SAN from `value`: a bare address or name, or (if `prefixes`) ``IP:...`` / ``DNS:...``.

    A bare address is tried first: ``dead::beef`` is an IPv6 address, not a name of kind ``dead``.
    """
    if not isinstance(value, str):
        raise SanError("it is not a string")
    text = value.strip()
    match = _PREFIX.match(text) if prefixes and _address(text) is None else None
    kind = match.group("kind").upper() if match else ""
    if match and kind not in ("IP", "DNS"):
        raise SanError(f"only IP: and DNS: names can be added, not {match.group('kind')}:")
    body = match.group("value").strip() if match else text
    if body.startswith("[") or body.endswith("]"):
        raise SanError("it is in brackets: write IPv6 addresses without brackets")
    if "/" in body:
        raise SanError("it is a network: a SAN is one IP address or DNS name")
    if "%" in body:
        raise SanError("it carries an IPv6 zone index, which a certificate cannot hold")
    address = _address(body)
    if address is not None and kind != "DNS":
        return San("IP", address)
    if kind == "IP":
        raise SanError(f"{body!r} is not a valid IPv4 or IPv6 address")
    problem = dns_name_problem(body.lower())
    if problem:
        what = "not a valid DNS name" if kind == "DNS" else "neither a valid IP address nor a DNS name"
        what = f"it is {what}"
        raise SanError(f"{what} ({problem})", dns_problem=problem)
    return San("DNS", body.lower())


def san_key(value: object) -> str:
    """A SAN as compared, valid or not: addresses by value, DNS names without regard to case, ``IP:``/``DNS:``
    or bare alike; another kind (``email:``, ``URI:``) or a network (``IP:10.0.0.0/8``) as its text."""
    text = str(value).strip()
    match = _PREFIX.match(text) if _address(text) is None else None
    kind, body = (match.group("kind").upper(), match.group("value").strip()) if match else ("", text)
    if kind not in ("", "IP", "DNS"):
        return text
    address = _address(body)
    if address is not None and kind != "DNS":
        return f"IP:{address}"
    return f"{kind or 'DNS'}:{body.lower()}"
