"""What every part of the lab shares, defined once: its paths, addresses and names, the flavour and the pinned
versions, the Node, running a command, and the state file and lock that record what the lab started.

The other lab_*.py files import these from here; lab.py re-exports them for the suites (`labmod.WORK`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CACHE = Path(os.environ.get("KUBEHA_CACHE", "/var/cache/kubeha"))
WORK = Path(os.environ.get("KUBEHA_LAB_WORK", "/var/lib/kubeha-lab"))
PRISTINE_KUBE_PROXY = WORK / "kube-proxy.configmap.json"
PRISTINE_CLUSTER_INFO = WORK / "cluster-info.configmap.json"
SHARED_PKI = WORK / "pki" / "shared"  # the cluster's CAs and service-account key, as every master shares them
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


def seed_dir(node: Node) -> Path:
    return WORK / "nodes" / node.name / "seed"
