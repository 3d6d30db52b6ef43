# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Decisions about an apiserver certificate's SANs: validation, the plan over x509_certificate_info, the reset."""

from __future__ import annotations

import copy
import datetime
import json
import subprocess
import sys

import pytest
from ansible_collections.kubeha.apiserver.plugins.module_utils._cert_sans import (
    CertPlanError,
    check_certificate,
    digest_for,
    missing_sans,
    normalize_san,
    normalize_sans,
    plan,
    plan_reset,
)

VIPS = ["169.254.100.1", "fd6b:6861::1"]
CA_PUB = "-----BEGIN PUBLIC KEY-----\nCAKEY\n-----END PUBLIC KEY-----\n"
LEAF_PUB = "-----BEGIN PUBLIC KEY-----\nLEAFKEY\n-----END PUBLIC KEY-----\n"
# What community.crypto's x509_certificate_info returns for the lab's kubeadm apiserver.crt (cp2), trimmed.
KUBEADM_INFO = {
    "authority_key_identifier": "55:96:5a:2b:6c:bc:60:bf:39:e4:34:07:fd:0f:98:a3:63:b9:b7:dd",
    "basic_constraints": ["CA:FALSE"],
    "basic_constraints_critical": True,
    "extended_key_usage": ["TLS Web Server Authentication"],
    "extended_key_usage_critical": False,
    "extensions_by_oid": {
        "2.5.29.15": {"critical": True, "value": "AwIFoA=="},
        "2.5.29.17": {"critical": False, "value": "..."},
        "2.5.29.19": {"critical": True, "value": "MAA="},
        "2.5.29.35": {"critical": False, "value": "..."},
        "2.5.29.37": {"critical": False, "value": "MAoGCCsGAQUFBwMB"},
    },
    "fingerprints": {"sha256": "80:98:ae"},
    "issuer": {"commonName": "kubernetes"},
    "issuer_ordered": [["commonName", "kubernetes"]],
    "key_usage": ["Digital Signature", "Key Encipherment"],
    "key_usage_critical": True,
    "not_after": "20271126152712Z",
    "not_before": "20261126152212Z",
    "public_key": LEAF_PUB,
    "signature_algorithm": "sha256WithRSAEncryption",
    "subject": {"commonName": "kube-apiserver"},
    "subject_alt_name": [
        *("DNS:cp2", "DNS:kubernetes", "DNS:kubernetes.default", "DNS:kubernetes.default.svc"),
        *("DNS:kubernetes.default.svc.cluster.local", "IP:10.96.0.1", "IP:10.88.0.12", "IP:10.88.0.11"),
        "IP:fd88:88::12",
    ],
    "subject_alt_name_critical": False,
    "subject_key_identifier": None,
    "subject_ordered": [["commonName", "kube-apiserver"]],
}
CA_INFO = {
    "subject": {"commonName": "kubernetes"},
    "subject_ordered": [["commonName", "kubernetes"]],
    "subject_key_identifier": "55:96:5a:2b:6c:bc:60:bf:39:e4:34:07:fd:0f:98:a3:63:b9:b7:dd",
    "public_key": CA_PUB,
}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("169.254.100.1", "IP:169.254.100.1"),
        ("IP:169.254.100.1", "IP:169.254.100.1"),
        ("ip: FD6B:6861:0:0:0:0:0:1", "IP:fd6b:6861::1"),
        ("fd6b:6861::1", "IP:fd6b:6861::1"),
        ("API.Internal.Example", "DNS:api.internal.example"),
        ("DNS:kubernetes", "DNS:kubernetes"),
        ("*.apps.example.com", "DNS:*.apps.example.com"),
        ("xn--bcher-kva.example", "DNS:xn--bcher-kva.example"),
    ],
)
def test_names_are_normalised_as_community_crypto_writes_them(value: str, expected: str) -> None:
    assert normalize_san(value) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("IP:300.1.1.1", "'300.1.1.1' is not a valid IPv4 or IPv6 address"),
        ("300.1.1.1", "all-numeric last label"),
        ("IP:10.0.0.0/8", "it is a network: a SAN is one IP address or DNS name"),
        ("bad_name!", "label 'bad_name!' is not 1-63 letters"),
        ("-lead.example", "label '-lead' is not"),
        ("a..b", "label '' is not"),
        ("", "empty"),
        ("DNS:", "empty"),
        ("x" * 64 + ".example", "is not 1-63 letters"),
        (".".join(["abcdefgh"] * 30), "longer than 253 characters"),
        ("*.com", "label '*'"),
        ("email:root@example.com", "only IP: and DNS: names can be added, not email:"),
        ("bücher.example", "label 'bücher'"),
    ],
)
def test_bad_names_fail_naming_the_value_and_the_reason(value: str, reason: str) -> None:
    with pytest.raises(CertPlanError) as err:
        normalize_san(value)
    assert f"SAN {value!r}" in str(err.value) and reason in str(err.value)


