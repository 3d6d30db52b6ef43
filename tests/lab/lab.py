"""The kubeha lab: a real Kubernetes control plane and real nodes on one machine.

    lab.py up | down | status | ssh NODE [CMD...] | join | leave [MASTER]

`join` and `leave` are day 2 in the lab: one more master joins the running cluster (as `kubeadm join
--control-plane` makes it), or a master leaves it (as `kubeadm reset` there would); both rewrite the inventory.

Every node lives in a network namespace the lab creates, on one bridge inside the hub namespace
(`khalab`), which has no uplink: lab traffic cannot leave the lab. Control-plane nodes and the userspace
worker are systemd-nspawn containers; the IPVS worker is a qemu guest (software emulation) with a Debian
kernel. Everything the lab starts is recorded in a state file and stopped by PID, mount or namespace name.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

# Run as a script, this module is also the `lab` that kubeadm_flavour imports (one state, one Node class).
if __name__ == "__main__":
    sys.modules.setdefault("lab", sys.modules[__name__])

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CACHE = Path(os.environ.get("KUBEHA_CACHE", "/var/cache/kubeha"))
WORK = Path(os.environ.get("KUBEHA_LAB_WORK", "/var/lib/kubeha-lab"))
PRISTINE_KUBE_PROXY = WORK / "kube-proxy.configmap.json"
PRISTINE_CLUSTER_INFO = WORK / "cluster-info.configmap.json"
RUN = Path(os.environ.get("KUBEHA_LAB_RUN", "/run/kubeha-lab"))
LOCK = Path("/run/kubeha-lab.lock")
STATE = RUN / "state.json"

HUB_NS = "khalab"
NS_PREFIX = "khalab-"
BRIDGE = "br0"
NET4_PREFIX, GW4 = "10.88.0.", "10.88.0.1"
NET6_PREFIX, GW6 = "fd88:88::", "fd88:88::1"
MIRROR_PORT = 8080
SITE_MIRROR = f"http://{GW4}:{MIRROR_PORT}"
SERVICE_CIDRS = "10.96.0.0/16,fd88:96::/112"
POD_CIDRS = "10.244.0.0/16,fd88:244::/56"
CLUSTER_NAME = "kubeha-lab"
NODE_BIN = "/opt/kubeha-lab/bin"
NODE_IMAGES = "/opt/kubeha-lab/images"
FLAVOURS = ("binary", "kubeadm")
CRI_SOCKET = "unix:///var/run/containerd/containerd.sock"  # the CRI socket the kubeadm configurations name
EMULATED_PROBE_TIMEOUT = 3.0  # seconds: the guard's probe timeout on the kubeadm flavour's emulated worker


def flavour() -> str:
    """KUBEHA_LAB_FLAVOUR: binary (systemd-managed control plane, no kubelet) or kubeadm (kubeadm_flavour.py)."""
    value = os.environ.get("KUBEHA_LAB_FLAVOUR", "binary")
    if value not in FLAVOURS:
        sys.exit(f"KUBEHA_LAB_FLAVOUR={value!r}: not a lab flavour (one of {', '.join(FLAVOURS)})")
    return value


def versions() -> dict[str, str]:
    out = {}
    for line in (HERE / "versions.env").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    # make test-k8s-previous runs the lab on the previous minor (build_binaries.sh reads the same variable).
    out["K8S_VERSION"] = os.environ.get("KUBEHA_K8S_VERSION") or out["K8S_VERSION"]
    return out


@dataclass(frozen=True)
class Node:
    name: str
    kind: str  # "nspawn" or "qemu"
    role: str  # "control-plane" or "worker"
    index: int

    @property
    def addr4(self) -> str:
        return f"{NET4_PREFIX}{self.index}"

    @property
    def addr6(self) -> str:
        return f"{NET6_PREFIX}{self.index}"

    @property
    def netns(self) -> str:
        # qemu runs in the hub namespace behind a tap device; nspawn nodes get a namespace each.
        return HUB_NS if self.kind == "qemu" else NS_PREFIX + self.name

    @property
    def has_ipvs(self) -> bool:
        return self.kind == "qemu"

    @property
    def suite(self) -> str:
        """The node's Debian release: the newer one on nspawn workers, so every lab run has both."""
        v = versions()
        return v["DEBIAN_SUITE_NEWER"] if self.kind == "nspawn" and self.role == "worker" else v["DEBIAN_SUITE"]


def topology() -> list[Node]:
    masters = int(os.environ.get("KUBEHA_LAB_MASTERS", "3"))
    qemu_workers = int(os.environ.get("KUBEHA_LAB_QEMU_WORKERS", "1"))
    nspawn_workers = int(os.environ.get("KUBEHA_LAB_NSPAWN_WORKERS", "1"))
    nodes = [Node(f"cp{i}", "nspawn", "control-plane", 10 + i) for i in range(1, masters + 1)]
    workers = ["qemu"] * qemu_workers + ["nspawn"] * nspawn_workers
    for i, kind in enumerate(workers, start=1):
        nodes.append(Node(f"w{i}", kind, "worker", 20 + i))
    return nodes


def log(msg: str) -> None:
    print(f"[lab {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sh(*cmd: str, ns: str | None = None, check: bool = True, input: str | None = None, timeout: float = 300):
    argv = list(cmd)
    if ns:
        argv = ["ip", "netns", "exec", ns, *argv]
    res = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout, check=False)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip() or res.stdout.strip()}")
    return res


