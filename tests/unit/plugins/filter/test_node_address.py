# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The node_address filter: which variable gives a master's address, and names resolved by this machine's resolver
(localhost from /etc/hosts; a name under .invalid, which RFC 6761 says never resolves). The playbook side (the
masters resolved once by check_inventory.yml, then used as backends) is in tests/unit/playbooks/."""

from __future__ import annotations

import pytest

FILTER = "node_address"  # the plugin conftest.py loads (fixtures plugin and AnsibleFilterError)


@pytest.fixture
def node_address(plugin):
    return plugin.node_address


def host(name: str = "cp1", **variables: str) -> dict[str, str]:
    return {"inventory_hostname": name, **variables}


def test_kubesprays_access_ip_then_ip_then_ansible_host_then_the_name(node_address):
    assert node_address(host(access_ip="192.0.2.1", ip="192.0.2.2", ansible_host="192.0.2.3")) == "192.0.2.1"
    assert node_address(host(ip="192.0.2.2", ansible_host="192.0.2.3")) == "192.0.2.2"
    assert node_address(host(ansible_host="192.0.2.3")) == "192.0.2.3"
    assert node_address(host(access_ip="", ansible_host="192.0.2.3")) == "192.0.2.3"  # empty: not set
    assert node_address(host("192.0.2.4")) == "192.0.2.4"


def test_an_ip_address_comes_back_canonical_without_brackets(node_address):
    assert node_address(host(ansible_host="[2001:DB8:0::1]")) == "2001:db8::1"
    assert node_address(host(ansible_host=" 2001:db8::0:1 ")) == "2001:db8::1"


def test_a_name_is_resolved_here(node_address):
    assert node_address(host("cp1", ansible_host="localhost")) == "127.0.0.1"
    assert node_address(host("localhost")) == "127.0.0.1"


def test_a_name_already_resolved_is_not_resolved_again(node_address):
    # The name does not resolve: only the given answer can produce this address.
    assert node_address(host("cp1", ansible_host="cp1.invalid"), {"cp1": "192.0.2.9"}) == "192.0.2.9"
    # An IP literal wins over the answer (it cannot be out of date).
    assert node_address(host("cp1", ansible_host="192.0.2.3"), {"cp1": "192.0.2.9"}) == "192.0.2.3"


def test_a_name_that_does_not_resolve_fails_naming_the_host_the_variable_and_the_name(node_address, AnsibleFilterError):
    with pytest.raises(AnsibleFilterError, match=r"^host cp2 \(ansible_host\): cannot resolve 'cp2\.invalid' on the "):
        node_address(host("cp2", ansible_host="cp2.invalid"))
    with pytest.raises(AnsibleFilterError, match=r"^host cp3\.invalid \(inventory_hostname\): cannot resolve"):
        node_address(host("cp3.invalid"))


def test_not_a_hosts_variables(node_address, AnsibleFilterError):
    with pytest.raises(AnsibleFilterError, match="expects a host's variables"):
        node_address("192.0.2.1")  # type: ignore[arg-type]


def test_the_filter_is_registered_under_its_name(plugin):
    assert plugin.FilterModule().filters() == {"node_address": plugin.node_address}
