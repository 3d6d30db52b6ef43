# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Make ``ansible_collections.kubeha.apiserver`` importable for a plain ``pytest tests/unit``.

Under ``ansible-test units`` (or any checkout at ``.../ansible_collections/kubeha/apiserver``) the
collection is already importable, or becomes so by putting the directory above
``ansible_collections`` on ``sys.path``. Otherwise a git-ignored ``.build/pytest-collections/
ansible_collections/kubeha/apiserver`` symlink to the repository root is created and used.

On ansible-core older than 2.19 (``make test-compat``), which has no ``ansible.module_utils.testing``, its
``patch_module_args`` is provided here, feeding the arguments the way those releases read them.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

COLLECTION = "ansible_collections.kubeha.apiserver"
REPO_ROOT = Path(__file__).resolve().parents[2]


def _importable() -> bool:
    try:
        return importlib.util.find_spec(COLLECTION) is not None
    except ModuleNotFoundError:
        return False


def _make_collection_importable() -> None:
    if _importable():
        return
    if REPO_ROOT.parent.name == "kubeha" and REPO_ROOT.parents[1].name == "ansible_collections":
        search_root = REPO_ROOT.parents[2]
    else:
        search_root = REPO_ROOT / ".build" / "pytest-collections"
        namespace = search_root / "ansible_collections" / "kubeha"
        namespace.mkdir(parents=True, exist_ok=True)
        link = namespace / "apiserver"
        if link.is_symlink() and link.resolve() != REPO_ROOT:
            link.unlink()
        if not link.is_symlink():
            link.symlink_to(REPO_ROOT, target_is_directory=True)
    sys.path.insert(0, str(search_root))
    # a namespace package "ansible_collections" imported before may cache its old search path
    for name in [n for n in sys.modules if n == "ansible_collections" or n.startswith("ansible_collections.")]:
        del sys.modules[name]
    importlib.invalidate_caches()


def _provide_patch_module_args() -> None:
    try:
        importlib.import_module("ansible.module_utils.testing")
        return
    except ModuleNotFoundError as exc:
        if exc.name != "ansible.module_utils.testing":
            raise
    from ansible.module_utils import basic

    @contextlib.contextmanager
    def patch_module_args(args: dict[str, Any] | None = None) -> Iterator[None]:
        """Expose the given module args to ``AnsibleModule`` instances created within this context."""
        if not isinstance(args, dict | None):
            raise TypeError("The `args` arg must be a dict or None.")
        payload = json.dumps({"ANSIBLE_MODULE_ARGS": args or {}}).encode()
        with mock.patch.object(basic, "_ANSIBLE_ARGS", payload):
            yield

    testing = types.ModuleType("ansible.module_utils.testing", "patch_module_args for ansible-core < 2.19")
    testing.patch_module_args = patch_module_args  # type: ignore[attr-defined]
    sys.modules[testing.__name__] = testing


_make_collection_importable()
_provide_patch_module_args()


# tests/unit/bench imports the bench's own code (tests/bench/bench.py and plot.py; tests/conftest.py already puts
# tests/lab, which bench.py imports, on sys.path). Importing them starts nothing: the bench runs from main() only.
# Here rather than in a tests/unit/bench/conftest.py: a second conftest module outside a package would replace the
# one the lab suites import their helpers from (`from conftest import ...` in tests/integration).
_BENCH = REPO_ROOT / "tests" / "bench"
if str(_BENCH) not in sys.path:
    sys.path.insert(0, str(_BENCH))


# Stand-in apiservers for the /readyz probes (tests/unit/tls_rig.py): the PKI once per test module, the servers per
# test. Shared here so that the probe tests of module_utils and of the apiserver_readyz module use the same ones.
@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import tls_rig

    return tls_rig.make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def https_server(pki: Any) -> Iterator[Any]:
    import tls_rig

    servers = tls_rig.HTTPSServers(pki)
    yield servers
    servers.close()