def wait_for(what: str, predicate, timeout: float, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    last_error: object = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:  # the condition is not met yet; keep the reason for the timeout message
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(
        f"timed out after {timeout:.0f} s waiting for {what}" + (f": {last_error}" if last_error else "")
    )


def spawn(argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> int:
    """Start a long-running lab process in its own session, output to a file; return its PID."""
    with log_path.open("w") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=None if env is None else os.environ | env,
        )
    return proc.pid


# ---------------------------------------------------------------------------------------------------------------
# state: everything the lab started, so that `down` stops exactly that


def load_state() -> dict:
    if STATE.exists():
        return json.loads(STATE.read_text())
    return {}


def save_state(state: dict) -> None:
    RUN.mkdir(parents=True, exist_ok=True)
    tmp = STATE.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(STATE)


def state_flavour() -> str:
    """The running lab's flavour (a lab brought up before flavours existed is binary)."""
    return load_state().get("flavour", "binary")


@contextlib.contextmanager
def lab_lock() -> Iterator[None]:
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with LOCK.open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            sys.exit("another lab operation holds the lab lock (one lab per machine)")
        yield


def ssh_key() -> Path:
    key = CACHE / "lab" / "id_ed25519"
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kubeha-lab", "-f", str(key))
    return key


def ssh_argv(node: Node | str, *cmd: str) -> list[str]:
    addr = node.addr4 if isinstance(node, Node) else node
    # The emulated node's sshd, busy under a suite's load, has taken over 5 s to send its banner (CI, 2026-12-02).
    connect_timeout = 30 if isinstance(node, Node) and node.kind == "qemu" else 5
    return [
        "ip",
        "netns",
        "exec",
        HUB_NS,
        "ssh",
        "-i",
        str(ssh_key()),
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        f"ConnectTimeout={connect_timeout}",
        f"root@{addr}",
        *cmd,
    ]


def ssh(node: Node, cmd: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    res = subprocess.run(ssh_argv(node, cmd), capture_output=True, text=True, timeout=timeout, check=False)
    if check and res.returncode != 0:
        raise RuntimeError(f"{node.name}: {cmd!r} failed ({res.returncode}): {res.stderr.strip()}")
    return res


# ---------------------------------------------------------------------------------------------------------------
# network


def make_network(nodes: list[Node]) -> None:
    sh("ip", "netns", "add", HUB_NS)
    sh("ip", "-n", HUB_NS, "link", "set", "lo", "up")
    sh("ip", "-n", HUB_NS, "link", "add", BRIDGE, "type", "bridge")
    sh("ip", "-n", HUB_NS, "addr", "add", f"{GW4}/24", "dev", BRIDGE)
    sh("ip", "-n", HUB_NS, "addr", "add", f"{GW6}/64", "dev", BRIDGE, "nodad")
    sh("ip", "-n", HUB_NS, "link", "set", BRIDGE, "up")
    for node in nodes:
        attach(node)


def attach(node: Node) -> None:
    """The node's link to the lab's bridge: a tap for qemu, a namespace and a veth pair for nspawn."""
    if node.kind == "qemu":
        tap = f"t-{node.name}"
        sh("ip", "-n", HUB_NS, "tuntap", "add", "dev", tap, "mode", "tap")
        sh("ip", "-n", HUB_NS, "link", "set", tap, "master", BRIDGE, "up")
        return
    ns = node.netns
    sh("ip", "netns", "add", ns)
    sh("ip", "-n", HUB_NS, "link", "add", f"v-{node.name}", "type", "veth", "peer", "name", "eth0", "netns", ns)
    sh("ip", "-n", HUB_NS, "link", "set", f"v-{node.name}", "master", BRIDGE, "up")
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", ns, "addr", "add", f"{node.addr4}/24", "dev", "eth0")
    sh("ip", "-n", ns, "addr", "add", f"{node.addr6}/64", "dev", "eth0", "nodad")
    sh("ip", "-n", ns, "link", "set", "eth0", "up")
    sh("ip", "-n", ns, "route", "add", "default", "via", GW4)
    sh("ip", "-n", ns, "-6", "route", "add", "default", "via", GW6)


# ---------------------------------------------------------------------------------------------------------------
# PKI and kubeconfigs, made by kubeadm's own phases


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


SHARED_PKI = WORK / "pki" / "shared"


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


# ---------------------------------------------------------------------------------------------------------------
# seeds: what each node has before the collection is applied


def seed_dir(node: Node) -> Path:
    return WORK / "nodes" / node.name / "seed"


def unit(description: str, exec_start: list[str], after: str = "network-online.target", extra: str = "") -> str:
    args = " \\\n  ".join(exec_start)
    return f"""\
[Unit]
Description={description}
After={after}

[Service]
ExecStart={args}
Restart=always
RestartSec=2
{extra}
[Install]
WantedBy=multi-user.target
"""


def master_units(node: Node, masters: list[Node], joining: bool = False) -> dict[str, str]:
    pki = "/etc/kubernetes/pki"
    initial = ",".join(f"{m.name}=https://{m.addr4}:2380" for m in masters)
    etcd = [
        f"{NODE_BIN}/etcd",
        f"--name={node.name}",
        "--data-dir=/var/lib/etcd",
        f"--advertise-client-urls=https://{node.addr4}:2379",
        f"--listen-client-urls=https://127.0.0.1:2379,https://{node.addr4}:2379",
        f"--initial-advertise-peer-urls=https://{node.addr4}:2380",
        f"--listen-peer-urls=https://{node.addr4}:2380",
        f"--initial-cluster={initial}",
        f"--initial-cluster-state={'existing' if joining else 'new'}",
        f"--initial-cluster-token={CLUSTER_NAME}",
        f"--cert-file={pki}/etcd/server.crt",
        f"--key-file={pki}/etcd/server.key",
        "--client-cert-auth=true",
        f"--trusted-ca-file={pki}/etcd/ca.crt",
        f"--peer-cert-file={pki}/etcd/peer.crt",
        f"--peer-key-file={pki}/etcd/peer.key",
        "--peer-client-cert-auth=true",
        f"--peer-trusted-ca-file={pki}/etcd/ca.crt",
        "--listen-metrics-urls=http://127.0.0.1:2381",
        "--snapshot-count=10000",
    ]
    apiserver = [
        f"{NODE_BIN}/kube-apiserver",
        f"--advertise-address={node.addr4}",
        "--allow-privileged=true",
        "--authorization-mode=Node,RBAC",
        f"--client-ca-file={pki}/ca.crt",
        "--enable-admission-plugins=NodeRestriction",
        "--enable-bootstrap-token-auth=true",
        f"--etcd-cafile={pki}/etcd/ca.crt",
        f"--etcd-certfile={pki}/apiserver-etcd-client.crt",
        f"--etcd-keyfile={pki}/apiserver-etcd-client.key",
        "--etcd-servers=https://127.0.0.1:2379",
        f"--kubelet-client-certificate={pki}/apiserver-kubelet-client.crt",
        f"--kubelet-client-key={pki}/apiserver-kubelet-client.key",
        "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname",
        f"--proxy-client-cert-file={pki}/front-proxy-client.crt",
        f"--proxy-client-key-file={pki}/front-proxy-client.key",
        "--requestheader-allowed-names=front-proxy-client",
        f"--requestheader-client-ca-file={pki}/front-proxy-ca.crt",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-username-headers=X-Remote-User",
        "--secure-port=6443",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki}/sa.pub",
        f"--service-account-signing-key-file={pki}/sa.key",
        f"--service-cluster-ip-range={SERVICE_CIDRS}",
        f"--tls-cert-file={pki}/apiserver.crt",
        f"--tls-private-key-file={pki}/apiserver.key",
    ]
    cm_conf = "/etc/kubernetes/controller-manager.conf"
    controller_manager = [
        f"{NODE_BIN}/kube-controller-manager",
        f"--authentication-kubeconfig={cm_conf}",
        f"--authorization-kubeconfig={cm_conf}",
        "--bind-address=127.0.0.1",
        f"--client-ca-file={pki}/ca.crt",
        f"--cluster-name={CLUSTER_NAME}",
        f"--cluster-signing-cert-file={pki}/ca.crt",
        f"--cluster-signing-key-file={pki}/ca.key",
        "--controllers=*,bootstrapsigner,tokencleaner",
        f"--kubeconfig={cm_conf}",
        "--leader-elect=true",
        f"--requestheader-client-ca-file={pki}/front-proxy-ca.crt",
        f"--root-ca-file={pki}/ca.crt",
        f"--service-account-private-key-file={pki}/sa.key",
        "--use-service-account-credentials=true",
        "--allocate-node-cidrs=true",
        f"--cluster-cidr={POD_CIDRS}",
        f"--service-cluster-ip-range={SERVICE_CIDRS}",
    ]
    sched_conf = "/etc/kubernetes/scheduler.conf"
    scheduler = [
        f"{NODE_BIN}/kube-scheduler",
        f"--authentication-kubeconfig={sched_conf}",
        f"--authorization-kubeconfig={sched_conf}",
        "--bind-address=127.0.0.1",
        f"--kubeconfig={sched_conf}",
        "--leader-elect=true",
    ]
    return {
        "etcd.service": unit("etcd (stacked, as kubeadm runs it)", etcd, extra="Type=notify\nTimeoutStartSec=0\n"),
        "kube-apiserver.service": unit("Kubernetes API server", apiserver, after="etcd.service"),
        "kube-controller-manager.service": unit(
            "Kubernetes controller manager", controller_manager, after="kube-apiserver.service"
        ),
        "kube-scheduler.service": unit("Kubernetes scheduler", scheduler, after="kube-apiserver.service"),
    }


def worker_units(node: Node) -> dict[str, str]:
    loader = "/usr/local/lib/kubeha-lab/kube-proxy-config.py"
    if node.has_ipvs:
        # As node setup guides do (modules-load.d), and again here for the first boot.
        extra = "ExecStartPre=/sbin/modprobe -a nf_conntrack ip_vs ip_vs_rr ip_vs_wrr ip_vs_sh\n"
    else:
        # No IPVS in the shared kernel, and its /proc/sys is read-only here: iptables mode, kernel defaults.
        extra = "Environment=KUBEHA_LAB_PROXY_MODE=iptables KUBEHA_LAB_SHARED_KERNEL=1\n"
    extra += f"ExecStartPre=/usr/bin/python3 {loader}\nRestartSec=3\n"
    argv = [f"{NODE_BIN}/kube-proxy", "--config=/var/lib/kube-proxy/config.conf", f"--hostname-override={node.name}"]
    description = "kube-proxy (config read from the live kube-system/kube-proxy ConfigMap at each start)"
    return {"kube-proxy.service": unit(description, argv, extra=extra)}


def make_seed(node: Node, nodes: list[Node], bindir: Path, joining: bool = False) -> None:
    seed = seed_dir(node)
    root = seed / "rootfs"
    masters = [n for n in nodes if n.role == "control-plane"]
    kubeadm_node = state_flavour() == "kubeadm"
    if kubeadm_node:
        import kubeadm_flavour

        units: dict[str, str] | list[str] = kubeadm_flavour.write_seed(node, root, load_state()["pause_image"])
    else:
        units = master_units(node, masters, joining) if node.role == "control-plane" else worker_units(node)
        unit_dir = root / "etc/systemd/system"
        unit_dir.mkdir(parents=True, exist_ok=True)
        for name, text in units.items():
            (unit_dir / name).write_text(text)
    libdir = root / "usr/local/lib/kubeha-lab"
    libdir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(HERE / "node" / "kube-proxy-config.py", libdir / "kube-proxy-config.py")
    bin_link_dir = root / "usr/local/bin"
    bin_link_dir.mkdir(parents=True, exist_ok=True)
    if node.has_ipvs:
        modules = root / "etc/modules-load.d"
        modules.mkdir(parents=True, exist_ok=True)
        (modules / "kube-proxy.conf").write_text("nf_conntrack\nip_vs\nip_vs_rr\nip_vs_wrr\nip_vs_sh\n")
    for tool in ("kubectl", "kubeadm"):
        link = bin_link_dir / tool
        link.unlink(missing_ok=True)
        link.symlink_to(f"{NODE_BIN}/{tool}")
    hosts = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
    hosts += [f"{n.addr4} {n.name}" for n in nodes] + [f"{n.addr6} {n.name}" for n in nodes]
    env = {
        "NODE_NAME": node.name,
        "NODE_ADDR4": f"{node.addr4}/24",
        "NODE_ADDR6": f"{node.addr6}/64",
        "LAB_GW4": GW4,
        "LAB_GW6": GW6,
        "SITE_MIRROR": SITE_MIRROR,
        "SITE_DEBIAN": mirror_path(node.suite),
        "HOSTS_LINES": "\n".join(hosts),
        "START_UNITS": " ".join(units),
    }
    if kubeadm_node and node.kind == "nspawn":
        import kubeadm_flavour

        env |= {
            "CGROUP_V1_WRITABLE": "1",
            "CGROUP_CONTROLLERS": " ".join(kubeadm_flavour.CGROUP_CONTROLLERS),
            "KUBELET_CGROUP_ROOT": kubeadm_flavour.cgroup_root(node),
        }
    (seed / "node.env").write_text("".join(f"{k}='{v}'\n" for k, v in env.items()))
    shutil.copy2(HERE / "node" / "init", seed / "init")
    shutil.copy2(ssh_key().with_suffix(".pub"), seed / "authorized_keys")
    (seed / "bin").mkdir(exist_ok=True)
    if kubeadm_node:
        (seed / "images").mkdir(exist_ok=True)  # nspawn binds the archives here; the qemu seed carries them
    if node.kind == "qemu":
        # The guest sees the seed as a second disk; its binaries travel on it.
        for tool in ("kube-proxy", "kubectl", "kubeadm") + (("kubelet",) if kubeadm_node else ()):
            shutil.copy2(bindir / tool, seed / "bin" / tool)
        if kubeadm_node:
            shutil.copy2(Path(load_state()["container_images"]) / "workers.tar", seed / "images" / "workers.tar")
        disk = WORK / "nodes" / node.name / "seed.img"
        sh("mkfs.ext4", "-q", "-F", "-L", "kubeha-seed", "-d", str(seed), str(disk), "1G" if kubeadm_node else "512M")


# ---------------------------------------------------------------------------------------------------------------
# nodes


def start_nspawn(node: Node, images: Path, bindir: Path, state: dict) -> None:
    base = WORK / "nodes" / node.name
    upper, work, root = base / "upper", base / "work", base / "root"
    for d in (upper, work, root):
        d.mkdir(parents=True, exist_ok=True)
    sh(
        "mount",
        "-t",
        "overlay",
        "overlay",
        "-o",
        f"lowerdir={images / 'rootfs'},upperdir={upper},workdir={work}",
        str(root),
    )
    state["mounts"].append(str(root))
    save_state(state)
    argv = [
        "systemd-nspawn",
        "--quiet",
        "--register=no",
        "--keep-unit",
        "--boot",
        "--console=passive",
        "--link-journal=no",
    ]
    argv += ["--resolv-conf=off", "--timezone=off", f"--machine={node.name}", f"--directory={root}"]
    argv += [
        f"--network-namespace-path=/run/netns/{node.netns}",
        "--capability=CAP_NET_ADMIN",
        f"--bind-ro={bindir}:{NODE_BIN}",
    ]
    argv += [f"--bind-ro={seed_dir(node)}:/opt/kubeha-lab"]
    if state.get("flavour") == "kubeadm":
        # kubelet and runc: every capability (cgroups, mounts), the kernel log, containerd's state off overlayfs.
        containerd = base / "containerd"
        containerd.mkdir(exist_ok=True)
        argv += ["--capability=all", "--bind=/dev/kmsg", f"--bind={containerd}:/var/lib/containerd"]
        argv += [f"--bind-ro={state['container_images']}:{NODE_IMAGES}"]
    # The node owns its network namespace, so its /proc/sys/net may be writable (kube-proxy, the guard).
    state["pids"][node.name] = spawn(argv, base / "console.log", env={"SYSTEMD_NSPAWN_API_VFS_WRITABLE": "network"})
    save_state(state)


def start_qemu(node: Node, images: Path, state: dict) -> None:
    base = WORK / "nodes" / node.name
    disk = base / "disk.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", str(images / "disk.img"), "-F", "raw", str(disk))
    mac = f"52:54:00:88:00:{node.index:02x}"
    append = (
        f"console=ttyS0 root=/dev/vda rw quiet net.ifnames=0 systemd.hostname={node.name} "
        f"ip={node.addr4}::{GW4}:255.255.255.0:{node.name}:eth0:off"
    )
    memory = os.environ.get("KUBEHA_LAB_QEMU_MEMORY", "1536")
    argv = ["ip", "netns", "exec", HUB_NS, "qemu-system-x86_64", "-name", node.name, "-m", memory]
    argv += [
        "-accel",
        "tcg",
        "-smp",
        "2",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-device",
        "virtio-rng-pci",
    ]
    argv += ["-kernel", str(images / "vmlinuz"), "-initrd", str(images / "initrd"), "-append", append]
    argv += ["-drive", f"file={disk},if=virtio,format=qcow2,cache=unsafe"]
    argv += ["-drive", f"file={base / 'seed.img'},if=virtio,format=raw,readonly=on"]
    argv += ["-netdev", f"tap,id=n0,ifname=t-{node.name},script=no,downscript=no"]
    argv += ["-device", f"virtio-net-pci,netdev=n0,mac={mac}", "-serial", f"file:{base / 'console.log'}"]
    argv += ["-monitor", f"unix:{base / 'monitor.sock'},server,nowait"]
    state["pids"][node.name] = spawn(argv, base / "qemu.log")
    save_state(state)


