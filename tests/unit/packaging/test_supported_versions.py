# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The ansible-core releases the collection claims (meta/runtime.yml) are the ones `make test-compat` tests.

requirements/compat/matrix.txt lists the tested releases; scripts/test_compat.sh reads it, and each release has
its pinned virtualenv (requirements/compat/ansible-core-<minor>.txt) and an empty sanity ignore file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parents[3]
MATRIX = REPO / "requirements" / "compat" / "matrix.txt"


def read_matrix(text: str) -> list[tuple[Version, str, str]]:
    """(ansible-core, controller Python, ansible release) per line, as scripts/test_compat.sh reads them."""
    rows = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        core, python, ansible = line.split()
        rows.append((Version(core), python, ansible))
    return rows


def disagreements(requires_ansible: str, tested: list[Version]) -> list[str]:
    """What is wrong between the claim and the tested releases: [] when the lowest claimed minor is tested."""
    spec = SpecifierSet(requires_ansible)
    problems = [f"{v} is tested but outside requires_ansible {requires_ansible}" for v in tested if v not in spec]
    lowest = min(tested)
    floors = [Version(s.version) for s in spec if s.operator == ">="]
    if len(floors) != 1:
        return [*problems, f"requires_ansible {requires_ansible!r} has no single '>=' lower bound"]
    floor = floors[0]
    if floor.release[:2] < lowest.release[:2]:
        problems.append(f"requires_ansible claims {floor}, but the lowest tested release is {lowest}")
    if floor.release[:2] > lowest.release[:2]:
        problems.append(f"{lowest} is tested but requires_ansible starts at {floor}: it would not be claimed")
    return problems


def test_requires_ansible_starts_at_the_lowest_tested_release() -> None:
    runtime = yaml.safe_load((REPO / "meta" / "runtime.yml").read_text(encoding="utf-8"))
    tested = [row[0] for row in read_matrix(MATRIX.read_text(encoding="utf-8"))]
    assert tested == sorted(tested) and len(tested) == len({v.release[:2] for v in tested}), tested
    assert disagreements(runtime["requires_ansible"], tested) == []


def test_a_claim_below_or_above_the_tested_releases_is_reported() -> None:
    tested = [Version("2.17.14"), Version("2.18.19")]
    assert disagreements(">=2.17.0", tested) == []
    assert disagreements(">=2.16.0", tested) == [
        "requires_ansible claims 2.16.0, but the lowest tested release is 2.17.14"
    ]
    assert disagreements(">=2.18.0", tested) == [
        "2.17.14 is tested but outside requires_ansible >=2.18.0",
        "2.17.14 is tested but requires_ansible starts at 2.18.0: it would not be claimed",
    ]
    assert disagreements("<2.20", tested) == ["requires_ansible '<2.20' has no single '>=' lower bound"]


@pytest.mark.parametrize("row", read_matrix(MATRIX.read_text(encoding="utf-8")), ids=lambda row: str(row[0]))
def test_every_tested_release_has_its_pinned_venv_and_an_empty_ignore_file(row: tuple[Version, str, str]) -> None:
    core, python = row[:2]
    minor = f"{core.major}.{core.minor}"
    pins = (REPO / "requirements" / "compat" / f"ansible-core-{minor}.txt").read_text(encoding="utf-8").splitlines()
    assert f"ansible-core=={core}" in pins
    assert all(line.startswith("#") or "==" in line for line in pins if line.strip()), "every package pinned"
    assert (REPO / "tests" / "sanity" / f"ignore-{minor}.txt").read_text(encoding="utf-8") == ""
    assert python.count(".") == 1 and all(part.isdigit() for part in python.split(".")), python


def test_the_script_tests_the_matrix() -> None:
    script = (REPO / "scripts" / "test_compat.sh").read_text(encoding="utf-8")
    assert "done <requirements/compat/matrix.txt" in script
    assert "requirements=requirements/compat/ansible-core-${core%.*}.txt" in script
