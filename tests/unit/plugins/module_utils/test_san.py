# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""module_utils/_san: the one SAN normaliser, and the two callers (certificate plan, cluster_endpoint) that
must agree on which names are valid and what each one is."""

from __future__ import annotations

import pytest
from ansible_collections.kubeha.apiserver.plugins.module_utils import _cert_sans as cert
from ansible_collections.kubeha.apiserver.plugins.module_utils import _cluster_endpoint_input as inp
from ansible_collections.kubeha.apiserver.plugins.module_utils._san import San, SanError, parse_san, san_key

VALUES = [
    "169.254.100.1",
    "FD6B:6861:0::1",
    "dead::beef",  # an IPv6 address whose first group is all letters: not a name of kind "dead"
    "fd::1",
    "Api.Example.com",
    "*.apps.example.com",
    "kubernetes",
    "xn--bcher-kva.example",
    # invalid, for both
    "*.com",
    "*",
    "10.0.0.256",
    "300.1.1.1",
    "10.0.0.0/8",
    "[fd6b::1]",
    "fe80::1%eth0",
    "under_score.example",
    "a..b",
    "bücher.example",
    "x" * 64 + ".example",
]


def accepted_by_cert(value: str) -> str | None:
    try:
        return cert.normalize_san(value).split(":", 1)[1]
    except cert.CertPlanError:
        return None


def accepted_by_cluster_endpoint(value: str) -> str | None:
    try:
        return inp.normalize_san(value)
    except inp.ClusterEndpointError:
        return None


@pytest.mark.parametrize("value", VALUES)
def test_both_callers_agree_on_every_name(value):
    assert accepted_by_cert(value) == accepted_by_cluster_endpoint(value)


def test_the_valid_names_in_their_canonical_form():
    valid = {v: accepted_by_cert(v) for v in VALUES if accepted_by_cert(v) is not None}
    assert valid == {
        "169.254.100.1": "169.254.100.1",
        "FD6B:6861:0::1": "fd6b:6861::1",
        "dead::beef": "dead::beef",
        "fd::1": "fd::1",
        "Api.Example.com": "api.example.com",
        "*.apps.example.com": "*.apps.example.com",
        "kubernetes": "kubernetes",
        "xn--bcher-kva.example": "xn--bcher-kva.example",
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("dead::beef", "IP:dead::beef"),
        ("fd::1", "IP:fd::1"),
        ("IP:fd::0:1", "IP:fd::1"),
        ("DNS:Kube.Example", "DNS:kube.example"),
    ],
)
def test_an_ipv6_address_is_not_read_as_a_prefix(value, expected):
    # These failed before one home: "fd::1" was refused as a name of kind "fd" ("only IP: and DNS:").
    assert cert.normalize_san(value) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("fe80::1%eth0", "zone index"),  # the certificate plan used to return IP:fe80::1%eth0
        ("*.com", "label '*'"),  # cluster_endpoint used to take a wildcard over one label
        ("DNS:10.0.0.1", "not a valid DNS name (all-numeric last label"),
        ("IP:kube.example", "'kube.example' is not a valid IPv4 or IPv6 address"),
        (7, "not a string"),
    ],
)
def test_a_bad_san_names_the_reason(value, reason):
    with pytest.raises(SanError, match=reason.replace("(", r"\(").replace("*", r"\*")):
        parse_san(value)


def test_prefixes_are_names_where_the_caller_takes_none():
    # kubeadm's certSANs hold bare names: "IP:10.0.0.1" is not one, and not silently the address.
    assert parse_san("IP:10.0.0.1") == San("IP", "10.0.0.1")
    with pytest.raises(SanError, match="neither a valid IP address nor a DNS name"):
        parse_san("IP:10.0.0.1", prefixes=False)


def test_names_that_mean_the_same_compare_equal():
    same = ["IP:FD6B:6861::1", "fd6b:6861:0::1", "ip:fd6b:6861::0001"]
    assert len({san_key(v) for v in same}) == 1
    assert san_key("DNS:API.example") == san_key("api.EXAMPLE") == "DNS:api.example"
    assert san_key("dead::beef") == san_key("IP:dead::beef")
    # Negative controls: a different address, a network and another kind of name stay apart.
    assert san_key("fd6b:6861::2") != san_key("fd6b:6861::1")
    assert san_key("IP:10.0.0.0/8") == "IP:10.0.0.0/8" and san_key("email:a@b.example") == "email:a@b.example"


def test_each_caller_keeps_its_wording_of_a_bad_name():
    # One rule, two messages users already read: the certificate role's and cluster_endpoint's.
    with pytest.raises(cert.CertPlanError) as by_cert:
        cert.normalize_san("bad_name!")
    assert str(by_cert.value) == (
        "SAN 'bad_name!': not a valid DNS name (label 'bad_name!' is not 1-63 letters, digits or inner hyphens)"
    )
    with pytest.raises(inp.ClusterEndpointError) as by_cluster_endpoint:
        inp.normalize_san("bad_name!")
    assert str(by_cluster_endpoint.value) == (
        "cert_sans: 'bad_name!' is neither a valid IP address nor a DNS name "
        "(label 'bad_name!' is not 1-63 letters, digits or inner hyphens)"
    )
