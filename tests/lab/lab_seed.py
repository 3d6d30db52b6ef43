"""Seeds: what each node has before the collection is applied (its units or kubeadm's files, the lab's
kube-proxy loader, node.env for the node's init, the SSH key), a directory nspawn binds or a disk qemu attaches."""

from __future__ import annotations

import shutil
from pathlib import Path

from lab_core import GW4, GW6, HERE, NODE_BIN, SITE_MIRROR, WORK, Node, load_state, seed_dir, sh, state_flavour
from lab_mirror import mirror_path
from lab_nodes import ssh_key
from lab_units import master_units, worker_units


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
