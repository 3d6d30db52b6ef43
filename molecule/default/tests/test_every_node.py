"""What site.yml leaves on every node of the lab, checked on the node itself (testinfra over the lab's SSH)."""

from __future__ import annotations

import re

import pytest

testinfra_hosts = ["ansible://all"]

VIP, PORT = "169.254.100.1", 6444
ENDPOINT = f"https://{VIP}:{PORT}"
CA = "/etc/kubernetes/pki/ca.crt"
# GET /readyz through the VIP with the cluster CA verified for the VIP's own address (its SAN proves the
# certificate step too); the nodes have Python but no curl.
READYZ = (
    "import ssl, urllib.request; "
    f"ctx = ssl.create_default_context(cafile='{CA}'); "
    f"print(urllib.request.urlopen('{ENDPOINT}/readyz', context=ctx, timeout=5).read().decode())"
)


@pytest.fixture(scope="module")
def master_addresses(host) -> list[str]:
    masters = host.ansible.get_variables()["groups"]["kube_control_plane"]
    return [host.backend.ansible_runner.get_variables(m)["ansible_host"] for m in masters]


def test_the_guard_runs_now_and_at_boot(host):
    guard = host.service("kubeha-apiserver-guard")
    assert guard.is_running and guard.is_enabled


def test_the_vip_answers_readyz_with_the_ca_verified_for_its_address(host):
    assert host.check_output(f'python3 -c "{READYZ}"') == "ok"


def test_the_proxy_balances_exactly_the_inventorys_masters(host, master_addresses):
    # Exactly: a master taken out of the inventory (molecule/day2) must be gone from every node's proxy too.
    if host.run(f"ipvsadm -Ln -t {VIP}:{PORT}").rc == 0:
        table = host.check_output(f"ipvsadm -Ln -t {VIP}:{PORT}")
    else:
        assert host.service("kubeha-apiserver-haproxy").is_running
        table = host.file("/etc/kubeha-apiserver/haproxy.cfg").content_string
    assert sorted(set(re.findall(r"([0-9.]+):6443", table))) == sorted(master_addresses)


def test_kubelet_uses_the_node_local_endpoint(host):
    lines = host.file("/etc/kubernetes/kubelet.conf").content_string.splitlines()
    assert [line.strip() for line in lines if line.strip().startswith("server:")] == [f"server: {ENDPOINT}"]