def test_every_bad_name_is_reported_at_once_and_duplicates_drop() -> None:
    assert normalize_sans(["169.254.100.1", "IP:169.254.100.1", "Kube.Example", "kube.example"]) == [
        "IP:169.254.100.1",
        "DNS:kube.example",
    ]
    with pytest.raises(CertPlanError) as err:
        normalize_sans(["IP:1.2.3.4.5", "ok.example", "no way"])
    assert "'IP:1.2.3.4.5'" in str(err.value) and "'no way'" in str(err.value) and "ok.example" not in str(err.value)


def test_missing_compares_dns_case_insensitively_and_addresses_by_value() -> None:
    existing = ["DNS:Kubernetes", "IP:FD6B:6861:0:0:0:0:0:1", "IP:10.0.0.0/8", "email:a@b"]
    wanted = ["DNS:kubernetes", "IP:fd6b:6861::1", "IP:169.254.100.1"]
    assert missing_sans(existing, wanted) == ["IP:169.254.100.1"]
    assert missing_sans(None, wanted) == wanted


def test_digest_keeps_the_current_one_and_never_goes_below_sha256() -> None:
    assert digest_for("sha384WithRSAEncryption") == "sha384"
    assert digest_for("ecdsa-with-SHA512") == "sha512"
    assert digest_for("sha1WithRSAEncryption") == "sha256"
    assert digest_for(None) == "sha256"


def test_plan_adds_the_vips_and_keeps_subject_sans_usages_and_validity() -> None:
    result = plan(KUBEADM_INFO, VIPS, CA_INFO, LEAF_PUB, CA_PUB)
    assert result.missing == ["IP:169.254.100.1", "IP:fd6b:6861::1"] and result.needs_new
    csr = result.csr
    assert csr["subject_alt_name"] == KUBEADM_INFO["subject_alt_name"] + ["IP:169.254.100.1", "IP:fd6b:6861::1"]
    assert csr["subject_ordered"] == [{"commonName": "kube-apiserver"}]
    assert csr["key_usage"] == ["Digital Signature", "Key Encipherment"] and csr["key_usage_critical"] is True
    assert csr["extended_key_usage"] == ["TLS Web Server Authentication"]
    assert csr["extended_key_usage_critical"] is False
    assert csr["basic_constraints"] == ["CA:FALSE"] and csr["basic_constraints_critical"] is True
    assert csr["subject_alt_name_critical"] is False and csr["use_common_name_for_san"] is False
    assert csr["ownca"] == {"not_before": "20261126152212Z", "not_after": "20271126152712Z", "digest": "sha256",
                            "create_subject_key_identifier": "never_create"}  # fmt: skip
    assert result.certificate["fingerprint"] == "80:98:ae"


def test_a_certificate_with_every_name_needs_nothing() -> None:
    info = copy.deepcopy(KUBEADM_INFO)
    info["subject_alt_name"] += ["IP:169.254.100.1", "IP:fd6b:6861::1"]
    # Nothing to issue: not even a certificate that could not be reissued is a problem then.
    info["extensions_by_oid"]["1.2.3.4"] = {"critical": True, "value": ""}
    result = plan(info, VIPS, CA_INFO, "other key", "other CA key")
    assert result.missing == [] and not result.needs_new and result.csr == {}


def test_without_a_certificate_only_the_names_are_checked() -> None:
    assert plan(None, [*VIPS, "api.example"]).as_result() == {
        "wanted": ["IP:169.254.100.1", "IP:fd6b:6861::1", "DNS:api.example"], "missing": [], "needs_new": False,
        "csr": {}, "certificate": {},
    }  # fmt: skip
    with pytest.raises(CertPlanError, match=r"300\.1\.1\.1"):
        plan(None, ["IP:300.1.1.1"])


