# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The endpoint filter: ADDRESS:PORT as module_utils/_endpoint.py writes it (and as its parser reads it back), an IP
address canonical, a DNS name as it is, and an error naming the value for an empty address or a port out of range.
The playbooks' and roles' expressions rendered through the real ansible-playbook are in
tests/unit/playbooks/test_endpoints.py."""

from __future__ import annotations

import pytest
from ansible_collections.kubeha.apiserver.plugins.module_utils._endpoint import split_endpoint

FILTER = "endpoint"  # the plugin conftest.py loads (fixtures plugin and AnsibleFilterError)


@pytest.fixture
def endpoint(plugin):
    return plugin.endpoint


def test_ipv4_as_it_is_ipv6_in_brackets(endpoint):
    assert endpoint("10.0.0.1", 6443) == "10.0.0.1:6443"
    assert endpoint("fd00::1", 6443) == "[fd00::1]:6443"
    assert endpoint("::ffff:10.0.0.1", 1) == "[::ffff:a00:1]:1"


def test_an_ip_address_is_written_canonical_and_never_bracketed_twice(endpoint):
    assert endpoint("FD00:0:0::1", 6443) == "[fd00::1]:6443"
    assert endpoint("[fd00::1]", 6443) == "[fd00::1]:6443"
    assert endpoint(" 10.0.0.1 ", 6443) == "10.0.0.1:6443"


def test_a_dns_name_is_kept_as_it_is(endpoint):
    assert endpoint("cp1.example.org", 6443) == "cp1.example.org:6443"
    assert endpoint("cp1", 6443) == "cp1:6443"


def test_the_port_an_int_or_its_decimal_text(endpoint):
    assert endpoint("10.0.0.1", "6443") == "10.0.0.1:6443"
    assert endpoint("10.0.0.1", 65535) == "10.0.0.1:65535"


def test_what_it_writes_is_what_the_one_parser_reads_back(endpoint):
    for address in ("10.0.0.1", "fd00::1", "2001:db8::a:b"):
        assert split_endpoint(endpoint(address, 6443)) == (address, 6443)


@pytest.mark.parametrize(
    ("address", "port", "message"),
    [
        ("", 6443, r"^endpoint: address '' is empty$"),
        ("  ", 6443, r"^endpoint: address '  ' is empty$"),
        (None, 6443, r"^endpoint: address None is not a string"),
        (["10.0.0.1"], 6443, r"^endpoint: address \['10\.0\.0\.1'\] is not a string"),
        ("10.0.0.1:6443", 6443, r"^endpoint: address '10\.0\.0\.1:6443' is neither an IP address nor a DNS name$"),
        ("10.0.0.256", 6443, r"^endpoint: address '10\.0\.0\.256' is neither an IP address nor a DNS name$"),
        ("https://cp1", 6443, r"^endpoint: address 'https://cp1' is neither"),
        ("[10.0.0.1]", 6443, r"^endpoint: address '\[10\.0\.0\.1\]': only IPv6 addresses are written in brackets$"),
        ("10.0.0.1", 0, r"^endpoint: '10\.0\.0\.1': port '0' is not 1-65535$"),
        ("10.0.0.1", 65536, r"^endpoint: '10\.0\.0\.1': port '65536' is not 1-65535$"),
        ("fd00::1", -1, r"^endpoint: 'fd00::1': port '-1' is not 1-65535$"),
        ("10.0.0.1", "", r"^endpoint: '10\.0\.0\.1': port '' is not 1-65535$"),
        ("10.0.0.1", "٦٤٤٣", r"^endpoint: '10\.0\.0\.1': port '٦٤٤٣' is not 1-65535$"),
        ("10.0.0.1", True, r"^endpoint: '10\.0\.0\.1': port True is not 1-65535$"),
        ("10.0.0.1", None, r"^endpoint: '10\.0\.0\.1': port None is not 1-65535$"),
    ],
)
def test_bad_input_fails_naming_the_value(endpoint, AnsibleFilterError, address, port, message):
    with pytest.raises(AnsibleFilterError, match=message):
        endpoint(address, port)


def test_the_filter_is_registered_under_its_name(plugin):
    assert plugin.FilterModule().filters() == {"endpoint": plugin.endpoint}
