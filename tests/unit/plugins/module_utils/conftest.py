# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The ``rig`` fixture: guards wired to fakes (guard_rig.py), closed after the test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from guard_rig import Rig


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    made: list[Rig] = []

    def build(**overrides: Any) -> Rig:
        r = Rig(tmp_path, **overrides)
        made.append(r)
        return r

    yield build  # type: ignore[misc]
    for r in made:
        r.guard.close()
