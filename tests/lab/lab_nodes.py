"""The nodes as processes: systemd-nspawn containers and qemu guests started on their seeds, reached over SSH
through the hub namespace, stopped by PID (and, for a node that leaves, its mount, namespace and files)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from lab_core import CACHE, GW4, HUB_NS, NODE_BIN, NODE_IMAGES, WORK, Node, save_state, seed_dir, sh, spawn


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


# What ssh itself prints when a busy node's sshd did not complete the connection (with exit status 255): worth
# another try. Not a refused or timed-out connect: the node is down (a reboot drill polls for exactly that).
SSH_CONNECT_FAILURES = (
    "Connection timed out during banner exchange",
    "kex_exchange_identification",
    "Connection reset by peer",
    "Connection closed by",
)
# ...and what it prints when a session it had opened was lost: the command may have run (a reboot), never again.
SSH_SESSION_LOST = re.compile(r"Read from remote host|client_loop:|Timeout, server|Connection to \S+ closed by remote")
SSH_ATTEMPTS = 3  # in all; 1 s, then 2 s apart


def ssh_connect_failure(res: subprocess.CompletedProcess) -> str | None:
    """The line of ssh's stderr saying that it could not connect to the node, or None: the command ran (any exit
    status but 255, or 255 without such a line, or a session lost after it opened), or failed for another reason."""
    if res.returncode != 255:
        return None
    lines = [line.strip() for line in (res.stderr or "").splitlines() if line.strip()]
    if any(SSH_SESSION_LOST.match(line) for line in lines):
        return None
    return next((line for line in lines if any(words in line for words in SSH_CONNECT_FAILURES)), None)


def ssh(node: Node, cmd: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """`cmd` on `node`. When ssh could not connect (`ssh_connect_failure`), it is tried again, SSH_ATTEMPTS times in
    all, each retry said on stderr; a command that ran is never run again, whatever its exit status."""
    for attempt in range(1, SSH_ATTEMPTS + 1):
        res = subprocess.run(ssh_argv(node, cmd), capture_output=True, text=True, timeout=timeout, check=False)
        reason = ssh_connect_failure(res)
        if reason is None or attempt == SSH_ATTEMPTS:
            break
        print(f"[lab {time.strftime('%H:%M:%S')}] {node.name}: ssh could not connect ({reason});"
              f" attempt {attempt + 1} of {SSH_ATTEMPTS} in {attempt} s", file=sys.stderr, flush=True)  # fmt: skip
        time.sleep(attempt)
    if check and res.returncode != 0:
        tries = f" ({attempt} attempts)" if attempt > 1 else ""
        raise RuntimeError(f"{node.name}: {cmd!r} failed ({res.returncode}){tries}: {res.stderr.strip()}")
    return res


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
    # Under software emulation: the TSC as the clock (the kernel's SMP check marks it unstable under TCG and falls
    # back to the HPET, an emulated device read on every clock call: the idle guest cost 0.40 of a host core, 0.24
    # with the TSC), and no address-space randomisation (qemu keys its translated code by virtual address, so each
    # new process at new addresses was translated again: 343 MB of host code for four Ansible tasks, 49 MB for six
    # without it). KUBEHA_LAB_QEMU_APPEND adds kernel arguments, KUBEHA_LAB_QEMU_SMP and _CPU change the machine.
    append = (
        f"console=ttyS0 root=/dev/vda rw quiet net.ifnames=0 systemd.hostname={node.name} "
        f"ip={node.addr4}::{GW4}:255.255.255.0:{node.name}:eth0:off tsc=reliable clocksource=tsc norandmaps"
    )
    append += os.environ.get("KUBEHA_LAB_QEMU_APPEND", "")
    memory = os.environ.get("KUBEHA_LAB_QEMU_MEMORY", "1536")
    argv = ["ip", "netns", "exec", HUB_NS, "qemu-system-x86_64", "-name", node.name, "-m", memory]
    argv += [
        "-accel",
        "tcg",
        "-smp",
        os.environ.get("KUBEHA_LAB_QEMU_SMP", "2"),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-device",
        "virtio-rng-pci",
    ]
    if os.environ.get("KUBEHA_LAB_QEMU_CPU"):
        argv += ["-cpu", os.environ["KUBEHA_LAB_QEMU_CPU"]]
    argv += ["-kernel", str(images / "vmlinuz"), "-initrd", str(images / "initrd"), "-append", append]
    argv += ["-drive", f"file={disk},if=virtio,format=qcow2,cache=unsafe"]
    argv += ["-drive", f"file={base / 'seed.img'},if=virtio,format=raw,readonly=on"]
    argv += ["-netdev", f"tap,id=n0,ifname=t-{node.name},script=no,downscript=no"]
    argv += ["-device", f"virtio-net-pci,netdev=n0,mac={mac}", "-serial", f"file:{base / 'console.log'}"]
    argv += ["-monitor", f"unix:{base / 'monitor.sock'},server,nowait"]
    state["pids"][node.name] = spawn(argv, base / "qemu.log")
    save_state(state)


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


def stop_pid(pid: int, grace: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            if is_zombie(pid):
                return
            time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)


def is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True
