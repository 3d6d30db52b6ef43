# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""`make docs`: the collection's HTML documentation, built with antsibull-docs and Sphinx.

    python docs/build.py --collections-path DIR [--dest DIR]

DIR (``--collections-path``) holds ``ansible_collections/kubeha/apiserver`` (``make collection`` prepares it).
Everything under the destination (``.build/docs`` by default) is generated again on each run: the Sphinx
scaffolding from ``antsibull-docs sphinx-init``, then a page per module and per role from the plugins'
DOCUMENTATION and the roles' ``meta/argument_specs.yml``, so nothing committed can drift from them. The site
is ``<dest>/build/html/index.html``. Sphinx runs with ``-W``: any warning fails the build.

The build reaches no network. The generated pages link into the Ansible documentation through intersphinx
labels; those labels resolve from a small inventory written here (``ANSIBLE_DOCS_LABELS``), the links still
point at the Ansible documentation. A page that needs another label fails the build with an undefined-label
warning naming it: add it to ``ANSIBLE_DOCS_LABELS``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

COLLECTION = "kubeha.apiserver"
TITLE = f"{COLLECTION} documentation"
ANSIBLE_DOCS = "https://docs.ansible.com/projects/ansible/devel/"
# Intersphinx labels of the Ansible documentation that antsibull-docs' pages refer to: label -> (page, title).
ANSIBLE_DOCS_LABELS = {
    "common_return_values": ("reference_appendices/common_return_values.html#common-return-values", "Return Values"),
    "ansible_configuration_settings": (
        "reference_appendices/config.html#ansible-configuration-settings",
        "Ansible Configuration Settings",
    ),
}
CONF_OVERRIDE = """
# Added by docs/build.py: links into the Ansible documentation resolve from a local inventory (no network).
intersphinx_mapping = {{"ansible_devel": ({url!r}, ({inventory!r},))}}
html_title = {title!r}
"""


def inventory(labels: dict[str, tuple[str, str]]) -> bytes:
    """A Sphinx (version 2) object inventory of ``std:label`` entries."""
    header = "# Sphinx inventory version 2\n# Project: Ansible\n# Version: devel\n"
    header += "# The remainder of this file is compressed using zlib.\n"
    body = "".join(f"{name} std:label -1 {uri} {title}\n" for name, (uri, title) in sorted(labels.items()))
    return header.encode() + zlib.compress(body.encode())


def run(argv: list[str], env: dict[str, str], cwd: Path) -> None:
    print("+", " ".join(argv), flush=True)
    result = subprocess.run(argv, env=env, cwd=cwd, check=False)
    if result.returncode != 0:
        raise SystemExit(f"docs: {argv[0]} failed with exit code {result.returncode}")


def build(collections_path: Path, dest: Path) -> Path:
    collection_dir = collections_path / "ansible_collections" / COLLECTION.replace(".", "/")
    if not (collection_dir / "galaxy.yml").is_file():
        raise SystemExit(f"docs: {COLLECTION} not found under {collections_path} (run make collection)")
    env = dict(os.environ)
    env["ANSIBLE_COLLECTIONS_PATH"] = str(collections_path)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # Sphinx only reports the warnings of the pages it reads again: start from nothing every time.
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    dest.chmod(0o755)  # antsibull-docs wants a directory only its owner can write
    run(
        [
            "antsibull-docs",
            "sphinx-init",
            "--use-current",
            "--squash-hierarchy",
            "--fail-on-error",
            "--project",
            COLLECTION,
            "--copyright",
            "kubeha.apiserver developers",
            "--title",
            TITLE,
            "--html-short-title",
            COLLECTION,
            "--dest-dir",
            str(dest),
            COLLECTION,
        ],
        env,
        dest,
    )
    inventory_file = dest / "ansible_devel.inv"
    inventory_file.write_bytes(inventory(ANSIBLE_DOCS_LABELS))
    with (dest / "conf.py").open("a", encoding="utf-8") as conf:
        conf.write(CONF_OVERRIDE.format(url=ANSIBLE_DOCS, inventory=str(inventory_file), title=TITLE))
    # build.sh: antsibull-docs collection --fail-on-error, then sphinx-build -W --keep-going.
    run(["bash", str(dest / "build.sh")], env, dest)
    return dest / "build" / "html"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collections-path", type=Path, required=True)
    parser.add_argument("--dest", type=Path, default=Path(".build/docs"))
    args = parser.parse_args()
    html = build(args.collections_path.resolve(), args.dest.resolve())
    print(f"docs: {html / 'index.html'}")


if __name__ == "__main__":
    main()
