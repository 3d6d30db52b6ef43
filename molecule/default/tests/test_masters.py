"""What site.yml leaves on the masters and in the cluster's objects (testinfra over the lab's SSH)."""

from __future__ import annotations

import ipaddress
import json
import re

testinfra_hosts = ["ansible://kube_control_plane"]

VIP4, VIP6, PORT = "169.254.100.1", "fd6b:6861::1", 6444
ENDPOINT = f"https://{VIP4}:{PORT}"
KUBECTL = "/opt/kubeha-lab/bin/kubectl --kubeconfig /etc/kubernetes/admin.conf"


def test_the_apiserver_certificate_names_both_vips(host):
    text = host.check_output("openssl x509 -in /etc/kubernetes/pki/apiserver.crt -noout -ext subjectAltName")
    # openssl prints IPv6 addresses expanded and in capitals: compare them as addresses.
    addresses = {ipaddress.ip_address(a) for a in re.findall(r"IP Address:([0-9A-Fa-f:.]+)", text)}
    assert {ipaddress.ip_address(VIP4), ipaddress.ip_address(VIP6)} <= addresses


def test_the_cluster_objects_point_at_the_vip(host):
    info = json.loads(host.check_output(f"{KUBECTL} get -n kube-public cm cluster-info -o json"))
    assert f"server: {ENDPOINT}" in info["data"]["kubeconfig"]
    proxy = json.loads(host.check_output(f"{KUBECTL} get -n kube-system cm kube-proxy -o json"))
    assert f"- {VIP4}/32" in proxy["data"]["config.conf"] and f"- {VIP6}/128" in proxy["data"]["config.conf"]
    assert f"server: {ENDPOINT}" in proxy["data"]["kubeconfig.conf"]