def test_a_subject_key_identifier_is_kept_when_there_was_one() -> None:
    info = copy.deepcopy(KUBEADM_INFO)
    info["subject_key_identifier"] = "aa:bb"
    info["extensions_by_oid"]["2.5.29.14"] = {"critical": False, "value": "..."}
    assert plan(info, VIPS).csr["ownca"]["create_subject_key_identifier"] == "always_create"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda i, c: i["extensions_by_oid"].update({"1.3.6.1.5.5.7.1.24": {"critical": True}}),
         "extension 1.3.6.1.5.5.7.1.24 (critical), which a reissued certificate would not keep"),
        (lambda i, c: i.update(basic_constraints=["CA:TRUE"]), "it is a CA certificate"),
        (lambda i, c: i.update(public_key="-----BEGIN PUBLIC KEY-----\nOTHER\n-----END PUBLIC KEY-----\n"),
         "its private key file does not hold the key of the certificate"),
        (lambda i, c: c.update(subject_ordered=[["commonName", "other-ca"]]), "not issued by the CA given"),
        (lambda i, c: c.update(subject_key_identifier="00:11"), "authority key identifier is not the CA's"),
        (lambda i, c: c.update(public_key="-----BEGIN PUBLIC KEY-----\nOTHER\n-----END PUBLIC KEY-----\n"),
         "the CA private key file does not hold the key of the CA certificate"),
    ],
)  # fmt: skip
def test_a_certificate_that_cannot_be_reissued_faithfully_fails_before_any_change(change, message: str) -> None:
    info, ca = copy.deepcopy(KUBEADM_INFO), copy.deepcopy(CA_INFO)
    assert check_certificate(info, ca, LEAF_PUB, CA_PUB) == []
    change(info, ca)
    with pytest.raises(CertPlanError) as err:
        plan(info, VIPS, ca, LEAF_PUB, CA_PUB)
    assert str(err.value).startswith("cannot reissue the certificate: ") and message in str(err.value)


def test_public_keys_compare_by_content_not_by_line_breaks() -> None:
    wrapped = "-----BEGIN PUBLIC KEY-----\nLEAF\nKEY\n-----END PUBLIC KEY-----"
    assert check_certificate(KUBEADM_INFO, None, wrapped) == []


@pytest.mark.parametrize(
    ("current", "original", "issued", "action"),
    [
        ("aaa", None, None, "none"),
        ("aaa", "aaa", None, "cleanup"),
        ("aaa", "aaa", "bbb", "cleanup"),
        ("bbb", "aaa", "bbb", "restore"),
        ("ccc", "aaa", "bbb", "leave"),
        ("bbb", "aaa", None, "leave"),
        (None, "aaa", "bbb", "leave"),
    ],
)
def test_reset_restores_only_over_the_certificate_the_role_issued(current, original, issued, action: str) -> None:
    got, reason = plan_reset(current, original, issued)
    assert got == action and reason


def _real_kubeadm_pair():
    """A CA and a serving certificate made the way kubeadm makes them, with cryptography."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")])
    ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(ski, critical=False).sign(ca_key, hashes.SHA256()))  # fmt: skip
    sans = [x509.DNSName("cp1"), x509.DNSName("kubernetes"), x509.IPAddress(ipaddress.ip_address("10.96.0.1"))]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(ca_key, hashes.SHA256()))  # fmt: skip

    def pem(c):
        return c.public_bytes(serialization.Encoding.PEM).decode()

    def pub(k):
        return k.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    return pem(ca), pem(cert), pub(ca_key).decode(), pub(key).decode()


INFO_FILTER = """
import json, sys
from ansible_collections.community.crypto.plugins.filter.x509_certificate_info import x509_certificate_info_filter
print(json.dumps(x509_certificate_info_filter(sys.stdin.read()), default=str))
"""


def info_filter(pem: str) -> dict:
    """community.crypto's x509_certificate_info filter, in a process of its own.

    Importing Ansible's controller-side plugins changes process-wide state (where module warnings go) that
    other unit tests rely on.
    """
    res = subprocess.run([sys.executable, "-c", INFO_FILTER], input=pem, capture_output=True, text=True, check=False)
    if res.returncode != 0 and "No module named 'ansible_collections.community" in res.stderr:
        pytest.skip("community.crypto is not installed")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_plan_over_community_crypto_info_of_a_real_certificate() -> None:
    """The dictionaries community.crypto's x509_certificate_info returns are what plan() reads."""
    ca_pem, cert_pem, ca_pub, pub = _real_kubeadm_pair()
    info, ca_info = info_filter(cert_pem), info_filter(ca_pem)
    result = plan(info, [*VIPS, "DNS:KUBERNETES"], ca_info, pub, ca_pub)
    assert result.missing == ["IP:169.254.100.1", "IP:fd6b:6861::1"]
    assert result.csr["subject_alt_name"] == ["DNS:cp1", "DNS:kubernetes", "IP:10.96.0.1", *result.missing]
    assert result.csr["subject_ordered"] == [{"commonName": "kube-apiserver"}]
    assert result.csr["key_usage"] == ["Digital Signature", "Key Encipherment"] and result.csr["key_usage_critical"]
    assert result.csr["extended_key_usage"] == ["TLS Web Server Authentication"]
    assert result.csr["basic_constraints"] == ["CA:FALSE"] and result.csr["basic_constraints_critical"]
    assert result.csr["ownca"]["not_after"] == info["not_after"] and result.csr["digest"] == "sha256"
    with pytest.raises(CertPlanError, match="not issued by the CA given"):
        plan(info, VIPS, info_filter(cert_pem), pub, ca_pub)
    with pytest.raises(CertPlanError, match="private key file does not hold the key of the certificate"):
        plan(info, VIPS, ca_info, ca_pub, ca_pub)
