"""The suite's last test: `lab.py down` leaves no namespace, process, mount or file behind, twice over."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lab as labmod


def lab_processes(state: dict) -> list[int]:
    return [pid for pid in state.get("pids", {}).values() if Path(f"/proc/{pid}").exists()]


def test_lab_down_leaves_nothing(lab):
    assert lab_processes(lab), "the lab should be running before this test"
    for attempt in (1, 2):  # a second run must be harmless
        print(f"lab down, run {attempt}")
        subprocess.run([sys.executable, str(labmod.HERE / "lab.py"), "down"], check=True, timeout=180)
    assert labmod.lab_netns_names() == []
    assert lab_processes(lab) == []
    mounts = Path("/proc/self/mounts").read_text()
    assert str(labmod.WORK) not in mounts
    assert not labmod.WORK.exists()
    assert not labmod.STATE.exists()
    cmdlines = [p.read_bytes() for p in Path("/proc").glob("[0-9]*/cmdline") if p.exists()]
    assert not [c for c in cmdlines if b"qemu-system" in c and str(labmod.WORK).encode() in c]
    assert not [c for c in cmdlines if b"systemd-nspawn" in c and str(labmod.WORK).encode() in c]
    if lab.get("flavour") == "kubeadm":
        import kubeadm_flavour

        # The host's kernel settings are as they were before the lab, and no node's cgroup is left behind.
        for key, value in lab.get("host_sysctls", {}).items():
            assert (Path("/proc/sys") / key).read_text().strip() == value, key
        left = [
            Path("/sys/fs/cgroup") / controller / parent.lstrip("/") / "kubeha-lab"
            for controller, parent in kubeadm_flavour.lab_cgroups().items()
        ]
        assert [str(p) for p in left if p.exists()] == []
