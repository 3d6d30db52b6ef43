# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Make tests/bench/bench.py and plot.py importable (tests/conftest.py already puts tests/lab, which bench.py
imports, on ``sys.path``); importing them starts nothing: the bench only runs from its ``main()``."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[2]
for where in (TESTS / "lab", TESTS / "bench"):
    if str(where) not in sys.path:
        sys.path.insert(0, str(where))
