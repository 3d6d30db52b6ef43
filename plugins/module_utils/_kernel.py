# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to the kubeha.apiserver collection: not a public API, may change without notice.
"""Kernel capability: whether a kernel module (IPVS and its schedulers) is loaded, built in or loadable.

The collection's one answer to "can this node run IPVS": the preflight, the ipvs_service module and the guard
ask here. Reads /proc, /sys and /lib/modules only; loading is the caller's (``_ipvs.load_kernel_modules``).
"""

from __future__ import annotations

import os


def ipvs_loaded(proc_root: str = "/proc") -> bool:
    """``/proc/net/ip_vs`` exists once the ip_vs module is loaded (per network namespace)."""
    return os.path.exists(os.path.join(proc_root, "net", "ip_vs"))


def _listed(name: str, path: str) -> bool:
    """Whether modules.dep or modules.builtin at `path` has a line for module `name` (``.../ip_vs.ko[.xz]:``)."""
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                module = line.split(":", 1)[0].strip().rsplit("/", 1)[-1]
                if module.split(".ko", 1)[0] == name and ".ko" in module:
                    return True
    except OSError:
        return False
    return False


def kernel_module(
    name: str, proc_root: str = "/proc", sys_root: str = "/sys", modules_root: str = "/lib/modules"
) -> tuple[str, str]:
    """Where kernel module `name` stands here: ``loaded``, ``built in``, ``loadable`` or ``absent``, with the
    evidence (a path, or for ``absent`` what was missing)."""
    if name == "ip_vs" and ipvs_loaded(proc_root):
        return "loaded", os.path.join(proc_root, "net", "ip_vs")
    if os.path.isdir(os.path.join(sys_root, "module", name)):
        return "loaded", os.path.join(sys_root, "module", name)
    release = os.path.join(modules_root, os.uname().release)
    for state, listing in (("built in", "modules.builtin"), ("loadable", "modules.dep")):
        if _listed(name, os.path.join(release, listing)):
            return state, os.path.join(release, listing)
    return "absent", f"no {name} module for kernel {os.uname().release}"
