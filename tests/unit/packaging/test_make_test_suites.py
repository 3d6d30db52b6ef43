# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""No lab suite dropped silently: every test file under tests/lab and tests/integration runs in `make test` on one
lab flavour (BINARY_SUITE or KUBEADM_SUITE) or is named in EXTENDED (`make test-extended`, README, Molecule).

The Makefile's variables are read as make reads them (`make -pn`, its database), not parsed by hand.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
LAB_DOWN = "tests/lab/test_zz_down.py"


def make_variables(makefile: Path) -> dict[str, list[str]]:
    """The Makefile's variables as make expands them (nothing is run: -n, and a target that does nothing)."""
    out = subprocess.run(
        ["make", "-f", str(makefile), "-pn", "--no-builtin-rules", "-C", str(makefile.parent), "--", "-no-such-goal-"],
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    found = {}
    for line in out.splitlines():
        name, sep, value = line.partition(" := ")
        if sep and name in ("BINARY_SUITE", "KUBEADM_SUITE", "EXTENDED"):
            found[name] = value.split()
    return found


def lab_test_files() -> set[str]:
    return {str(p.relative_to(REPO)) for d in ("tests/lab", "tests/integration") for p in (REPO / d).glob("test_*.py")}


def unassigned(variables: dict[str, list[str]]) -> set[str]:
    return lab_test_files() - {f for files in variables.values() for f in files}


def test_every_lab_suite_runs_on_one_flavour_or_in_test_extended():
    variables = make_variables(REPO / "Makefile")
    assert set(variables) == {"BINARY_SUITE", "KUBEADM_SUITE", "EXTENDED"}, variables
    assert unassigned(variables) == set()
    binary, kubeadm = set(variables["BINARY_SUITE"]), set(variables["KUBEADM_SUITE"])
    # Each flavour's run ends with its lab down; no other suite runs twice (it would cost lab time for nothing), but
    # the reader of the cluster's ranges, whose sources differ by flavour (the control plane as systemd units, or as
    # static pods with their manifests), in a few seconds each.
    assert binary & kubeadm == {LAB_DOWN, "tests/integration/test_cluster_networks_cluster.py"}
    assert variables["BINARY_SUITE"][-1] == variables["KUBEADM_SUITE"][-1] == LAB_DOWN
    assert not set(variables["EXTENDED"]) & (binary | kubeadm)
    for name in variables["BINARY_SUITE"] + variables["KUBEADM_SUITE"] + variables["EXTENDED"]:
        assert (REPO / name).is_file(), f"{name}: no such suite"


def test_make_test_runs_both_flavours_suites():
    recipe = subprocess.run(["make", "-n", "test"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    lines = [line for line in recipe.splitlines() if "pytest" in line]
    assert any("tests/unit" in line and "tests/lab/test_lab.py" in line for line in lines), lines
    assert any(line.startswith("KUBEHA_LAB_FLAVOUR=kubeadm") and "test_kubeadm_lab.py" in line for line in lines), lines


def test_negative_control_a_suite_left_out_is_found(tmp_path):
    makefile = (REPO / "Makefile").read_text().replace(" tests/integration/test_local_proxy_day2.py", "")
    (tmp_path / "Makefile").write_text(makefile)
    variables = make_variables(tmp_path / "Makefile")
    assert unassigned(variables) == {"tests/integration/test_local_proxy_day2.py"}


@pytest.mark.parametrize("name", ["BINARY_SUITE", "KUBEADM_SUITE"])
def test_negative_control_a_variable_gone_is_found(tmp_path, name):
    makefile = (REPO / "Makefile").read_text().replace(f"{name} :=", "UNUSED_SUITE :=")
    (tmp_path / "Makefile").write_text(makefile)
    assert name not in make_variables(tmp_path / "Makefile")
