"""roles/local_proxy/files/build_guard_zipapp.py: the guard shipped as one file. The same code gives the same bytes
(so the role's copy changes nothing and restarts no guard), the members follow _guard_cli.py's imports, the file runs
as the guard's command line with nothing else on the path, and a missing module stops the build naming it."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
MODULE_UTILS = REPO / "plugins" / "module_utils"
BUILDER = REPO / "roles" / "local_proxy" / "files" / "build_guard_zipapp.py"
PREFIX = "ansible_collections/kubeha/apiserver/plugins/module_utils/"


@pytest.fixture(scope="module")
def builder():
    spec = importlib.util.spec_from_file_location("build_guard_zipapp", BUILDER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BUILDER), *argv], capture_output=True, text=True, check=False)


def test_the_same_code_gives_the_same_file(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    a, b = build_cli(str(MODULE_UTILS), str(first)), build_cli(str(MODULE_UTILS), str(second))
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    path_a, path_b = Path(a.stdout.strip()), Path(b.stdout.strip())
    assert path_a.name == path_b.name and path_a.read_bytes() == path_b.read_bytes()


def test_changed_code_gives_another_file(builder, tmp_path):
    # The negative control of the one above: a changed source changes the bytes and the name.
    utils = tmp_path / "module_utils"
    shutil.copytree(MODULE_UTILS, utils)
    before = builder.write(utils, tmp_path)
    (utils / "_proxy.py").write_text((utils / "_proxy.py").read_text() + "\n# changed\n")
    after = builder.write(utils, tmp_path)
    assert before != after and before.read_bytes() != after.read_bytes()


def test_the_members_are_what_the_guard_imports(builder, tmp_path):
    path = builder.write(MODULE_UTILS, tmp_path)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        modules = sorted(n.removeprefix(PREFIX) for n in names if n.startswith(PREFIX) and n != PREFIX + "__init__.py")
        assert archive.read(PREFIX + "_guard_daemon.py") == (MODULE_UTILS / "_guard_daemon.py").read_bytes()
    assert modules == [
        "_datapath.py",
        "_datapath_haproxy.py",
        "_datapath_ipvs.py",
        "_datapath_modes.py",
        "_datapath_nftables.py",
        "_endpoint.py",
        "_files.py",
        "_guard_cli.py",
        "_guard_config.py",
        "_guard_daemon.py",
        "_guard_discovery.py",
        "_guard_hooks.py",
        "_guard_metrics.py",
        "_guard_state.py",
        "_haproxy_config.py",
        "_ipvs.py",
        "_ipvs_model.py",
        "_kernel.py",
        "_kubeapi.py",
        "_kubeconfig.py",
        "_nftables.py",
        "_node_plumbing.py",
        "_probe.py",
        "_proxy.py",
    ]
    assert "__main__.py" in names and names == sorted(names)
    # Nothing of the modules' side (AnsibleModule) rides along: the guard never imports ansible.
    assert not [n for n in names if n.startswith("ansible/")]


def test_the_file_runs_as_the_guard_alone(builder, tmp_path):
    """-I: no PYTHONPATH, no user site; the zip is the first entry of sys.path, so its modules are the ones run."""
    path = builder.write(MODULE_UTILS, tmp_path)
    run = subprocess.run([sys.executable, "-I", str(path), "--help"], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert "--config" in run.stdout and "--cleanup" in run.stdout
    bad = subprocess.run([sys.executable, "-I", str(path), "--config", str(tmp_path / "none.json"), "--once"],
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert bad.returncode != 0 and "none.json" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


def test_a_missing_module_stops_the_build_naming_it(tmp_path):
    utils = tmp_path / "module_utils"
    shutil.copytree(MODULE_UTILS, utils)
    (utils / "_kubeapi.py").unlink()
    run = build_cli(str(utils), str(tmp_path))
    assert run.returncode != 0
    assert "module_utils._kubeapi is imported but" in run.stderr and "_kubeapi.py does not exist" in run.stderr
    assert not list(tmp_path.glob("*.pyz"))
