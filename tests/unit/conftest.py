# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Make ``ansible_collections.kubeha.apiserver`` importable for a plain ``pytest tests/unit``.

Under ``ansible-test units`` (or any checkout at ``.../ansible_collections/kubeha/apiserver``) the
collection is already importable, or becomes so by putting the directory above
``ansible_collections`` on ``sys.path``. Otherwise a git-ignored ``.build/pytest-collections/
ansible_collections/kubeha/apiserver`` symlink to the repository root is created and used.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

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


_make_collection_importable()
