# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the kubeha.apiserver collection: this is NOT a public API. It backs the
# kubeha.apiserver.apiserver_cert_plan module and may change in any release without notice.

"""Decisions about an apiserver serving certificate's subject alternative names, as pure functions.

The certificate itself is read and written by community.crypto (``x509_certificate_info``,
``openssl_csr_pipe``, ``x509_certificate`` with the ``ownca`` provider); this module only decides, over
the plain dictionaries those return:

- which wanted names (IP addresses and DNS names, validated and normalised) a certificate lacks;
- the CSR parameters of a certificate that keeps the subject, every SAN, key usage, extended key usage,
  basic constraints and validity of the current one and adds the missing names, refusing a certificate
  whose extensions could not all be carried over, or whose key or issuer do not match;
- on reset, whether the original certificate may be put back (``restore``), is already back
  (``cleanup``), was replaced by someone else since (``leave``, with a warning) or was never replaced.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.kubeha.apiserver.plugins.module_utils._san import SanError, parse_san, san_key

OID_KEY_USAGE = "2.5.29.15"
OID_EXTENDED_KEY_USAGE = "2.5.29.37"
OID_BASIC_CONSTRAINTS = "2.5.29.19"
OID_SUBJECT_ALT_NAME = "2.5.29.17"
OID_SUBJECT_KEY_IDENTIFIER = "2.5.29.14"
OID_AUTHORITY_KEY_IDENTIFIER = "2.5.29.35"
# What the reissued certificate carries over (the AKI is made again from the CA, the SKI when there was one).
CARRIED_EXTENSIONS = {
    OID_KEY_USAGE: "key usage",
    OID_EXTENDED_KEY_USAGE: "extended key usage",
    OID_BASIC_CONSTRAINTS: "basic constraints",
    OID_SUBJECT_ALT_NAME: "subject alternative name",
    OID_SUBJECT_KEY_IDENTIFIER: "subject key identifier",
    OID_AUTHORITY_KEY_IDENTIFIER: "authority key identifier",
}
DIGESTS = ("sha512", "sha384", "sha256")


class CertPlanError(Exception):
    """A wanted name or a certificate that the plan cannot work with; the message names it and the cause."""


def normalize_san(value: str) -> str:
    """`value` as community.crypto writes SANs: ``IP:<compressed address>`` or ``DNS:<lower-case name>``.

    Accepts ``IP:...``, ``DNS:...`` or a bare address or name (an address when it parses as one).
    """
    try:
        return parse_san(value).prefixed
    except SanError as exc:
        # The role's wording since 0.1.0 (users and the lab test read it): a bad name is "not a valid DNS name".
        reason = f"not a valid DNS name ({exc.dns_problem})" if exc.dns_problem else str(exc)
        raise CertPlanError(f"SAN {value!r}: {reason}") from None


def normalize_sans(values: Iterable[str]) -> list[str]:
    """Every wanted name normalised, duplicates dropped, order kept; one error naming every bad value."""
    result: list[str] = []
    errors: list[str] = []
    for value in values:
        try:
            name = normalize_san(value)
        except CertPlanError as exc:
            errors.append(str(exc))
            continue
        if name not in result:
            result.append(name)
    if errors:
        raise CertPlanError("; ".join(errors))
    return result


def missing_sans(existing: Sequence[str] | None, wanted: Sequence[str]) -> list[str]:
    """The wanted names (normalised) that `existing` (a certificate's SAN list, or None) lacks."""
    have = {san_key(name) for name in existing or []}
    return [name for name in wanted if san_key(name) not in have]


def digest_for(signature_algorithm: str | None) -> str:
    """The digest to sign with: the current certificate's, never weaker than SHA-256."""
    algorithm = (signature_algorithm or "").lower().replace("-", "")
    return next((d for d in DIGESTS if d in algorithm), "sha256")


@dataclass
class Plan:
    """What a certificate needs: the names it lacks and, when it lacks any, how to issue its successor."""

    wanted: list[str]
    missing: list[str] = field(default_factory=list)
    csr: dict[str, Any] = field(default_factory=dict)
    certificate: dict[str, Any] = field(default_factory=dict)

    @property
    def needs_new(self) -> bool:
        return bool(self.missing)

    def as_result(self) -> dict[str, Any]:
        return {"wanted": self.wanted, "missing": self.missing, "needs_new": self.needs_new, "csr": self.csr,
                "certificate": self.certificate}  # fmt: skip


def _pem_body(pem: str | None) -> str:
    return "".join(line for line in (pem or "").split() if not line.startswith("-----") and "-----" not in line)


def check_certificate(
    info: Mapping[str, Any],
    ca: Mapping[str, Any] | None = None,
    key_public_key: str | None = None,
    ca_key_public_key: str | None = None,
) -> list[str]:
    """Why a new certificate could not keep everything of `info` or could not be made right; empty when fine."""
    problems = []
    for oid, ext in sorted((info.get("extensions_by_oid") or {}).items()):
        if oid not in CARRIED_EXTENSIONS:
            critical = " (critical)" if ext.get("critical") else ""
            problems.append(f"it has extension {oid}{critical}, which a reissued certificate would not keep")
    if info.get("basic_constraints") and "CA:TRUE" in [c.upper() for c in info["basic_constraints"]]:
        problems.append("it is a CA certificate (basic constraints CA:TRUE), not a serving certificate")
    if key_public_key is not None and _pem_body(key_public_key) != _pem_body(info.get("public_key")):
        problems.append("its private key file does not hold the key of the certificate")
    if ca is not None:
        if [list(p) for p in ca.get("subject_ordered") or []] != [list(p) for p in info.get("issuer_ordered") or []]:
            problems.append(f"it was not issued by the CA given (issuer {info.get('issuer')}, CA {ca.get('subject')})")
        elif ca.get("subject_key_identifier") and info.get("authority_key_identifier") not in (
            None,
            ca.get("subject_key_identifier"),
        ):
            problems.append("its authority key identifier is not the CA's subject key identifier")
        if ca_key_public_key is not None and _pem_body(ca_key_public_key) != _pem_body(ca.get("public_key")):
            problems.append("the CA private key file does not hold the key of the CA certificate")
    return problems


def plan(info: Mapping[str, Any] | None, wanted_raw: Iterable[str], ca: Mapping[str, Any] | None = None,
         key_public_key: str | None = None, ca_key_public_key: str | None = None) -> Plan:  # fmt: skip
    """The plan for a certificate described by `info` (x509_certificate_info's result) and the names wanted.

    Without `info`, only validates and normalises the names. Raises CertPlanError naming the cause.
    """
    wanted = normalize_sans(wanted_raw)
    if info is None:
        return Plan(wanted=wanted)
    existing = list(info.get("subject_alt_name") or [])
    result = Plan(
        wanted=wanted,
        missing=missing_sans(existing, wanted),
        certificate={"subject_alt_name": existing, "not_before": info.get("not_before"),
                     "not_after": info.get("not_after"), "fingerprint": (info.get("fingerprints") or {}).get("sha256")},
    )  # fmt: skip
    if not result.needs_new:
        return result
    problems = check_certificate(info, ca, key_public_key, ca_key_public_key)
    if problems:
        raise CertPlanError("cannot reissue the certificate: " + "; ".join(problems))
    result.csr = csr_parameters(info, existing + result.missing)
    return result


def csr_parameters(info: Mapping[str, Any], subject_alt_name: list[str]) -> dict[str, Any]:
    """openssl_csr_pipe options for a CSR with `info`'s subject and extensions and these SANs."""
    csr: dict[str, Any] = {
        "subject_ordered": [{name: value} for name, value in info.get("subject_ordered") or []],
        "subject_alt_name": subject_alt_name,
        "subject_alt_name_critical": bool(info.get("subject_alt_name_critical")),
        "use_common_name_for_san": False,
        "create_subject_key_identifier": False,
        "digest": digest_for(info.get("signature_algorithm")),
    }
    for option in ("key_usage", "extended_key_usage", "basic_constraints"):
        if info.get(option):
            csr[option] = list(info[option])
            csr[f"{option}_critical"] = bool(info.get(f"{option}_critical"))
    csr["ownca"] = {
        "not_before": info.get("not_before"),
        "not_after": info.get("not_after"),
        "digest": csr["digest"],
        "create_subject_key_identifier": "always_create"
        if info.get("subject_key_identifier") or OID_SUBJECT_KEY_IDENTIFIER in (info.get("extensions_by_oid") or {})
        else "never_create",
    }
    return csr


RESET_ACTIONS = ("none", "cleanup", "restore", "leave")


def plan_reset(current: str | None, original: str | None, issued: str | None) -> tuple[str, str]:
    """What reset does with checksums of the certificate now, the original kept, and the one the role issued.

    Returns (action, reason): ``none`` (the role never replaced it), ``cleanup`` (the original is in place:
    only the role's copies go), ``restore`` (the role's certificate is in place: put the original back),
    ``leave`` (someone replaced the role's certificate since: keep it, warn).
    """
    if not original:
        return "none", "no original certificate kept: the role never replaced this certificate"
    if current and current == original:
        return "cleanup", "the original certificate is in place"
    if current and issued and current == issued:
        return "restore", "the certificate is still the one the role issued"
    return "leave", (
        "the certificate was replaced since the role issued it (e.g. by kubeadm certs renew): left as it is, "
        "with the original kept beside it"
    )
