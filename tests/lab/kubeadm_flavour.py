"""The lab's kubeadm flavour (KUBEHA_LAB_FLAVOUR=kubeadm): the cluster as kubeadm builds it, with real kubelets.

Every node runs containerd and runc (Debian's packages, in the node image) and the lab's kubelet. cp1 runs
`kubeadm init` (controlPlaneEndpoint at its own address, as a cluster built without a load balancer), cp2 and cp3
`kubeadm join --control-plane` (stacked etcd), the workers `kubeadm join`. The control plane is static pods, kube-proxy
kubeadm's DaemonSet; the images come from container_images.py and are imported on each node, never pulled.

How a node that shares the host kernel (nspawn) runs a kubelet, and why:
- cgroup v1: nspawn mounts the v1 controller hierarchies read-only; the node's seed mounts them afresh, writable
  (the container has every capability, as container-based cluster tools give their privileged node containers).
  Each node's kubelet keeps its pods under a cgroup root of its own, below the lab's own memory cgroup, so nodes do
  not share a `kubepods` tree and nothing escapes the lab's memory limit. kubelet 1.35+ needs `failCgroupV1: false`.
- The kernel settings kubelet insists on (vm.overcommit_memory and the panic ones) are global: the lab sets them on
  the host before the nodes start and puts the previous values back at `down` (kubelet would write the same).
- containerd's state is on a directory of the host's file system bound in (overlayfs cannot be its upper layer).
- nspawn's seccomp filter refuses keyctl: runc runs with NoNewKeyring.
- The machine's own capability bounding set lacks CAP_SYS_RESOURCE, so no process here may lower its
  oom_score_adj: containerd restricts the pods' (restrict_oom_score_adj), as rootless setups do.
- kube-proxy: one DaemonSet, as kubeadm makes it, in IPVS mode; the lab wraps its command so that on a node whose
  kernel has no IPVS it runs in iptables mode and leaves the host's conntrack settings alone (as the binary flavour's
  loader does).
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import subprocess
from pathlib import Path

import lab
from container_images import etcd_image_tag
from lab import CRI_SOCKET, NODE_BIN, POD_CIDRS, SERVICE_CIDRS, WORK, Node

SEED_CONFIG = "/etc/kubernetes/kubeha-lab"
# What kubelet sets at start unless it finds them (pkg/kubelet/cm, setupKernelTunables).
KUBELET_SYSCTLS = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
}
# What every master shares (kubeadm's "manual certificate distribution" list).
SHARED_CERTS = ("ca.crt", "ca.key", "sa.key", "sa.pub", "front-proxy-ca.crt", "front-proxy-ca.key", "etcd/ca.crt",
                "etcd/ca.key")  # fmt: skip
CGROUP_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids")


def cgroup_root(node: Node) -> str:
    """The node's kubelet cgroup root. nspawn gives each node a cgroup namespace rooted where the lab runs, so this
    is below the lab's own cgroups on the host (nothing escapes the machine's limits), one tree per node."""
    return f"/kubeha-lab/{node.name}"


def lab_cgroups() -> dict[str, str]:
    """The lab's own cgroup in each v1 hierarchy (the nodes' cgroup namespaces are rooted there)."""
    out = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        controllers, path = line.split(":", 2)[1:]
        for controller in controllers.split(","):
            if controller:
                out[controller.removeprefix("name=")] = path.rstrip("/")
    return out


def remove_cgroups() -> None:
    """The cgroups kubelets and runc left below the lab's, deepest first (the nodes are stopped by then)."""
    for controller, parent in lab_cgroups().items():
        top = Path("/sys/fs/cgroup") / controller / parent.lstrip("/") / "kubeha-lab"
        if not top.is_dir():
            continue
        for d in [*sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True), top]:
            try:
                d.rmdir()
            except OSError as exc:  # a cgroup still in use: say so, `down` goes on
                lab.log(f"cannot remove cgroup {d}: {exc.strerror}")


