"""Lab stand-in for kubelet's ConfigMap volume: fetch kube-system/kube-proxy's config.conf at each start.

kube-proxy runs here as a systemd unit with its own kubeconfig (/etc/kubernetes/kube-proxy.conf, the file
the collection points at the local endpoint), so the DaemonSet's kubeconfig path is replaced by that file.
On nodes without IPVS the lab runs kube-proxy in iptables mode (KUBEHA_LAB_PROXY_MODE), and on nodes that
share the host kernel it leaves the conntrack sysctls alone (KUBEHA_LAB_SHARED_KERNEL).
"""

import base64
import json
import os
import re
import ssl
import sys
import tempfile
import urllib.request

KUBECONFIG = "/etc/kubernetes/kube-proxy.conf"
OUT = "/var/lib/kube-proxy/config.conf"


def field(text, key):
    match = re.search(rf"^\s*{re.escape(key)}:\s*(\S+)\s*$", text, re.M)
    if not match:
        sys.exit(f"{KUBECONFIG}: no {key}")
    return match.group(1)


def main():
    with open(KUBECONFIG) as fh:
        text = fh.read()
    server = field(text, "server")
    ca = base64.b64decode(field(text, "certificate-authority-data")).decode()
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = os.path.join(tmp, "c.pem"), os.path.join(tmp, "k.pem")
        with open(cert, "wb") as fh:
            fh.write(base64.b64decode(field(text, "client-certificate-data")))
        with open(key, "wb") as fh:
            fh.write(base64.b64decode(field(text, "client-key-data")))
        ctx = ssl.create_default_context(cadata=ca)
        ctx.load_cert_chain(cert, key)
        url = f"{server}/api/v1/namespaces/kube-system/configmaps/kube-proxy"
        with urllib.request.urlopen(url, context=ctx, timeout=10) as resp:
            config = json.load(resp)["data"]["config.conf"]
    config = re.sub(r"^(\s*kubeconfig:).*$", rf"\1 {KUBECONFIG}", config, count=1, flags=re.M)
    mode = os.environ.get("KUBEHA_LAB_PROXY_MODE")
    if mode:
        config = re.sub(r"^mode:.*$", f"mode: {mode}", config, count=1, flags=re.M)
    if os.environ.get("KUBEHA_LAB_SHARED_KERNEL"):
        # Conntrack sysctls belong to the host kernel here: 0 tells kube-proxy to leave them alone.
        for key, zero in (("maxPerCore", "0"), ("min", "0"), ("tcpCloseWaitTimeout", "0s"),
                          ("tcpEstablishedTimeout", "0s")):  # fmt: skip
            config = re.sub(rf"^(\s+{key}:).*$", rf"\1 {zero}", config, count=1, flags=re.M)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT + ".tmp", "w") as fh:
        fh.write(config)
    os.replace(OUT + ".tmp", OUT)


if __name__ == "__main__":
    main()
