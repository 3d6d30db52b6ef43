"""The cluster's API side: kubectl and /readyz from the hub namespace, the API objects `kubeadm init` would make
(upload-config, bootstrap-token, the kube-proxy addon, Node objects), etcd's member API, and the inventory."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from lab_core import (
    EMULATED_PROBE_TIMEOUT,
    HUB_NS,
    PRISTINE_CLUSTER_INFO,
    PRISTINE_KUBE_PROXY,
    SITE_MIRROR,
    WORK,
    Node,
    flavour,
    load_state,
    sh,
)
from lab_nodes import ssh, ssh_key


def kubectl(*args: str, check: bool = True, input: str | None = None, via: Node | None = None):
    """kubectl with the lab's admin.conf; `via` a master: that master's apiserver instead of the kubeconfig's
    (cp1's on the kubeadm flavour, its controlPlaneEndpoint), for a test that has stopped cp1's."""
    bindir = Path(load_state()["bindir"])
    server = [f"--server=https://{via.addr4}:6443"] if via else []
    return sh(
        str(bindir / "kubectl"), f"--kubeconfig={WORK / 'admin.conf'}", *server, *args, ns=HUB_NS, check=check,
        input=input,
    )  # fmt: skip


def readyz(addr: str, timeout: float = 3) -> bool:
    """GET /readyz on one apiserver, certificate verified against the cluster CA (from the hub namespace)."""
    res = sh(
        "curl",
        "-sS",
        "--max-time",
        str(timeout),
        "--cacert",
        str(WORK / "ca.crt"),
        f"https://{addr}:6443/readyz",
        ns=HUB_NS,
        check=False,
    )
    return res.returncode == 0 and res.stdout.strip() == "ok"


def kube_proxy_healthy(node: Node) -> bool:
    """kube-proxy's /healthz answers 200 once it has synced its rules."""
    res = sh("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3",
             f"http://{node.addr4}:10256/healthz", ns=HUB_NS, check=False)  # fmt: skip
    return res.stdout == "200"


LAB_RBAC = """\
# Lab plumbing: a node's kube-proxy unit reads the kube-proxy ConfigMap, as kubelet would mount it.
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: kubeha-lab-kube-proxy-config, namespace: kube-system}
rules:
  - {apiGroups: [""], resources: [configmaps], resourceNames: [kube-proxy], verbs: [get]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: kubeha-lab-kube-proxy-config, namespace: kube-system}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: kubeha-lab-kube-proxy-config}
subjects:
  - {apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:kube-proxy"}
"""


def node_object(node: Node) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "labels": {"kubernetes.io/hostname": node.name, "kubernetes.io/os": "linux"}
            | ({"node-role.kubernetes.io/control-plane": ""} if node.role == "control-plane" else {}),
        },
    }


def bootstrap_api(nodes: list[Node], bindir: Path) -> None:
    kubeadm = str(bindir / "kubeadm")
    cfg = str(WORK / "kubeadm" / "cluster.yaml")
    # As `kubeadm init` does: super-admin (system:masters) binds admin.conf's group to cluster-admin.
    admin = f"--kubeconfig={WORK / 'super-admin.conf'}"
    sh(str(bindir / "kubectl"), admin, "create", "clusterrolebinding", "kubeadm:cluster-admins",
       "--clusterrole=cluster-admin", "--group=kubeadm:cluster-admins", ns=HUB_NS)  # fmt: skip
    sh(kubeadm, "init", "phase", "upload-config", "kubeadm", "--config", cfg, admin, ns=HUB_NS)
    sh(kubeadm, "init", "phase", "bootstrap-token", "--config", cfg, admin, ns=HUB_NS)
    sh(kubeadm, "init", "phase", "addon", "kube-proxy", "--config", cfg, admin, ns=HUB_NS)
    # The kube-proxy ConfigMap as kubeadm made it, for the tests that check an uninstall leaves it as it was.
    PRISTINE_KUBE_PROXY.write_text(kubectl("get", "-n", "kube-system", "cm", "kube-proxy", "-o", "json").stdout)
    PRISTINE_CLUSTER_INFO.write_text(kubectl("get", "-n", "kube-public", "cm", "cluster-info", "-o", "json").stdout)
    kubectl("apply", "-f", "-", input=LAB_RBAC)
    for node in nodes:
        register(node)


