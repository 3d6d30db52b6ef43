# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""module_utils/_kernel: the one kernel-capability check, and the preflight's IPVS verdict built on it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from ansible_collections.kubeha.apiserver.plugins.module_utils._kernel import kernel_module
from ansible_collections.kubeha.apiserver.plugins.module_utils._preflight import ipvs_capability

RELEASE = os.uname().release
DEP = "kernel/net/netfilter/ipvs/ip_vs_rr.ko.xz: kernel/net/netfilter/ipvs/ip_vs.ko.xz\n"


@pytest.fixture
def roots(tmp_path: Path) -> dict[str, str]:
    for sub in ("proc/net", "sys/module", f"modules/{RELEASE}"):
        (tmp_path / sub).mkdir(parents=True)
    return {
        "proc_root": str(tmp_path / "proc"),
        "sys_root": str(tmp_path / "sys"),
        "modules_root": str(tmp_path / "modules"),
    }


def listing(roots: dict[str, str], name: str, text: str) -> None:
    Path(roots["modules_root"], RELEASE, name).write_text(text)


def test_nothing_anywhere_is_absent(roots):
    assert kernel_module("ip_vs", **roots) == ("absent", f"no ip_vs module for kernel {RELEASE}")


def test_ip_vs_is_loaded_when_its_proc_file_is_there(roots):
    Path(roots["proc_root"], "net", "ip_vs").write_text("")
    assert kernel_module("ip_vs", **roots)[0] == "loaded"


def test_a_module_in_sys_is_loaded(roots):
    Path(roots["sys_root"], "module", "ip_vs_wrr").mkdir()
    assert kernel_module("ip_vs_wrr", **roots)[0] == "loaded"


def test_built_in_and_loadable_come_from_their_listings(roots):
    listing(roots, "modules.builtin", "kernel/net/netfilter/ipvs/ip_vs_mh.ko\n")
    listing(roots, "modules.dep", "kernel/net/netfilter/ipvs/ip_vs_sh.ko.zst: kernel/net/netfilter/ipvs/ip_vs.ko.zst\n")
    assert kernel_module("ip_vs_mh", **roots)[0] == "built in"
    assert kernel_module("ip_vs_sh", **roots)[0] == "loadable"


def test_a_module_named_only_as_a_dependency_or_a_prefix_is_not_there(roots):
    # Negative controls: ip_vs_rr.ko's line names ip_vs.ko after the colon, and "ip_vs" is a prefix of "ip_vs_rr".
    listing(roots, "modules.dep", DEP.replace(": kernel/net/netfilter/ipvs/ip_vs.ko.xz", ":"))
    assert kernel_module("ip_vs", **roots)[0] == "absent"
    assert kernel_module("ip_vs_r", **roots)[0] == "absent"
    listing(
        roots, "modules.dep", DEP + "kernel/net/netfilter/ipvs/ip_vs.ko.xz: kernel/net/netfilter/nf_conntrack.ko.xz\n"
    )
    assert kernel_module("ip_vs", **roots)[0] == "loadable"


def test_the_preflight_verdict_says_why(roots):
    args = {"proc": roots["proc_root"], "lib_modules": roots["modules_root"], "sys_root": roots["sys_root"]}
    available, reason = ipvs_capability(**args)
    assert not available and reason.startswith("no /proc/net/ip_vs and no ip_vs module for kernel")
    listing(roots, "modules.dep", "kernel/net/netfilter/ipvs/ip_vs.ko.xz:\n")
    assert ipvs_capability(**args) == (True, f"ip_vs loadable ({roots['modules_root']}/{RELEASE}/modules.dep)")
    Path(roots["proc_root"], "net", "ip_vs").write_text("")
    assert ipvs_capability(**args) == (True, "loaded")