def set_host_sysctls(state: dict) -> None:
    previous = state.setdefault("host_sysctls", {})
    for key, value in KUBELET_SYSCTLS.items():
        path = Path("/proc/sys") / key
        current = path.read_text().strip()
        if current != value:
            previous.setdefault(key, current)
            path.write_text(value)
    lab.save_state(state)


def restore_host_sysctls(state: dict) -> None:
    for key, value in state.get("host_sysctls", {}).items():
        (Path("/proc/sys") / key).write_text(value)


def ca_cert_hash(ca_crt: Path) -> str:
    """kubeadm's --discovery-token-ca-cert-hash: sha256 of the CA's SubjectPublicKeyInfo."""
    pub = subprocess.run(
        ["openssl", "x509", "-noout", "-pubkey", "-in", str(ca_crt)], capture_output=True, check=True
    ).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=pub, capture_output=True, check=True)
    return "sha256:" + hashlib.sha256(der.stdout).hexdigest()


def node_ips(node: Node) -> str:
    return f"{node.addr4},{node.addr6}"


def node_registration(node: Node) -> str:
    text = f"""\
nodeRegistration:
  name: {node.name}
  criSocket: {CRI_SOCKET}
  kubeletExtraArgs:
    - {{name: node-ip, value: "{node_ips(node)}"}}
"""
    if node.kind == "nspawn":
        # kubeadm refuses cgroup v1 unless told twice: failCgroupV1 false (KubeletConfiguration) and this.
        text += "  ignorePreflightErrors: [SystemVerification]\n"
    return text


def init_config(node: Node, token: str, version: str, etcd_version: str) -> str:
    return f"""\
apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
{lab.bootstrap_tokens(token)}localAPIEndpoint:
  advertiseAddress: {node.addr4}
  bindPort: 6443
{node_registration(node)}---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
clusterName: {lab.CLUSTER_NAME}
kubernetesVersion: {version}
controlPlaneEndpoint: "{node.addr4}:6443"
networking:
  dnsDomain: cluster.local
  serviceSubnet: "{SERVICE_CIDRS}"
  podSubnet: "{POD_CIDRS}"
etcd:
  local:
    dataDir: /var/lib/etcd
    imageTag: "{etcd_image_tag(etcd_version)}"
---
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
# The lab's nodes share one disk with the host: evict only when it is really full.
evictionHard: {{"nodefs.available": "2%", "imagefs.available": "2%", "memory.available": "100Mi"}}
---
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: ipvs
"""


def join_config(node: Node, api_endpoint: str, token: str, ca_hash: str) -> str:
    control_plane = ""
    if node.role == "control-plane":
        control_plane = f"controlPlane:\n  localAPIEndpoint:\n    advertiseAddress: {node.addr4}\n    bindPort: 6443\n"
    return f"""\
apiVersion: kubeadm.k8s.io/v1beta4
kind: JoinConfiguration
discovery:
  bootstrapToken:
    apiServerEndpoint: "{api_endpoint}"
    token: "{token}"
    caCertHashes: ["{ca_hash}"]
{node_registration(node)}{control_plane}"""


def containerd_config(pause_ref: str) -> str:
    cri = '[plugins."io.containerd.grpc.v1.cri"'
    return f"""\
version = 2
{cri}]
  sandbox_image = "{pause_ref}"
  # This machine withholds CAP_SYS_RESOURCE from everything it runs: no oom_score_adj below containerd's own.
  restrict_oom_score_adj = true
  {cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    {cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      {cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
        NoNewKeyring = true
  {cri}.cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "/etc/cni/net.d"
"""


def cni_config(node: Node) -> str:
    """bridge + host-local on the node's own pod range: enough for Ready (pods need no cross-node network here)."""
    ranges = [[{"subnet": f"10.244.{node.index}.0/24"}]]
    ipam = {"type": "host-local", "ranges": ranges, "routes": [{"dst": "0.0.0.0/0"}]}
    plugin = {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False, "ipam": ipam}
    return json.dumps({"cniVersion": "0.4.0", "name": "kubeha-lab", "plugins": [plugin]}, indent=2) + "\n"


