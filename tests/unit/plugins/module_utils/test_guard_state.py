# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The guard's state file (module_utils/_guard_state)."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_config import (
    GuardError,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_state import (
    make_state,
    read_state,
    write_state,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._proxy import DOWN, UP
from guard_rig import (
    M1,
    M2,
    M6,
    VIP4,
    VIP6,
    RigFactory,
    rigs,
)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[RigFactory]:
    yield from rigs(tmp_path)


# --------------------------------------------------------------------------------------------------
# State file
# --------------------------------------------------------------------------------------------------


def test_state_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "lib" / "state.json"
    state = make_state([VIP4, VIP6], 6443, [M2, M6, M1], {M1: UP, M2: DOWN}, mode="nftables")
    write_state(str(path), state)
    assert read_state(str(path)) == state
    doc = json.loads(path.read_text())
    assert doc == {
        "version": 1,
        "mode": "nftables",
        "vip": [VIP4, VIP6],
        "port": 6443,
        "backends": [
            {"address": "10.0.0.11", "port": 6443, "health": "up"},
            {"address": "10.0.0.12", "port": 6443, "health": "down"},
            {"address": "fd00::11", "port": 6443, "health": "unknown"},
        ],
    }
    assert os.listdir(path.parent) == ["state.json"]  # no temporary file left
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_read_state_missing_and_corrupt(tmp_path: Path) -> None:
    assert read_state(str(tmp_path / "none.json")) is None
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(GuardError, match="is not valid JSON"):
        read_state(str(bad))
    bad.write_text(json.dumps({"version": 7}))
    with pytest.raises(GuardError, match="is not a version 1 guard state"):
        read_state(str(bad))
    bad.write_text(json.dumps({"version": 1, "port": 6443, "backends": [{"address": "x", "port": 1}]}))
    with pytest.raises(GuardError, match="is not a valid guard state"):
        read_state(str(bad))