# The nodes' Python versions: bookworm's 3.11 and trixie's 3.13 (one wheelhouse serves both releases).
NODE_PYTHONS = ("3.11", "3.13")


def build_wheelhouse() -> Path:
    """The site's Python wheelhouse for the nodes (x86_64, every NODE_PYTHONS), cached by wheels.txt's content."""
    spec = HERE / "wheels.txt"
    key = hashlib.sha256(spec.read_bytes() + " ".join(NODE_PYTHONS).encode()).hexdigest()[:12]
    out = CACHE / "wheels" / key
    if not (out / ".complete").exists():
        log(f"wheelhouse from {spec.name} for Python {', '.join(NODE_PYTHONS)}")
        for python in NODE_PYTHONS:
            pip = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--only-binary=:all:"]
            pip += ["--python-version", python, "--platform", "manylinux2014_x86_64", "--platform", "any"]
            sh(*pip, "-d", str(out), "-r", str(spec), timeout=600)
        (out / ".complete").touch()
    return out


def mirror_path(suite: str) -> str:
    """Where the lab's site mirror serves a Debian release's packages (the default release keeps `debian`)."""
    return "debian" if suite == versions()["DEBIAN_SUITE"] else f"debian-{suite}"


def start_mirror(images: dict[str, Path], wheels: Path, state: dict) -> None:
    served = WORK / "mirror"
    served.mkdir(parents=True, exist_ok=True)
    targets = [(mirror_path(suite), path / "mirror") for suite, path in images.items()] + [("wheels", wheels)]
    for name, target in targets:
        link = served / name
        link.unlink(missing_ok=True)
        link.symlink_to(target)
    argv = ["ip", "netns", "exec", HUB_NS, sys.executable, "-m", "http.server", str(MIRROR_PORT)]
    argv += ["--bind", GW4, "--directory", str(served)]
    state["pids"]["mirror"] = spawn(argv, WORK / "mirror.log")
    save_state(state)