# kubelet as kubeadm's packages install it (kubelet.service and its 10-kubeadm.conf drop-in).
KUBELET_UNIT = """\
[Unit]
Description=kubelet: The Kubernetes Node Agent
Wants=network-online.target containerd.service
After=network-online.target containerd.service

[Service]
ExecStart=/usr/local/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=5

[Install]
WantedBy=multi-user.target
"""
KUBECONFIG_ARGS = " ".join(
    ("--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf", "--kubeconfig=/etc/kubernetes/kubelet.conf")
)
KUBELET_DROPIN = f"""\
[Service]
Environment="KUBELET_KUBECONFIG_ARGS={KUBECONFIG_ARGS}"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/local/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
"""


def write_seed(node: Node, root: Path, pause_ref: str) -> list[str]:
    """The kubeadm node's files under the seed's rootfs/; returns the units the seed starts."""
    etc = root / "etc"
    for path, text in {
        "containerd/config.toml": containerd_config(pause_ref),
        "cni/net.d/10-kubeha-lab.conflist": cni_config(node),
        "systemd/system/kubelet.service": KUBELET_UNIT,
        "systemd/system/kubelet.service.d/10-kubeadm.conf": KUBELET_DROPIN,
        # Per node: its pods' cgroups under a root of its own (nodes that share the host's hierarchies).
        "default/kubelet": f"KUBELET_EXTRA_ARGS=--cgroup-root={cgroup_root(node)}\n" if node.kind == "nspawn" else "",
        "sysctl.d/90-kubeha-lab-kubeadm.conf": "net.ipv4.ip_forward = 1\nnet.ipv6.conf.all.forwarding = 1\n",
    }.items():
        target = etc / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    if node.role == "control-plane":
        # The cluster's CAs and service-account key, as kubeadm's "manual certificate distribution" places them.
        pki = etc / "kubernetes/pki"
        (pki / "etcd").mkdir(parents=True, exist_ok=True)
        for name in SHARED_CERTS:
            (pki / name).write_bytes((lab.SHARED_PKI / name).read_bytes())
            (pki / name).chmod(0o600 if name.endswith(".key") else 0o644)
    bin_dir = root / "usr/local/bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    link = bin_dir / "kubelet"
    link.unlink(missing_ok=True)
    link.symlink_to(f"{NODE_BIN}/kubelet")
    return ["containerd.service", "kubelet.service"]


def write_kubeadm_configs(nodes: list[Node], token: str) -> None:
    """Each node's kubeadm configuration, in the seed (cp1 inits, the others join it)."""
    v = lab.versions()
    cp1 = nodes[0]
    ca_hash = ca_cert_hash(lab.SHARED_PKI / "ca.crt")
    for node in nodes:
        if node == cp1:
            text = init_config(node, token, v["K8S_VERSION"], v["ETCD_VERSION"])
        else:
            text = join_config(node, f"{cp1.addr4}:6443", token, ca_hash)
        target = lab.seed_dir(node) / "rootfs" / SEED_CONFIG.lstrip("/") / "kubeadm.yaml"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


# kube-proxy's command in the DaemonSet: IPVS where the kernel has it, else iptables (shared kernel: leave the
# host's conntrack settings alone). The config file stays kubeadm's (and the collection's) ConfigMap.
KUBE_PROXY_WRAPPER = r"""
set -eu
conf=/var/lib/kube-proxy/config.conf
if ! { [ -e /proc/net/ip_vs ] || modprobe -q ip_vs 2>/dev/null; }; then
  sed -e 's/^mode:.*/mode: iptables/' \
      -e 's/^\(  maxPerCore:\).*/\1 0/' -e 's/^\(  min:\).*/\1 0/' \
      -e 's/^\(  tcpCloseWaitTimeout:\).*/\1 0s/' -e 's/^\(  tcpEstablishedTimeout:\).*/\1 0s/' \
      "$conf" >/tmp/config.conf
  conf=/tmp/config.conf
fi
exec /usr/local/bin/kube-proxy --config="$conf" --hostname-override="$NODE_NAME"
"""


