# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""module_utils/_endpoint: the one ADDRESS:PORT parser, and the callers that use it."""

from __future__ import annotations

import pytest
from ansible_collections.kubeha.apiserver.plugins.module_utils._cluster_endpoint_input import (
    ClusterEndpointError,
    normalize_server,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._endpoint import (
    EndpointError,
    format_endpoint,
    parse_port,
    split_endpoint,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._preflight import parse_endpoint as preflight_endpoint
from ansible_collections.kubeha.apiserver.plugins.module_utils._proxy import ProxyError
from ansible_collections.kubeha.apiserver.plugins.module_utils._proxy import parse_endpoint as proxy_endpoint

# Digits str.isdigit() takes that are not ASCII: superscript two (int() refuses it), Arabic-Indic and
# full-width digits (int() reads them as 6443). None of them is a port.
NOT_ASCII = ["\u00b2", "\u0666\u0664\u0664\u0663", "\uff16\uff14\uff14\uff13"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.1:6443", ("10.0.0.1", 6443)),
        (" 10.0.0.1:6443 ", ("10.0.0.1", 6443)),
        ("[fd00::0011]:6443", ("fd00::11", 6443)),
        ("[FD00::11]:1", ("fd00::11", 1)),
        ("10.0.0.1:65535", ("10.0.0.1", 65535)),
    ],
)
def test_an_endpoint_splits_into_its_canonical_address_and_port(text, expected):
    assert split_endpoint(text) == expected
    assert split_endpoint(format_endpoint(*expected)) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("10.0.0.1", "is not ADDRESS:PORT"),
        ("10.0.0.1:", "is not ADDRESS:PORT"),
        (":6443", "is not ADDRESS:PORT"),
        ("10.0.0.1:https", "is not ADDRESS:PORT"),
        ("10.0.0.1:+6443", "is not ADDRESS:PORT"),
        ("fd00::11:6443", "write an IPv6 address in brackets"),
        ("[10.0.0.1]:6443", "only IPv6 addresses are written in brackets"),
        ("master-1:6443", "'master-1' is not an IP address"),
        ("10.0.0.1:0", "port '0' is not 1-65535"),
        ("10.0.0.1:65536", "port '65536' is not 1-65535"),
        (6443, "is not ADDRESS:PORT"),
        *((f"10.0.0.1:{digits}", "is not ADDRESS:PORT") for digits in NOT_ASCII),
    ],
)
def test_a_bad_endpoint_is_refused_naming_the_value(text, reason):
    with pytest.raises(EndpointError, match=reason) as caught:
        split_endpoint(text)
    assert repr(text) in str(caught.value)


@pytest.mark.parametrize("digits", NOT_ASCII)
def test_a_port_is_ascii_decimal_only(digits):
    assert digits.isdigit()  # what the parsers used to accept
    with pytest.raises(EndpointError, match="is not 1-65535"):
        parse_port(digits)
    assert parse_port("0", low=0) == 0 and parse_port("6443") == 6443


@pytest.mark.parametrize("digits", NOT_ASCII)
def test_every_caller_refuses_a_port_that_is_not_ascii(digits):
    with pytest.raises(ValueError, match=r"backend '10\.0\.0\.1:"):
        preflight_endpoint(f"10.0.0.1:{digits}")
    with pytest.raises(ProxyError, match="is not ADDRESS:PORT"):
        proxy_endpoint(f"10.0.0.1:{digits}")
    with pytest.raises(ClusterEndpointError, match="invalid port"):
        normalize_server(f"https://10.0.0.1:{digits}")


def test_every_caller_refuses_an_ipv6_backend_without_brackets():
    # The preflight parser used to read "fd00::11:6443" as [fd00::11]:6443: a guess, now refused.
    with pytest.raises(ValueError, match="write an IPv6 address in brackets"):
        preflight_endpoint("fd00::11:6443")
    with pytest.raises(ProxyError, match="write an IPv6 address in brackets"):
        proxy_endpoint("fd00::11:6443")
    assert str(preflight_endpoint("[fd00::11]:6443")[0]) == proxy_endpoint("[fd00::11]:6443").address == "fd00::11"
