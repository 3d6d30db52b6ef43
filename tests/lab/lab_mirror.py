"""What the nodes are built from and install from: the binaries and node images (build_binaries.sh,
build_images.sh), the Python wheelhouse, and the site mirror that serves the Debian repositories and the wheels on
the lab's bridge."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from lab_core import CACHE, GW4, HERE, HUB_NS, MIRROR_PORT, WORK, Node, log, save_state, sh, spawn, versions

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
