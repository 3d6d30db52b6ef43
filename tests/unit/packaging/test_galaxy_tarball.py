# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The Galaxy tarball as a user gets it: built from the repository's files, installed alone, documented.

A copy of the files git knows (tracked, and new ones not ignored: what `make collection` copies) gets the
caches and build outputs that the project's tools leave in a working tree planted into it, then
``ansible-galaxy collection build`` makes the tarball. None of the planted files may be in it (galaxy.yml's
``build_ignore``), COPYING must be. The tarball is installed with ``--no-deps`` into an empty collections path,
and ``ansible-doc`` run against that path only (no other collection, not even the ``ansible`` package's) must
show every module and role with the documentation of its source.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
FQCN = "kubeha.apiserver"

# What must never be in the tarball: tool caches and build outputs, wherever they are.
UNWANTED_DIRS = frozenset(
    {".ansible", ".venv", ".build", ".ci", ".cache", ".ruff_cache", ".pytest_cache", ".mypy_cache", ".tox"}
    | {"__pycache__", ".git"}
)
UNWANTED_PATHS = ("tests/output", "changelogs/.plugin-cache.yaml")
UNWANTED_SUFFIXES = (".pyc", ".pyo", ".tar.gz", ".retry")
# Planted into the copy before the build: one file in each unwanted place, at the top and deeper down.
PLANTED = (
    ".ansible/collections/ansible_collections/x/y/galaxy.yml",
    "molecule/default/.ansible/roles/x/tasks/main.yml",
    ".venv/bin/python",
    ".build/collections/ansible_collections/kubeha/apiserver/galaxy.yml",
    ".build/docs/build/html/index.html",
    ".ci/cache/x",
    ".cache/x",
    ".ruff_cache/0.17.6/x",
    "plugins/.ruff_cache/x",
    ".pytest_cache/v/cache/nodeids",
    "tests/unit/.pytest_cache/v/cache/nodeids",
    ".mypy_cache/3.11/x.json",
    ".tox/py311/x",
    "__pycache__/x.cpython-311.pyc",
    "plugins/modules/__pycache__/ipvs_service.cpython-311.pyc",
    "plugins/module_utils/_ipvs.pyc",
    "tests/output/junit/x.xml",
    "changelogs/.plugin-cache.yaml",
    "kubeha-apiserver-0.0.1.tar.gz",
    "dist/other.tar.gz",
    "playbooks/site.retry",
)


def unwanted_members(names: Iterable[str]) -> list[str]:
    """The tar member names that are a cache or a build output (see UNWANTED_*)."""
    found = []
    for name in names:
        path = name.removeprefix("./").rstrip("/")
        if (
            UNWANTED_DIRS.intersection(PurePosixPath(path).parts)
            or any(path == p or path.startswith(p + "/") for p in UNWANTED_PATHS)
            or path.endswith(UNWANTED_SUFFIXES)
        ):
            found.append(name)
    return found


def test_unwanted_members_flags_caches_and_build_outputs() -> None:
    clean = ["MANIFEST.json", "COPYING", "plugins/modules/ipvs_service.py", "tests/unit/conftest.py"]
    clean += ["changelogs/changelog.yaml", "roles/local_proxy/templates/guard.json.j2", "docs/build.py"]
    assert unwanted_members(clean) == []
    assert unwanted_members(PLANTED) == list(PLANTED)
    assert unwanted_members(["./.ansible/", "a/b/__pycache__"]) == ["./.ansible/", "a/b/__pycache__"]


def repository_files() -> list[str]:
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [name for name in listing.split("\0") if name and (REPO / name).is_file()]


def copy_with_caches(dest: Path) -> list[str]:
    """The repository's files under dest, plus every PLANTED file; returns the repository's file names."""
    files = repository_files()
    for name in files:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, dest / name)
    for name in PLANTED:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_text("planted\n")
    return files


def galaxy_build(source: Path, output: Path) -> Path:
    output.mkdir()
    run([BIN / "ansible-galaxy", "collection", "build", source, "--output-path", output])
    (tarball,) = output.glob("kubeha-apiserver-*.tar.gz")
    return tarball


