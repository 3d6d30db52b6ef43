"""The container images a kubeadm cluster runs, built by the lab from its own binaries: nothing is ever pulled.

    container_images.py BINDIR   builds (or finds in the cache) the archives and prints their directory

kubeadm's static pods and kube-proxy's DaemonSet name images on registry.k8s.io; the lab has no registry, so it
builds images under those exact names and each node imports them into containerd (`ctr -n k8s.io images import`)
before kubeadm runs. Each image is the binary the lab built (static, as the official images' are) on a small
shared base; kube-proxy's carries the userland its modes call (iptables, ip6tables, ipset, nft, conntrack) from
Debian; pause is compiled from the upstream source that the Kubernetes module ships. The archives are in the
docker-archive layout that `ctr images import` reads: one for masters (every image), one for workers.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("KUBEHA_CACHE", "/var/cache/kubeha"))
REGISTRY = "registry.k8s.io"
# Bump when the images change in a way the inputs of the cache key do not show.
IMAGES_REV = "1"
# What kube-proxy's modes run (iptables and ipset for iptables and IPVS, nft for nftables, conntrack to flush).
KUBE_PROXY_USERLAND = ("iptables", "ipset", "nftables", "conntrack", "kmod")
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Layer:
    """One uncompressed layer: its tar bytes and their digest (the diff ID, as the image config lists it)."""

    data: bytes

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class Image:
    ref: str
    layers: tuple[Layer, ...]
    entrypoint: tuple[str, ...] = ()


def _tar(entries: list[tuple[str, bytes | None, int]]) -> bytes:
    """A reproducible tar: (path, content or None for a directory, mode), owned by root, mtime 0."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, content, mode in entries:
            info = tarfile.TarInfo(path)
            info.mode, info.mtime, info.uid, info.gid = mode, 0, 0, 0
            if content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def base_layer() -> Layer:
    """What a distroless base gives a static binary: root and nobody, /tmp, /var/run."""
    passwd = b"root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
    group = b"root:x:0:\nnogroup:x:65534:\n"
    return Layer(
        _tar(
            [
                ("etc", None, 0o755),
                ("etc/passwd", passwd, 0o644),
                ("etc/group", group, 0o644),
                ("etc/nsswitch.conf", b"hosts: files dns\n", 0o644),
                ("root", None, 0o700),
                ("tmp", None, 0o1777),
                ("var", None, 0o755),
                ("var/run", None, 0o755),
                ("usr", None, 0o755),
                ("usr/local", None, 0o755),
                ("usr/local/bin", None, 0o755),
            ]
        )
    )


def binary_layer(path: Path, name: str | None = None) -> Layer:
    entries = [("usr", None, 0o755), ("usr/local", None, 0o755), ("usr/local/bin", None, 0o755)]
    return Layer(_tar([*entries, (f"usr/local/bin/{name or path.name}", path.read_bytes(), 0o755)]))


def rootfs_layer(rootfs: Path) -> Layer:
    """A whole directory tree as one layer (kube-proxy's Debian userland), reproducible."""
    buf = io.BytesIO()

    def reset(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
        return info

    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for child in sorted(rootfs.iterdir()):
            tar.add(child, arcname=child.name, filter=reset)
    return Layer(buf.getvalue())


def image_config(image: Image) -> bytes:
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {"Env": [PATH_ENV], "Entrypoint": list(image.entrypoint) or None, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in image.layers]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "kubeha lab"}] * len(image.layers),
    }
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def write_archive(images: list[Image], out: Path) -> None:
    """The docker-archive layout (manifest.json, one config and one tar per layer), each layer stored once."""
    tmp = out.with_suffix(".tmp")
    manifest = []
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        written: set[str] = set()

        def add(name: str, data: bytes) -> None:
            if name in written:
                return
            written.add(name)
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))

        for image in images:
            config = image_config(image)
            config_name = hashlib.sha256(config).hexdigest() + ".json"
            add(config_name, config)
            layer_names = []
            for layer in image.layers:
                name = layer.digest.removeprefix("sha256:") + "/layer.tar"
                add(name, layer.data)
                layer_names.append(name)
            manifest.append({"Config": config_name, "RepoTags": [image.ref], "Layers": layer_names})
        add("manifest.json", json.dumps(manifest, indent=1).encode())
    tmp.replace(out)


def run(*argv: str, cwd: Path | None = None) -> str:
    res = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, check=False)
    if res.returncode != 0:
        raise SystemExit(f"[container-images] {' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()[-2000:]}")
    return res.stdout


