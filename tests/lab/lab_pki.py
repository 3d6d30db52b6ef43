"""PKI and kubeconfigs, made by kubeadm's own phases: one set of CAs for the lab, then each node's certificates
and kubeconfigs as kubeadm init or join leaves them (the binary flavour; kubeadm makes them on the kubeadm one)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from lab_core import (
    CLUSTER_NAME,
    CRI_SOCKET,
    POD_CIDRS,
    SERVICE_CIDRS,
    SHARED_PKI,
    WORK,
    Node,
    seed_dir,
    sh,
    state_flavour,
    versions,
)


def bootstrap_tokens(token: str) -> str:
    """InitConfiguration's bootstrapTokens: kubeadm's default node token, with the lab's value (both flavours)."""
    return f"""\
bootstrapTokens:
  - token: "{token}"
    ttl: 24h0m0s
    groups: [system:bootstrappers:kubeadm:default-node-token]
    usages: [signing, authentication]
"""


def kubeadm_config(node: Node, masters: list[Node], token: str, ver: str, cert_dir: Path, extra_sans=()) -> str:
    cp1 = masters[0]
    sans = {node.name, node.addr4, node.addr6, *extra_sans} | ({cp1.addr4} if node.role == "control-plane" else set())
    sans = sorted(sans)
    return f"""\
apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
{bootstrap_tokens(token)}localAPIEndpoint:
  advertiseAddress: {node.addr4 if node.role == "control-plane" else cp1.addr4}
  bindPort: 6443
nodeRegistration:
  name: {node.name}
  criSocket: {CRI_SOCKET}
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
clusterName: {CLUSTER_NAME}
kubernetesVersion: {ver}
controlPlaneEndpoint: "{cp1.addr4}:6443"
certificatesDir: {cert_dir}
networking:
  dnsDomain: cluster.local
  serviceSubnet: "{SERVICE_CIDRS}"
  podSubnet: "{POD_CIDRS}"
apiServer:
  certSANs: [{", ".join(f'"{s}"' for s in sans)}]
etcd:
  local:
    dataDir: /var/lib/etcd
---
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: ipvs
"""


@dataclass(frozen=True)
class Kubeadm:
    """kubeadm's phases for the lab's cluster: its binary, its masters and a bootstrap token."""

    bindir: Path
    masters: list[Node]
    token: str

    def __call__(self, node: Node, cert_dir: Path, *args: str, extra_sans=()) -> str:
        # kubeadm refuses --cert-dir next to --config: the directory goes into the config instead.
        cfg = WORK / "kubeadm" / f"{node.name}-{cert_dir.name}.yaml"
        ver = versions()["K8S_VERSION"]
        cfg.write_text(kubeadm_config(node, self.masters, self.token, ver, cert_dir, extra_sans))
        return sh(str(self.bindir / "kubeadm"), *args, "--config", str(cfg)).stdout


def node_pki(node: Node, kubeadm: Kubeadm, extra_sans=()) -> None:
    """The node's certificates and kubeconfigs, signed by the lab's CAs, as kubeadm init or join leaves them."""
    etc = seed_dir(node) / "rootfs/etc/kubernetes"
    pki = etc / "pki"
    pki.mkdir(parents=True, exist_ok=True)
    if node.role == "control-plane":
        shutil.copytree(SHARED_PKI, pki, dirs_exist_ok=True)
        kubeadm(node, pki, "init", "phase", "certs", "all", extra_sans=extra_sans)
        kubeadm(node, pki, "init", "phase", "kubeconfig", "all", "--kubeconfig-dir", str(etc))
        return
    # A worker has the cluster CA and its kubelet.conf, as `kubeadm join` leaves them.
    shutil.copy2(SHARED_PKI / "ca.crt", pki / "ca.crt")
    kubeadm(node, SHARED_PKI, "init", "phase", "kubeconfig", "kubelet", "--kubeconfig-dir", str(etc))
    # kube-proxy runs as a systemd unit here, with its own client certificate (system:kube-proxy).
    conf = kubeadm(node, SHARED_PKI, "kubeconfig", "user", "--client-name", "system:kube-proxy")
    (etc / "kube-proxy.conf").write_text(conf)
    (etc / "kube-proxy.conf").chmod(0o600)


def make_pki(nodes: list[Node], bindir: Path, token: str) -> None:
    """PKI and kubeconfigs from kubeadm's phases: one set of CAs, then each node's own certificates."""
    masters = [n for n in nodes if n.role == "control-plane"]
    # What upload-config stores in the cluster: the paths as they are on the masters.
    cfgdir = WORK / "kubeadm"
    cfgdir.mkdir(parents=True, exist_ok=True)
    ver = versions()["K8S_VERSION"]
    (cfgdir / "cluster.yaml").write_text(kubeadm_config(masters[0], masters, token, ver, Path("/etc/kubernetes/pki")))
    kubeadm = Kubeadm(bindir, masters, token)
    for phase in ("ca", "etcd-ca", "front-proxy-ca", "sa"):
        kubeadm(masters[0], SHARED_PKI, "init", "phase", "certs", phase)
    if state_flavour() == "kubeadm":
        return  # kubeadm init and join make the rest on the nodes
    for node in nodes:
        node_pki(node, kubeadm)
    for conf in ("admin.conf", "super-admin.conf"):
        shutil.copy2(seed_dir(masters[0]) / "rootfs/etc/kubernetes" / conf, WORK / conf)
    shutil.copy2(SHARED_PKI / "ca.crt", WORK / "ca.crt")
