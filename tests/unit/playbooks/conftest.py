"""Run the real ansible-playbook / ansible-inventory of .venv on this checkout as kubeha.apiserver, no node needed.

The collection is found where tests/unit/conftest.py made it importable (the checkout itself when it sits at
ansible_collections/kubeha/apiserver, else a symlink under .build/pytest-collections). Commands run in parallel
(`run_many`): each is an ansible process of about two seconds, mostly start-up.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent


def _collections_root() -> Path:
    import ansible_collections.kubeha.apiserver as collection  # made importable by tests/unit/conftest.py

    path = Path(next(iter(collection.__path__)))
    if path.resolve() != REPO:
        pytest.fail(f"kubeha.apiserver resolves to {path}, not this checkout {REPO}")
    return path.parents[2]


@pytest.fixture(scope="session")
def ansible_env(tmp_path_factory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("ansible-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        ANSIBLE_COLLECTIONS_PATH=str(_collections_root()),
        ANSIBLE_HOME=str(home),
        ANSIBLE_LOCAL_TEMP=str(home / "tmp"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_RETRY_FILES_ENABLED="0",
        ANSIBLE_HOST_KEY_CHECKING="0",
        # If anything did try a node, fail at once rather than wait for SSH (the tests' hosts do not exist).
        ANSIBLE_TIMEOUT="2",
    )
    return env


Runner = Callable[[Mapping[str, Sequence[str]]], dict[str, subprocess.CompletedProcess]]


@pytest.fixture(scope="session")
def run_many(ansible_env, tmp_path_factory) -> Runner:
    """Run {key: argv} concurrently (argv[0] a tool of .venv/bin); {key: CompletedProcess} with text output."""
    cwd = tmp_path_factory.mktemp("ansible-cwd")  # no ansible.cfg of the caller's directory applies

    def run_one(argv: Sequence[str]) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / argv[0]), *argv[1:]],
            env=ansible_env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    def run(commands: Mapping[str, Sequence[str]]) -> dict[str, subprocess.CompletedProcess]:
        with ThreadPoolExecutor(max_workers=max(1, min(len(commands), os.cpu_count() or 2, 8))) as pool:
            futures = {key: pool.submit(run_one, argv) for key, argv in commands.items()}
            return {key: f.result() for key, f in futures.items()}

    return run