def kubeadm_images(bindir: Path, k8s_version: str) -> dict[str, str]:
    """kubeadm's own list of image names for this release, by component (kube-apiserver, etcd, pause, ...)."""
    listed = run(str(bindir / "kubeadm"), "config", "images", "list", "--kubernetes-version", k8s_version).split()
    return {ref.rsplit("/", 1)[1].split(":")[0]: ref for ref in listed}


def etcd_image_tag(etcd_version: str) -> str:
    """The tag kubeadm's ClusterConfiguration names for the lab's etcd (etcd.local.imageTag), as upstream tags it."""
    return etcd_version.removeprefix("v") + "-0"


def pause_binary(work: Path, pause_ref: str, k8s_version: str) -> Path:
    """pause, compiled static from build/pause/linux/pause.c in the k8s.io/kubernetes module, as upstream builds it."""
    info = json.loads(run("go", "mod", "download", "-json", f"k8s.io/kubernetes@{k8s_version}"))
    source = Path(info["Dir"]) / "build" / "pause" / "linux" / "pause.c"
    out = work / "pause"
    tag = pause_ref.rsplit(":", 1)[1]
    run("gcc", "-Os", "-Wall", "-Werror", "-static", f'-DVERSION="{tag}"', "-o", str(out), str(source))
    run("strip", str(out))
    return out


def kube_proxy_userland(work: Path, suite: str) -> Path:
    """A minimal Debian rootfs with kube-proxy's userland (the official image is distroless plus the same tools)."""
    root = work / "kube-proxy-rootfs"
    mirror = _debian_mirror()
    run("debootstrap", "--variant=minbase", f"--include={','.join(KUBE_PROXY_USERLAND)}", suite, str(root), mirror)
    for junk in ("var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/locale"):
        shutil.rmtree(root / junk, ignore_errors=True)
    # The image's iptables follows the node's (nf_tables) backend, as the official image's wrapper decides at start.
    return root


def _debian_mirror() -> str:
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1]
    for line in Path("/etc/apt/sources.list").read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["deb"] and "security" not in line:
            return parts[1]
    raise SystemExit("[container-images] cannot find the Debian mirror in this machine's apt sources")


def cache_key(bindir: Path, versions: dict[str, str]) -> str:
    h = hashlib.sha256()
    h.update(IMAGES_REV.encode())
    h.update(Path(__file__).read_bytes())
    for key in ("K8S_VERSION", "ETCD_VERSION", "DEBIAN_SUITE"):
        h.update(versions[key].encode())
    h.update(str(bindir.resolve()).encode())
    return h.hexdigest()[:12]


def build(bindir: Path, versions: dict[str, str]) -> Path:
    out = CACHE / "container-images" / f"{versions['K8S_VERSION']}-{cache_key(bindir, versions)}"
    if (out / ".complete").exists():
        return out
    work = out.with_suffix(".tmp")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    refs = kubeadm_images(bindir, versions["K8S_VERSION"])
    etcd_ref = f"{REGISTRY}/etcd:{etcd_image_tag(versions['ETCD_VERSION'])}"
    base = base_layer()
    images = {
        name: Image(refs[name], (base, binary_layer(bindir / name)))
        for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
    }
    images["etcd"] = Image(etcd_ref, (base, binary_layer(bindir / "etcd")))
    # The sandbox runs /pause, where the upstream image has it.
    pause = pause_binary(work, refs["pause"], versions["K8S_VERSION"]).read_bytes()
    images["pause"] = Image(refs["pause"], (base, Layer(_tar([("pause", pause, 0o755)]))), ("/pause",))
    userland = rootfs_layer(kube_proxy_userland(work, versions["DEBIAN_SUITE"]))
    images["kube-proxy"] = Image(refs["kube-proxy"], (userland, binary_layer(bindir / "kube-proxy")))
    write_archive(list(images.values()), work / "masters.tar")
    write_archive([images["kube-proxy"], images["pause"]], work / "workers.tar")
    (work / "images.json").write_text(json.dumps({name: img.ref for name, img in images.items()}, indent=1) + "\n")
    shutil.rmtree(work / "kube-proxy-rootfs")
    (work / ".complete").touch()
    shutil.rmtree(out, ignore_errors=True)
    work.replace(out)
    return out


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(HERE))
    import lab  # the lab's pinned versions (versions.env, KUBEHA_K8S_VERSION)

    bindir = Path(argv[0])
    print(build(bindir, lab.versions()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