def register(node: Node) -> None:
    """The node's Node object with its addresses (the lab runs no kubelet to make it)."""
    kubectl("apply", "-f", "-", input=json.dumps(node_object(node)))
    addresses = [
        {"type": "InternalIP", "address": node.addr4},
        {"type": "InternalIP", "address": node.addr6},
        {"type": "Hostname", "address": node.name},
    ]
    status = json.dumps({"status": {"addresses": addresses}})
    kubectl("patch", "node", node.name, "--subresource=status", "--type=merge", "-p", status)


def write_inventory(nodes: list[Node]) -> Path:
    key = ssh_key()
    lines = [
        "# Written by tests/lab/lab.py up: the lab's nodes, reached over SSH inside the lab namespace.",
        "all:",
        "  vars:",
        "    ansible_user: root",
        f"    ansible_ssh_private_key_file: {key}",
        "    ansible_ssh_common_args: >-",
        "      -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
        f"      -o ProxyCommand='ip netns exec {HUB_NS} nc %h %p'",
        "    ansible_python_interpreter: /usr/bin/python3",
        f"    kubeha_lab_kubeconfig: {WORK / 'admin.conf'}",
        f"    kubeha_lab_ca: {WORK / 'ca.crt'}",
        f"    kubeha_lab_site_mirror: {SITE_MIRROR}",
        "  children:",
    ]
    for group, role in (("kube_control_plane", "control-plane"), ("kube_node", "worker")):
        lines += [f"    {group}:", "      hosts:"]
        for n in nodes:
            if n.role == role:
                lines += [
                    f"        {n.name}:",
                    f"          ansible_host: {n.addr4}",
                    f"          kubeha_lab_addr6: {n.addr6}",
                    f"          kubeha_lab_kind: {n.kind}",
                ]
                if n.kind == "qemu":
                    # The emulated node's sshd can be slow to answer under load (ssh_argv says the same).
                    lines.append("          ansible_timeout: 30")
                if n.kind == "qemu" and flavour() == "kubeadm":
                    # Software emulation with kubelet, containerd and a kube-proxy pod beside the guard: a TLS probe
                    # took 1.09-1.20 s while an Ansible run was busy there, past the 1 s default (README, The lab).
                    lines.append(f"          local_proxy_timeout: {EMULATED_PROBE_TIMEOUT}")
    path = WORK / "inventory.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


ETCD_CLIENT = (
    "import json, ssl, sys, urllib.request; "
    "ctx = ssl.create_default_context(cafile='/etc/kubernetes/pki/etcd/ca.crt'); "
    "ctx.load_cert_chain('/etc/kubernetes/pki/apiserver-etcd-client.crt', "
    "'/etc/kubernetes/pki/apiserver-etcd-client.key'); "
    "req = urllib.request.Request('https://127.0.0.1:2379/v3/cluster/member/' + sys.argv[1], "
    "data=sys.argv[2].encode(), method='POST'); "
    "print(urllib.request.urlopen(req, context=ctx, timeout=10).read().decode())"
)


def etcd_members(via: Node, action: str, body: dict) -> dict:
    """etcd's cluster API (member list/add/remove) through its JSON gateway, from a master (the lab has no etcdctl)."""
    cmd = f"python3 -c {shlex.quote(ETCD_CLIENT)} {action} {shlex.quote(json.dumps(body))}"
    return json.loads(ssh(via, cmd).stdout)


def kubernetes_endpoints() -> set[str]:
    """The apiserver addresses in the default/kubernetes EndpointSlices (what the guards discover)."""
    out = kubectl("get", "endpointslices", "-n", "default", "-l", "kubernetes.io/service-name=kubernetes", "-o", "json")
    return {a for s in json.loads(out.stdout)["items"] for e in s.get("endpoints") or [] for a in e["addresses"]}