# ---------------------------------------------------------------------------------------------------------------
# the API side


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


# The control plane and kube-proxy as each flavour runs them: systemd units (binary), or kubelet's static pods
# and kubeadm's DaemonSet (kubeadm). The suites act on them through these, so they run on either flavour.
KUBEADM_MANIFEST = "/etc/kubernetes/manifests/kube-apiserver.yaml"
KUBEADM_PARKED = "/etc/kubernetes/kube-apiserver.yaml.stopped"  # outside the manifests directory kubelet reads


def pids_named(comm: str) -> str:
    """A shell command printing the PIDs of the node's processes named `comm` (the nodes have no crictl)."""
    return (f'for p in /proc/[0-9]*; do [ "$(cat "$p/comm" 2>/dev/null)" = {comm} ] && echo "${{p#/proc/}}"; '
            "done; true")  # fmt: skip


def apiserver_pid_command() -> str:
    """A shell command printing the master's kube-apiserver PID (empty while it is not running)."""
    if state_flavour() == "kubeadm":
        return pids_named("kube-apiserver")
    return "systemctl show -p MainPID --value kube-apiserver | grep -vx 0; true"


def apiserver_pid(master: Node) -> str:
    return ssh(master, apiserver_pid_command()).stdout.strip()


def apiserver_command(action: str) -> str:
    """A shell command that stops or starts the master's kube-apiserver, as its flavour runs it.

    Stop returns once the process is gone (as `systemctl stop` does); start once it is asked for, not ready.
    On kubeadm the manifest leaves kubelet's directory and comes back: kubelet stops the pod, then runs it anew.
    """
    if action not in ("stop", "start"):
        raise ValueError(f"apiserver action {action!r}: stop or start")
    if state_flavour() != "kubeadm":
        return f"systemctl {action} kube-apiserver"
    if action == "start":
        return f"if [ -e {KUBEADM_PARKED} ]; then mv {KUBEADM_PARKED} {KUBEADM_MANIFEST}; fi"
    # Bounded: 600 polls of 0.2 s, past the pod's grace period.
    return (f"if [ -e {KUBEADM_MANIFEST} ]; then mv {KUBEADM_MANIFEST} {KUBEADM_PARKED}; fi; n=0; "
            f'while [ -n "$({pids_named("kube-apiserver")})" ]; do sleep 0.2; n=$((n+1)); [ $n -lt 600 ] || exit 3; '
            "done")  # fmt: skip