def members(tarball: Path) -> list[str]:
    with tarfile.open(tarball) as tar:
        return tar.getnames()


def run(argv: list[str | Path], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def isolated_env(collections: Path, home: Path) -> dict[str, str]:
    """Ansible sees only `collections`: no user or system collections path, no collection on sys.path."""
    home.mkdir()
    (home / "ansible.cfg").write_text("[defaults]\n")
    env = dict(os.environ)
    env.update(
        ANSIBLE_COLLECTIONS_PATH=str(collections),
        ANSIBLE_COLLECTIONS_SCAN_SYS_PATH="false",
        ANSIBLE_HOME=str(home),
        ANSIBLE_CONFIG=str(home / "ansible.cfg"),
    )
    return env


def source_docs(module: Path) -> dict[str, Any]:
    """DOCUMENTATION, EXAMPLES and RETURN of a module file, read without importing it."""
    docs: dict[str, Any] = {}
    for node in ast.parse(module.read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id in ("DOCUMENTATION", "EXAMPLES", "RETURN"):
                    docs[target.id] = node.value.value
    return docs


def ansible_doc(kind: str, names: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, dict[str, Any], str]:
    """One ansible-doc run for several plugins of a kind: (exit code, its JSON by FQCN, its stderr)."""
    done = subprocess.run(
        [BIN / "ansible-doc", "-t", kind, "--json", *(f"{FQCN}.{name}" for name in names)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    return done.returncode, json.loads(done.stdout or "null"), done.stderr


def module_problems(name: str, rc: int, shown: dict[str, Any] | None, installed: Path) -> list[str]:
    """How ansible-doc's view of an installed module differs from the module's source in the repository."""
    if rc != 0:
        return [f"{name}: ansible-doc exit code {rc}"]
    entry = (shown or {}).get(f"{FQCN}.{name}")
    if not entry:
        return [f"{name}: ansible-doc found no documentation"]
    source = source_docs(REPO / "plugins" / "modules" / f"{name}.py")
    doc, want = entry["doc"], yaml.safe_load(source["DOCUMENTATION"])
    problems = []
    if not Path(doc["filename"]).is_relative_to(installed):
        problems.append(f"{name}: documented from {doc['filename']}, not from the installed tarball")
    if doc["short_description"] != want["short_description"]:
        problems.append(f"{name}: short_description {doc['short_description']!r}")
    if not set(want.get("options", {})) <= set(doc.get("options", {})):
        problems.append(f"{name}: options {sorted(doc.get('options', {}))}")
    if entry["examples"].strip() != source["EXAMPLES"].strip():
        problems.append(f"{name}: EXAMPLES differ")
    if set(entry["return"] or {}) != set(yaml.safe_load(source["RETURN"]) or {}):
        problems.append(f"{name}: RETURN keys {sorted(entry['return'] or {})}")
    return problems


def role_problems(name: str, rc: int, shown: dict[str, Any] | None, installed: Path) -> list[str]:
    """How ansible-doc's view of an installed role differs from its meta/argument_specs.yml in the repository."""
    if rc != 0:
        return [f"{name}: ansible-doc exit code {rc}"]
    entry = (shown or {}).get(f"{FQCN}.{name}")
    if not entry:
        return [f"{name}: ansible-doc found no documentation"]
    specs = yaml.safe_load((REPO / "roles" / name / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    problems = []
    if not Path(entry["path"]).is_relative_to(installed):
        problems.append(f"{name}: documented from {entry['path']}, not from the installed tarball")
    points = entry["entry_points"]
    if set(points) != set(specs):
        problems.append(f"{name}: entry points {sorted(points)}")
    for point, spec in specs.items():
        shown_point = points.get(point, {})
        if shown_point.get("short_description") != spec["short_description"]:
            problems.append(f"{name}:{point}: short_description {shown_point.get('short_description')!r}")
        if set(shown_point.get("options", {})) != set(spec.get("options", {})):
            problems.append(f"{name}:{point}: options {sorted(shown_point.get('options', {}))}")
    return problems


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    """(the source copy with planted caches, its tarball, the repository's file names)."""
    root = tmp_path_factory.mktemp("galaxy")
    source = root / "src" / "apiserver"
    files = copy_with_caches(source)
    return source, galaxy_build(source, root / "dist"), files


def test_tarball_holds_the_collection_and_no_cache_or_build_output(built: tuple[Path, Path, list[str]]) -> None:
    source, tarball, files = built
    names = members(tarball)
    assert unwanted_members(names) == []
    version = yaml.safe_load((REPO / "galaxy.yml").read_text())["version"]
    assert tarball.name == f"kubeha-apiserver-{version}.tar.gz"
    for wanted in ("COPYING", "README.md", "CHANGELOG.md", "meta/runtime.yml", "changelogs/changelog.yaml"):
        assert wanted in names
    assert (source / "COPYING").read_text().startswith(" " * 20 + "GNU GENERAL PUBLIC LICENSE\n")
    # everything else of the repository's is there: plugins, roles, playbooks, tests, docs
    # galaxy.yml itself becomes MANIFEST.json
    ignored = [name for name in files if unwanted_members([name])] + ["galaxy.yml"]
    missing = sorted(set(files) - set(ignored) - set(names))
    assert missing == []


def test_without_build_ignore_the_caches_land_in_the_tarball(
    built: tuple[Path, Path, list[str]], tmp_path: Path
) -> None:
    """Negative control: the same planted copy, galaxy.yml without build_ignore."""
    source = built[0]
    bare = tmp_path / "src" / "apiserver"
    shutil.copytree(source, bare)
    galaxy = yaml.safe_load((bare / "galaxy.yml").read_text())
    del galaxy["build_ignore"]
    (bare / "galaxy.yml").write_text(yaml.safe_dump(galaxy))
    found = unwanted_members(members(galaxy_build(bare, tmp_path / "dist")))
    assert ".ansible/collections/ansible_collections/x/y/galaxy.yml" in found
    assert "molecule/default/.ansible/roles/x/tasks/main.yml" in found
    assert ".venv/bin/python" in found
    assert "changelogs/.plugin-cache.yaml" in found


def test_installed_alone_every_module_and_role_is_documented(
    built: tuple[Path, Path, list[str]], tmp_path: Path
) -> None:
    tarball = built[1]
    collections = tmp_path / "collections"
    collections.mkdir()
    env = isolated_env(collections, tmp_path / "home")
    run(
        [BIN / "ansible-galaxy", "collection", "install", "--no-deps", "-p", collections, tarball],
        cwd=tmp_path,
        env=env,
    )
    installed = collections / "ansible_collections" / "kubeha" / "apiserver"
    assert json.loads((installed / "MANIFEST.json").read_text())["collection_info"]["license"] == ["GPL-3.0-or-later"]
    modules = sorted(p.stem for p in (REPO / "plugins" / "modules").glob("*.py") if p.stem != "__init__")
    roles = sorted(p.parent.parent.name for p in (REPO / "roles").glob("*/meta/argument_specs.yml"))
    assert modules and roles
    # with a negative control: a name that is not in the collection (ansible-doc still exits 0, without it)
    with ThreadPoolExecutor(max_workers=2) as pool:
        modules_run = pool.submit(ansible_doc, "module", [*modules, "no_such_module"], tmp_path, env)
        roles_run = pool.submit(ansible_doc, "role", roles, tmp_path, env)
        (module_rc, module_docs, module_err), (role_rc, role_docs, role_err) = modules_run.result(), roles_run.result()
    problems = [p for name in modules for p in module_problems(name, module_rc, module_docs, installed)]
    problems += [p for name in roles for p in role_problems(name, role_rc, role_docs, installed)]
    assert problems == [], f"{module_err}\n{role_err}"
    assert module_problems("no_such_module", module_rc, module_docs, installed) == [
        "no_such_module: ansible-doc found no documentation"
    ]
