# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The kernel's IPVS table for one service, in memory: the fake adapter of the unit tests that need one service only
(``_ipvs.ensure``, the ipvs_service module, the guard's loop timestamp). The guard's own tests use guard_rig's
FakeIPVS, which keeps every service and can be made to fail.

On sys.path through tests/unit/conftest.py's directory.
"""

from __future__ import annotations

from collections.abc import Sequence

from ansible_collections.kubeha.apiserver.plugins.module_utils._ipvs_model import Action, Service, simulate


class FakeIPVSAdapter:
    """An adapter as ``_ipvs.make_adapter`` gives: ``get`` answers the one service whatever is asked (``gets`` counts
    the reads), ``apply`` records the actions and applies them with ``_ipvs_model.simulate``, ``close`` is noted."""

    def __init__(self, current: Service | None = None) -> None:
        self.state = current
        self.applied: list[Action] = []
        self.gets = 0
        self.closed = False

    def get(self, address: str, port: int, protocol: str) -> Service | None:
        self.gets += 1
        return self.state

    def apply(self, actions: Sequence[Action]) -> None:
        self.applied.extend(actions)
        self.state = simulate(self.state, actions)

    def close(self) -> None:
        self.closed = True