def kube_proxy_pid(node: Node) -> str:
    if state_flavour() == "kubeadm":
        return ssh(node, pids_named("kube-proxy")).stdout.strip()
    return ssh(node, "systemctl show -p MainPID --value kube-proxy").stdout.strip()


def node_metrics(node: Node, port: int) -> str:
    """The Prometheus text a process serves on the node's loopback (nodes have no curl); "" while none answers."""
    url = f"http://127.0.0.1:{port}/metrics"
    fetch = f"import urllib.request as u; print(u.urlopen('{url}', timeout=3).read().decode())"
    return ssh(node, f"python3 -c {shlex.quote(fetch)}", check=False).stdout


def kube_proxy_syncs(node: Node) -> dict[str, float]:
    """kube-proxy's rule syncs since it started, by IP family: a dual-stack kube-proxy runs one proxier a family,
    each syncing on its own (the IPv4 one may be done while the IPv6 one has not started)."""
    found = re.finditer(
        r'^kubeproxy_sync_proxy_rules_duration_seconds_count\{ip_family="(IPv[46])"\} (\S+)$',
        node_metrics(node, 10249),
        re.M,
    )
    return {m.group(1): float(m.group(2)) for m in found}


def restart_kube_proxy(node: Node) -> None:
    """Restart the node's kube-proxy (it rereads the ConfigMap): its unit, or its DaemonSet pod deleted.

    Returns once a new process has synced its rules (`wait_for_kube_proxy`).
    """
    before = kube_proxy_pid(node)
    if state_flavour() == "kubeadm":
        kubectl("-n", "kube-system", "delete", "pod", "-l", "k8s-app=kube-proxy",
                f"--field-selector=spec.nodeName={node.name}", "--grace-period=1", "--wait=false")  # fmt: skip
    else:
        ssh(node, "systemctl restart kube-proxy")
    wait_for_kube_proxy(node, before)