def wrap_kube_proxy() -> None:
    patch = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": "kube-proxy", "command": ["/bin/sh", "-c", KUBE_PROXY_WRAPPER.strip() + "\n"]}
                    ]
                }
            }
        }
    }
    lab.kubectl("-n", "kube-system", "patch", "daemonset", "kube-proxy", "--type=strategic", "-p", json.dumps(patch))


def import_images(node: Node) -> None:
    archive = "masters.tar" if node.role == "control-plane" else "workers.tar"
    lab.wait_for(f"containerd on {node.name}", lambda: lab.ssh(node, "ctr version", timeout=20), 120)
    lab.ssh(node, f"ctr -n k8s.io images import /opt/kubeha-lab/images/{archive} >/dev/null",
            timeout=600)  # fmt: skip


def kubeadm(node: Node, *args: str, timeout: float = 600) -> str:
    cmd = " ".join(shlex.quote(a) for a in args)
    return lab.ssh(node, f"kubeadm {cmd} --config {SEED_CONFIG}/kubeadm.yaml", timeout=timeout).stdout


def fetch(node: Node, path: str, dest: Path) -> None:
    dest.write_text(lab.ssh(node, f"cat {shlex.quote(path)}").stdout)
    dest.chmod(0o600)


def ready_nodes() -> set[str]:
    out = json.loads(lab.kubectl("get", "nodes", "-o", "json").stdout)
    ready = set()
    for item in out["items"]:
        conditions = {c["type"]: c["status"] for c in item["status"].get("conditions", [])}
        if conditions.get("Ready") == "True":
            ready.add(item["metadata"]["name"])
    return ready


def kube_proxy_pods_ready() -> set[str]:
    out = json.loads(lab.kubectl("get", "pods", "-n", "kube-system", "-l", "k8s-app=kube-proxy", "-o", "json").stdout)
    ready = set()
    for pod in out["items"]:
        conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
        if conditions.get("Ready") == "True" and not pod["metadata"].get("deletionTimestamp"):
            ready.add(pod["spec"]["nodeName"])
    return ready


def bring_up(nodes: list[Node], token: str) -> None:
    """kubeadm init on cp1, join of the other masters one by one, then of the workers; every node Ready."""
    masters = [n for n in nodes if n.role == "control-plane"]
    workers = [n for n in nodes if n.role == "worker"]
    cp1 = masters[0]
    lab.log("kubeadm init on cp1 (the control plane as static pods)")
    kubeadm(cp1, "init", "--skip-phases=addon/coredns")
    fetch(cp1, "/etc/kubernetes/admin.conf", WORK / "admin.conf")
    fetch(cp1, "/etc/kubernetes/super-admin.conf", WORK / "super-admin.conf")
    (WORK / "ca.crt").write_bytes((lab.SHARED_PKI / "ca.crt").read_bytes())
    wrap_kube_proxy()
    for m in masters[1:]:
        lab.log(f"kubeadm join --control-plane on {m.name}")
        kubeadm(m, "join")
    for w in workers:
        lab.log(f"kubeadm join on {w.name}")
        kubeadm(w, "join")
    names = {n.name for n in nodes}
    lab.wait_for("every node Ready", lambda: ready_nodes() >= names, 600, interval=3)
    lab.wait_for("a ready kube-proxy pod on every node", lambda: kube_proxy_pods_ready() >= names, 600, interval=3)


def cluster_info_server() -> str:
    """The server kube-public/cluster-info names: where `kubeadm join` goes after its discovery."""
    import yaml  # the project's virtualenv has it (ansible-core)

    cm = json.loads(lab.kubectl("get", "-n", "kube-public", "configmap", "cluster-info", "-o", "json").stdout)
    return yaml.safe_load(cm["data"]["kubeconfig"])["clusters"][0]["cluster"]["server"]


