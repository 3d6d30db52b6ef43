"""Build the guard as one file: a zipapp of the module_utils _guard_cli.py imports, run on the controller.

    python build_guard_zipapp.py MODULE_UTILS_DIR [OUT_DIR]

Prints the path of the zipapp it wrote (OUT_DIR, default the system's temporary directory), named after a hash of
its content. The members are found by following _guard_cli.py's imports of the collection's module_utils (no list to
keep in step) and are written in sorted order with a fixed timestamp, so the same code always gives the same bytes:
the role's copy task changes nothing, and restarts no guard, until the code changes. Nodes run it with
`python kubeha-apiserver-guard.pyz --config ...`; its modules stay importable by their collection name.
"""

from __future__ import annotations

import ast
import hashlib
import io
import os
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "ansible_collections.kubeha.apiserver.plugins.module_utils"
ENTRY = "_guard_cli"  # the guard's command line: its main() is the zipapp's __main__
# The zip format's earliest date: a fixed timestamp keeps the bytes the same from one build to the next.
EPOCH = (1980, 1, 1, 0, 0, 0)
MAIN = f"import sys\n\nfrom {PACKAGE}.{ENTRY} import main\n\nsys.exit(main())\n"


def imported_module_utils(source: str) -> set[str]:
    """The names of the collection's module_utils that one module imports (absolute imports, as Ansible requires)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGE + "."):
            names.add(node.module.removeprefix(PACKAGE + "."))
        elif isinstance(node, ast.ImportFrom) and node.module == PACKAGE:  # from PACKAGE import _module
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name.removeprefix(PACKAGE + ".") for a in node.names if a.name.startswith(PACKAGE + "."))
    return names


def closure(module_utils: Path, entry: str = ENTRY) -> list[str]:
    """entry and every module_utils module it needs, directly or not, sorted."""
    found, todo = set(), [entry]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        path = module_utils / f"{name}.py"
        if not path.is_file():
            raise SystemExit(f"build_guard_zipapp: {PACKAGE}.{name} is imported but {path} does not exist")
        found.add(name)
        todo.extend(imported_module_utils(path.read_text(encoding="utf-8")) - found)
    return sorted(found)


def build(module_utils: Path) -> bytes:
    """The zipapp's bytes: __main__.py, the package's __init__.py files and the modules of closure()."""
    members = {"__main__.py": MAIN}
    parts = PACKAGE.split(".")
    for depth in range(1, len(parts) + 1):
        members["/".join(parts[:depth]) + "/__init__.py"] = ""
    for name in closure(module_utils):
        members["/".join(parts) + f"/{name}.py"] = (module_utils / f"{name}.py").read_text(encoding="utf-8")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for member in sorted(members):
            info = zipfile.ZipInfo(member, EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, members[member])
    return buffer.getvalue()


def write(module_utils: Path, out_dir: Path) -> Path:
    """Write the zipapp under a name of its content (atomically; an existing one of that name is kept)."""
    data = build(module_utils)
    path = out_dir / f"kubeha-apiserver-guard-{hashlib.sha256(data).hexdigest()[:16]}.pyz"
    if not path.exists():
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".kubeha-apiserver-guard-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    return path


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        raise SystemExit(__doc__)
    print(write(Path(sys.argv[1]), Path(sys.argv[2] if len(sys.argv) == 3 else tempfile.gettempdir())))