def wait_for_kube_proxy(node: Node, old_pid: str, timeout: float = 180) -> None:
    """A kube-proxy other than `old_pid` on the node, done with its first sync of the rules (the sync that
    deletes, in IPVS mode, the services it does not own: the exclude suite's negative control shows it)."""
    wait_for(
        f"a new kube-proxy on {node.name}, its rules synced",
        lambda: kube_proxy_pid(node) not in ("", "0", old_pid) and synced_both_families(node),
        timeout,
    )


def synced_both_families(node: Node, times: int = 1) -> bool:
    """The lab is dual-stack: both of kube-proxy's proxiers have synced at least `times` times."""
    syncs = kube_proxy_syncs(node)
    return all(syncs.get(family, 0) >= times for family in ("IPv4", "IPv6"))


def node_ready_since(name: str, since: float, via: Node | None = None) -> bool:
    """The Node is Ready by a kubelet status posted at `since` (a wall-clock time) or later: a fresh report,
    not the one the cluster still holds from before (it would stay Ready for the 40 s grace either way)."""
    node = json.loads(kubectl("get", "node", name, "-o", "json", via=via).stdout)
    for condition in node["status"].get("conditions", []):
        if condition["type"] == "Ready":
            posted = datetime.fromisoformat(condition["lastHeartbeatTime"].replace("Z", "+00:00")).timestamp()
            return condition["status"] == "True" and posted >= since
    return False


def pristine_kubelet_conf(node: Node) -> str:
    """kubelet.conf as the node had it before the collection ran: the seed's, or kubeadm's (saved at lab up)."""
    if state_flavour() == "kubeadm":
        return (WORK / "pristine" / f"{node.name}.kubelet.conf").read_text()
    return (seed_dir(node) / "rootfs/etc/kubernetes/kubelet.conf").read_text()


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


# ---------------------------------------------------------------------------------------------------------------
# commands


def build_images(suites: set[str]) -> dict[str, Path]:
    out = {}
    for suite in sorted(suites):
        printed = sh("bash", str(HERE / "build_images.sh"), suite, timeout=3600).stdout.strip().splitlines()
        out[suite] = Path(printed[-1])
    return out


def build(nodes: list[Node]) -> tuple[Path, dict[str, Path], Path]:
    bindir = Path(sh("bash", str(HERE / "build_binaries.sh"), timeout=7200).stdout.strip().splitlines()[-1])
    images = build_images({n.suite for n in nodes} | {versions()["DEBIAN_SUITE"]})
    return bindir, images, build_wheelhouse()