def bootstrap_token(node: Node) -> str:
    """The lab's bootstrap token, from a node's seed configuration (the state keeps only its ID, not the secret)."""
    text = (lab.seed_dir(node) / "rootfs" / SEED_CONFIG.lstrip("/") / "kubeadm.yaml").read_text()
    found = re.search(r'token: "([a-z0-9]{6}\.[a-z0-9]{16})"', text)
    if not found:
        raise RuntimeError(f"no bootstrap token in {node.name}'s kubeadm configuration")
    return found.group(1)


def join_master(new: Node, nodes: list[Node], state: dict) -> None:
    """Day 2 (`lab.py join`): one more master by `kubeadm join --control-plane` at the cluster's controlPlaneEndpoint
    (cp1), with the lab's token and the shared CAs in its seed, as kubeadm's manual certificate distribution does.
    kubeadm adds its etcd member and its Node; returns once its apiserver answers and the node is Ready."""
    masters = [n for n in nodes if n.role == "control-plane"]
    token = bootstrap_token(masters[0])
    bindir = Path(state["bindir"])
    lab.make_seed(new, [*nodes, new], bindir, joining=True)
    config = lab.seed_dir(new) / "rootfs" / SEED_CONFIG.lstrip("/") / "kubeadm.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(join_config(new, f"{masters[0].addr4}:6443", token, ca_cert_hash(lab.SHARED_PKI / "ca.crt")))
    lab.attach(new)
    state["netns"].append(new.netns)
    lab.start_nspawn(new, Path(state["images_by_suite"][new.suite]), bindir, state)
    lab.wait_for(f"SSH on {new.name}", lambda: lab.ssh(new, "true", timeout=15), 240)
    import_images(new)
    if cluster_info_server() != f"https://{masters[0].addr4}:6443":
        # The collection pointed cluster-info at the VIP: kubeadm join follows it, so the new master needs its local
        # proxy first, as any node joining such a cluster does (README, Playbooks: prepare_node).
        from scenarios import playbook

        lab.log(f"cluster-info names the VIP: playbooks/prepare_node.yml on {new.name} first")
        lab.write_inventory([*nodes, new])
        run = playbook("prepare_node", "--limit", new.name)
        if run.returncode != 0:
            raise RuntimeError(f"prepare_node.yml on {new.name} failed: {run.stdout[-3000:]}{run.stderr[-2000:]}")
    lab.log(f"kubeadm join --control-plane on {new.name}")
    kubeadm(new, "join")
    lab.wait_for(f"kube-apiserver on {new.name}", lambda: lab.readyz(new.addr4), 240)
    lab.wait_for(f"{new.name} Ready", lambda: new.name in ready_nodes(), 300, interval=3)
    (WORK / "pristine" / f"{new.name}.kubelet.conf").write_text(lab.ssh(new, "cat /etc/kubernetes/kubelet.conf").stdout)


def reset_master(leaving: Node, first: Node) -> None:
    """Day 2 (`lab.py leave`): `kubeadm reset` on the master (it removes its own etcd member, stops kubelet and its
    static pods), then its apiserver out of the kubernetes EndpointSlices (cmd_leave deletes the Node)."""
    lab.log(f"kubeadm reset on {leaving.name}")
    kubeadm_reset(leaving)
    lab.wait_for(f"{leaving.addr4} out of the kubernetes EndpointSlices",
                 lambda: leaving.addr4 not in lab.kubernetes_endpoints(), 120)  # fmt: skip
    members = lab.etcd_members(first, "list", {})["members"]
    if any(m.get("name") == leaving.name for m in members):
        raise RuntimeError(f"kubeadm reset left {leaving.name}'s etcd member in the cluster: {members}")


def kubeadm_reset(node: Node) -> None:
    """`kubeadm reset` on the node: kubelet stopped, its pods and files gone (a master's etcd member too)."""
    lab.ssh(node, f"kubeadm reset -f --cri-socket {CRI_SOCKET} >/dev/null 2>&1", timeout=300)
