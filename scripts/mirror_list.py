"""Write docs/offline-mirror.md: what a site mirror must hold for kubeha.apiserver.

The Debian packages and Python wheels per kind of node, read from the roles' defaults and tasks (never retyped),
and the collections the controller needs (galaxy.yml).

  python scripts/mirror_list.py            print it
  python scripts/mirror_list.py --write    write docs/offline-mirror.md
  python scripts/mirror_list.py --check    exit 1 when docs/offline-mirror.md differs from what the roles say
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOC = Path("docs") / "offline-mirror.md"


class MirrorListError(Exception):
    """A file the list is read from lacks what it should hold."""


def _load(root: Path, rel: str) -> object:
    try:
        return yaml.safe_load((root / rel).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise MirrorListError(f"{rel}: {exc}") from exc


def _strings(value: object, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or not value:
        raise MirrorListError(f"{where}: expected a non-empty list of strings, found {value!r}")
    return value


def _default(root: Path, role: str, name: str) -> list[str]:
    rel = f"roles/{role}/defaults/main.yml"
    defaults = _load(root, rel)
    if not isinstance(defaults, dict) or name not in defaults:
        raise MirrorListError(f"{rel}: no variable {name}")
    return _strings(defaults[name], f"{rel}: {name}")


def _tasks(node: object) -> list[dict]:
    """The tasks of a task file, those inside blocks included."""
    found = []
    for task in node if isinstance(node, list) else []:
        if isinstance(task, dict):
            found.append(task)
            for key in ("block", "rescue", "always"):
                found.extend(_tasks(task.get(key)))
    return found


def _venv_packages(root: Path) -> list[str]:
    """The apt packages tasks/venv.yml installs on every node (its include of packages.yml)."""
    rel = "roles/local_proxy/tasks/venv.yml"
    tasks = _load(root, rel)
    for task in _tasks(tasks):
        if str(task.get("ansible.builtin.include_tasks", "")) == "packages.yml":
            return _strings(
                (task.get("vars") or {}).get("local_proxy_apt_packages"), f"{rel}: local_proxy_apt_packages"
            )
    raise MirrorListError(f"{rel}: no include of packages.yml with local_proxy_apt_packages")


def _controller_collections(root: Path) -> dict[str, str]:
    galaxy = _load(root, "galaxy.yml")
    deps = galaxy.get("dependencies") if isinstance(galaxy, dict) else None
    if not isinstance(deps, dict):
        raise MirrorListError("galaxy.yml: no dependencies")
    return {str(k): str(v) for k, v in deps.items()}


def _unique(*lists: list[str]) -> list[str]:
    seen: list[str] = []
    for item in (i for lst in lists for i in lst):
        if item not in seen:
            seen.append(item)
    return seen


def render(root: Path = ROOT) -> str:
    """The document, from the roles under `root`."""
    venv = _venv_packages(root)
    ipvs = _unique(_default(root, "local_proxy", "local_proxy_packages_ipvs"), venv)
    nftables = _unique(_default(root, "local_proxy", "local_proxy_packages_nftables"), venv)
    haproxy = _unique(_default(root, "local_proxy", "local_proxy_packages_haproxy"), venv)
    wheels = _default(root, "local_proxy", "local_proxy_wheels")
    master_wheels = _default(root, "apiserver_cert_sans", "apiserver_cert_sans_wheels")
    collections = _controller_collections(root)

    def code(items: list[str]) -> str:
        return ", ".join(f"`{i}`" for i in items)

    every = _unique(wheels, master_wheels)
    required = [f"{name} {version}" for name, version in collections.items()]
    lines = [
        "# What a site mirror must hold for kubeha.apiserver",
        "",
        "<!-- Written by scripts/mirror_list.py from the roles' defaults and tasks; do not edit: change the roles and",
        "     run `python scripts/mirror_list.py --write` (a unit test fails while this file is out of date). -->",
        "",
        "Nodes without internet access install everything from the site: Debian packages from their apt sources (a",
        "site mirror), Python wheels into the collection's own virtualenv (`/opt/kubeha-apiserver/venv`, never the",
        "system Python) from a site wheelhouse or index. Point the nodes' apt sources at the mirror, and set",
        "`local_proxy_pip_find_links` (with `local_proxy_pip_no_index: true`) or `local_proxy_pip_index_url` (see",
        "`examples/inventory`), or leave them unset to use each node's own pip configuration (`/etc/pip.conf`).",
        "The values below are the roles' defaults; an inventory that overrides a list needs what it names instead.",
        "",
        "## Debian packages (apt), and their dependencies",
        "",
        "| node | packages | from |",
        "| --- | --- | --- |",
        f"| IPVS nodes (`local_proxy_mode` `ipvs`, or `auto` where the kernel has IPVS) | {code(ipvs)} "
        "| `local_proxy_packages_ipvs`, and the virtualenv's in `roles/local_proxy/tasks/venv.yml` |",
        f"| nftables nodes (`local_proxy_mode` `nftables`, or `auto` where kube-proxy runs in nftables mode) "
        f"| {code(nftables)} | `local_proxy_packages_nftables`, and the virtualenv's |",
        f"| haproxy nodes (`local_proxy_mode` `haproxy`, or `auto` where the kernel has no IPVS) | {code(haproxy)} "
        "| `local_proxy_packages_haproxy`, and the virtualenv's |",
        "| masters | as their mode says (each master is an IPVS, nftables or haproxy node too) | |",
        "",
        "`python3-venv` brings pip into the virtualenv (Debian's `ensurepip`, from its dependencies): no pip wheel",
        "is needed.",
        "",
        "## Python wheels (pip), and their dependencies",
        "",
        "| node | wheels | from |",
        "| --- | --- | --- |",
        f"| every node | {code(wheels)} | `local_proxy_wheels` |",
        f"| masters, also | {code(master_wheels)} | `apiserver_cert_sans_wheels` (for community.crypto's modules) |",
        "",
        "A wheelhouse for the nodes' Python version and architecture, with the dependencies pip resolves (run it",
        "where the package index is reachable, once per Python version of the nodes, e.g. 3.11 for Debian 12 and",
        "3.13 for Debian 13):",
        "",
        "```sh",
        "pip download --only-binary=:all: --python-version 3.11 --platform manylinux2014_x86_64 --platform any \\",
        f"  -d wheelhouse {' '.join(every)}",
        "```",
        "",
        "## The controller",
        "",
        f"Ansible collections this one depends on (`galaxy.yml`): {code(required)}.",
        "On a connected machine, `ansible-galaxy collection download " + " ".join(collections) + "` writes",
        "them and a `requirements.yml` into `collections/`; copy that directory to the controller and run",
        "`ansible-galaxy collection install -r requirements.yml` inside it. The controller's Python needs the",
        "`cryptography` library (ansible-core requires it).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help=f"write {DOC}")
    mode.add_argument("--check", action="store_true", help=f"exit 1 when {DOC} is out of date")
    args = parser.parse_args(argv)
    try:
        text = render(ROOT)
    except MirrorListError as exc:
        print(f"mirror_list: {exc}", file=sys.stderr)
        return 2
    target = ROOT / DOC
    if args.write:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        return 0
    if args.check:
        current = target.read_text() if target.exists() else ""
        if current != text:
            print(f"{DOC} is out of date: run python scripts/mirror_list.py --write", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
