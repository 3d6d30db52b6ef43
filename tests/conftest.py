"""Fixtures shared by the suites that need the lab: it is brought up (or a healthy one reused) once.

Unit tests never ask for them, so `pytest tests/unit` needs no lab.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "lab"))

import lab as labmod


@pytest.fixture(scope="session")
def lab():
    if os.geteuid() != 0:
        pytest.fail("the lab suite needs root (network namespaces, mounts, nspawn, qemu)")
    # A lab of the other flavour (KUBEHA_LAB_FLAVOUR) is replaced: `lab.py up` takes it down first.
    running = labmod.load_state()
    if not running or labmod.state_flavour() != labmod.flavour() or labmod.cmd_status() != 0:
        if os.environ.get("KUBEHA_LAB_REUSE_ONLY"):
            # A second session sharing the lab must never bring up (or replace) the one that runs.
            pytest.fail("KUBEHA_LAB_REUSE_ONLY is set and no healthy lab is running")
        subprocess.run([sys.executable, str(labmod.HERE / "lab.py"), "up"], check=True)
    # The suite's last test takes the lab down and checks that nothing is left (test_zz_down.py).
    return labmod.load_state()


@pytest.fixture(scope="session")
def nodes(lab) -> dict[str, labmod.Node]:
    return {raw["name"]: labmod.Node(**raw) for raw in lab["nodes"]}