def cmd_up() -> None:
    t0 = time.monotonic()
    lab_flavour = flavour()
    with lab_lock():
        if STATE.exists() or any_lab_netns():
            log("a previous lab is here: cleaning it up first")
            teardown()
        nodes = topology()
        bindir, images, wheels = build(nodes)
        log(f"{lab_flavour} flavour: binaries {bindir.name}, images {', '.join(p.name for p in images.values())}")
        default_images = images[versions()["DEBIAN_SUITE"]]
        state = {
            "flavour": lab_flavour,
            "bindir": str(bindir),
            "images": str(default_images),
            "images_by_suite": {suite: str(path) for suite, path in images.items()},
            "nodes": [asdict(n) for n in nodes],
            "pids": {},
            "mounts": [],
            "netns": [HUB_NS] + [n.netns for n in nodes if n.kind != "qemu"],
        }
        if lab_flavour == "kubeadm":
            import container_images
            import kubeadm_flavour

            built = container_images.build(bindir, versions())
            state["container_images"] = str(built)
            state["pause_image"] = json.loads((built / "images.json").read_text())["pause"]
            log(f"container images {built.name} (imported on every node, nothing pulled)")
            kubeadm_flavour.set_host_sysctls(state)
        save_state(state)
        WORK.mkdir(parents=True, exist_ok=True)
        make_network(nodes)
        start_mirror(images, wheels, state)
        token = f"{secrets.token_hex(3)}.{secrets.token_hex(8)}"
        log("PKI and kubeconfigs (kubeadm init phase certs / kubeconfig)")
        make_pki(nodes, bindir, token)
        if lab_flavour == "kubeadm":
            kubeadm_flavour.write_kubeadm_configs(nodes, token)
            # The token's ID, not its secret: what a joining node's CSR names.
            state["bootstrap_token_id"] = token.split(".", maxsplit=1)[0]
            save_state(state)
        for node in nodes:
            make_seed(node, nodes, bindir)
        log("booting " + ", ".join(f"{n.name} ({n.kind})" for n in nodes))
        for node in nodes:
            if node.kind == "qemu":
                start_qemu(node, default_images, state)
            else:
                start_nspawn(node, images[node.suite], bindir, state)
        masters = [n for n in nodes if n.role == "control-plane"]
        with ThreadPoolExecutor(len(nodes)) as pool:
            list(pool.map(lambda n: wait_for(f"SSH on {n.name}", lambda: ssh(n, "true", timeout=15), 240), nodes))
        log(f"SSH answers on every node ({time.monotonic() - t0:.0f} s)")
        if lab_flavour == "kubeadm":
            with ThreadPoolExecutor(len(nodes)) as pool:
                list(pool.map(kubeadm_flavour.import_images, nodes))
            log(f"images imported on every node ({time.monotonic() - t0:.0f} s)")
            kubeadm_flavour.bring_up(nodes, token)
            PRISTINE_KUBE_PROXY.write_text(kubectl("get", "-n", "kube-system", "cm", "kube-proxy", "-o", "json").stdout)
            PRISTINE_CLUSTER_INFO.write_text(
                kubectl("get", "-n", "kube-public", "cm", "cluster-info", "-o", "json").stdout
            )
            (WORK / "pristine").mkdir(exist_ok=True)
            for node in nodes:  # what kubeadm init and join left: reset.yml must give it back byte for byte
                (WORK / "pristine" / f"{node.name}.kubelet.conf").write_text(
                    ssh(node, "cat /etc/kubernetes/kubelet.conf").stdout
                )
            inventory = write_inventory(nodes)
            state["ready_after_s"] = round(time.monotonic() - t0, 1)
            save_state(state)
            log(f"kubeadm lab is up in {time.monotonic() - t0:.0f} s, every node Ready; inventory: {inventory}")
            return
        for m in masters:
            wait_for(f"kube-apiserver on {m.name}", lambda m=m: readyz(m.addr4), 240)
        log(f"every apiserver is ready ({time.monotonic() - t0:.0f} s)")
        log("API objects (kubeadm init phase upload-config / bootstrap-token / addon kube-proxy)")
        bootstrap_api(nodes, bindir)
        workers = [n for n in nodes if n.role == "worker"]
        for w in workers:
            wait_for(f"kube-proxy on {w.name}", lambda w=w: kube_proxy_healthy(w), 180)
        inventory = write_inventory(nodes)
        state["ready_after_s"] = round(time.monotonic() - t0, 1)
        save_state(state)
    log(f"lab is up in {time.monotonic() - t0:.0f} s; inventory: {inventory}")


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


def cmd_join() -> None:
    """Day 2: one more master joins the running cluster, as `kubeadm join --control-plane` would make it.

    Its certificates are signed by the cluster's CAs with the certSANs of the cluster's kubeadm-config (as kubeadm
    reads them), its etcd joins as a new member, its apiserver starts; it is added to the lab's inventory last.
    """
    import yaml  # the project's virtualenv has it (ansible-core); only this command needs it

    with lab_lock():
        state = load_state()
        nodes = [Node(**raw) for raw in state["nodes"]]
        masters = [n for n in nodes if n.role == "control-plane"]
        index = max(n.index for n in masters) + 1
        new = Node(f"cp{index - 10}", "nspawn", "control-plane", index)
        log(f"{new.name} joins as a master")
        if state_flavour() == "kubeadm":
            import kubeadm_flavour

            try:
                kubeadm_flavour.join_master(new, nodes, state)
            except BaseException:
                log(f"{new.name} did not join: stopping it, the lab is as before")
                discard(new, state)
                write_inventory(nodes)
                raise
            state["nodes"].append(asdict(new))
            state.setdefault("joined", []).append(new.name)
            save_state(state)
            write_inventory([*nodes, new])
            log(f"{new.name} is a master (kubeadm join --control-plane), Ready; the inventory lists it")
            return
        config = kubectl("get", "-n", "kube-system", "cm", "kubeadm-config", "-o", "json").stdout
        cluster = yaml.safe_load(json.loads(config)["data"]["ClusterConfiguration"])
        cert_sans = (cluster.get("apiServer") or {}).get("certSANs") or []
        bindir, images = Path(state["bindir"]), Path(state["images"])
        token = f"{secrets.token_hex(3)}.{secrets.token_hex(8)}"  # kubeadm's config wants one; nothing uses it
        node_pki(new, Kubeadm(bindir, [*masters, new], token), cert_sans)
        make_seed(new, [*nodes, new], bindir, joining=True)
        etcd_members(masters[0], "add", {"peerURLs": [f"https://{new.addr4}:2380"]})
        attach(new)
        state["netns"].append(new.netns)
        start_nspawn(new, images, bindir, state)
        wait_for(f"SSH on {new.name}", lambda: ssh(new, "true", timeout=15), 240)
        wait_for(f"kube-apiserver on {new.name}", lambda: readyz(new.addr4), 240)
        register(new)
        state["nodes"].append(asdict(new))
        state.setdefault("joined", []).append(new.name)
        save_state(state)
        write_inventory([*nodes, new])
    log(f"{new.name} is a master: its apiserver is ready and the inventory lists it")


def cmd_leave(name: str | None) -> None:
    """Day 2: a master leaves, as `kubeadm reset` there then `kubectl delete node` would: its apiserver stops, its
    etcd member is removed, the node is powered off and taken out of the inventory. The newest master by default.
    On the kubeadm flavour it is `kubeadm reset` itself there (kubelet, the static pods and the etcd member go)."""
    with lab_lock():
        state = load_state()
        nodes = [Node(**raw) for raw in state["nodes"]]
        masters = [n for n in nodes if n.role == "control-plane"]
        leaving = next((m for m in masters if m.name == name), None) if name else masters[-1]
        if leaving is None or leaving == masters[0] or len(masters) < 2:
            sys.exit(f"cannot take {name!r} out: the lab's masters are {[m.name for m in masters]} (never the first)")
        log(f"{leaving.name} leaves")
        if state_flavour() == "kubeadm":
            import kubeadm_flavour

            kubeadm_flavour.reset_master(leaving, masters[0])
        else:
            ssh(leaving, "systemctl stop kube-scheduler kube-controller-manager kube-apiserver", timeout=180)
            wait_for(f"{leaving.addr4} out of the kubernetes EndpointSlices",
                     lambda: leaving.addr4 not in kubernetes_endpoints(), 120)  # fmt: skip
            members = etcd_members(masters[0], "list", {})["members"]
            etcd_members(masters[0], "remove", {"ID": next(m["ID"] for m in members if m.get("name") == leaving.name)})
        discard(leaving, state)
        kubectl("delete", "node", leaving.name, check=False)
        state["nodes"] = [asdict(n) for n in nodes if n != leaving]
        state.setdefault("left", []).append(leaving.name)
        save_state(state)
        write_inventory([n for n in nodes if n != leaving])
    log(f"{leaving.name} is gone: etcd member removed, node powered off, out of the inventory")


def discard(node: Node, state: dict) -> None:
    """An nspawn node powered off and forgotten: its process, overlay mount, namespace and files (a later join of
    the same name starts afresh), as start_nspawn recorded them in the state."""
    pid = state["pids"].pop(node.name, None)
    if pid:
        stop_pid(pid, 30)
    root = str(WORK / "nodes" / node.name / "root")
    if root in state["mounts"]:
        sh("umount", root, check=False)
        state["mounts"].remove(root)
    if node.netns in state["netns"]:
        sh("ip", "netns", "delete", node.netns, check=False)
        state["netns"].remove(node.netns)
    save_state(state)
    shutil.rmtree(WORK / "nodes" / node.name, ignore_errors=True)


def any_lab_netns() -> bool:
    res = sh("ip", "netns", "list", check=False)
    return any(line.split()[0] == HUB_NS or line.startswith(NS_PREFIX) for line in res.stdout.splitlines() if line)


def lab_netns_names() -> list[str]:
    res = sh("ip", "netns", "list", check=False)
    names = [line.split()[0] for line in res.stdout.splitlines() if line.strip()]
    return [n for n in names if n == HUB_NS or n.startswith(NS_PREFIX)]


def stop_pid(pid: int, grace: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            if _is_zombie(pid):
                return
            time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True


def teardown() -> None:
    state = load_state()
    pids = state.get("pids", {})
    # Nodes first (nspawn powers the container off on SIGTERM; qemu quits), the mirror last.
    with ThreadPoolExecutor(max(1, len(pids))) as pool:
        list(pool.map(lambda pid: stop_pid(pid, 15), [p for n, p in pids.items() if n != "mirror"]))
    if "mirror" in pids:
        stop_pid(pids["mirror"], 5)
    # Anything still running inside a namespace the lab created was started by the lab.
    for ns in lab_netns_names():
        for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
            stop_pid(int(pid), 5)
    mounts = set(state.get("mounts", []))
    if WORK.exists():
        for line in Path("/proc/self/mounts").read_text().splitlines():
            target = line.split()[1]
            if target.startswith(str(WORK) + "/"):
                mounts.add(target)
    for target in sorted(mounts, key=len, reverse=True):
        sh("umount", target, check=False)
    for ns in lab_netns_names():
        sh("ip", "netns", "delete", ns, check=False)
    if state.get("flavour") == "kubeadm":
        import kubeadm_flavour

        kubeadm_flavour.remove_cgroups()
        kubeadm_flavour.restore_host_sysctls(state)
    shutil.rmtree(WORK, ignore_errors=True)
    shutil.rmtree(RUN, ignore_errors=True)


def cmd_down() -> None:
    with lab_lock():
        teardown()
    log("lab is down")


def cmd_status() -> int:
    state = load_state()
    if not state:
        print("lab: down")
        return 1
    ok = True
    print(f"lab: up (ready after {state.get('ready_after_s', '?')} s), binaries {Path(state['bindir']).name}")
    for raw in state["nodes"]:
        node = Node(**raw)
        pid = state["pids"].get(node.name)
        alive = pid is not None and Path(f"/proc/{pid}").exists() and not _is_zombie(pid)
        reach = ssh(node, "systemctl is-system-running", check=False, timeout=20) if alive else None
        sysstate = reach.stdout.strip() if reach is not None else "-"
        extra = ""
        if node.role == "control-plane" and alive:
            extra = " apiserver /readyz: " + ("ok" if readyz(node.addr4) else "FAILED")
        elif alive and state.get("flavour") != "kubeadm":
            proxy = ssh(node, "systemctl is-active kube-proxy", check=False, timeout=20).stdout.strip()
            extra = f" kube-proxy: {proxy}"
        if alive and state.get("flavour") == "kubeadm":
            extra += " kubelet: " + ssh(node, "systemctl is-active kubelet", check=False, timeout=20).stdout.strip()
        ok &= alive and sysstate in ("running", "degraded")
        print(f"  {node.name:4} {node.kind:6} {node.role:13} {node.addr4:12} pid {pid} systemd: {sysstate}{extra}")
    print(f"  inventory: {WORK / 'inventory.yml'}")
    return 0 if ok else 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "status", "ssh", "join", "leave"])
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("the lab needs root (network namespaces, mounts, nspawn)")
    if args.command == "up":
        cmd_up()
    elif args.command == "down":
        cmd_down()
    elif args.command == "status":
        return cmd_status()
    elif args.command == "join":
        cmd_join()
    elif args.command == "leave":
        cmd_leave(args.rest[0] if args.rest else None)
    elif args.command == "ssh":
        nodes = {n["name"]: Node(**n) for n in load_state().get("nodes", [])}
        return subprocess.call(ssh_argv(nodes[args.rest[0]], *args.rest[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
