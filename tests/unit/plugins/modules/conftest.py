# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The modules' ``main()`` run through AnsibleModule, the one way for every test file (``run_module``, the module being
the file's ``MODULE``), each test with a warnings registry of its own."""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

import pytest
from ansible.module_utils.common import warnings as ansible_warnings
from ansible.module_utils.testing import patch_module_args


class ModuleRunner:
    """``module.main()`` given ``args``, as Ansible runs it: the result it prints, parsed.

    ``internal`` are AnsibleModule's internal parameters without their ``_ansible_`` prefix (``check_mode=True``,
    ``diff=True``); ``out`` is what the last run printed, as it printed it.
    """

    def __init__(self, module: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
        self.module = module
        self.capsys = capsys
        self.out = ""

    def __call__(self, args: dict[str, Any], **internal: Any) -> dict[str, Any]:
        full = dict(args) | {f"_ansible_{key}": value for key, value in internal.items()}
        with patch_module_args(full), pytest.raises(SystemExit):
            self.module.main()
        self.out = self.capsys.readouterr().out
        return json.loads(self.out)


@pytest.fixture
def run_module(request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]) -> ModuleRunner:
    """The runner of the module the test file names (its ``MODULE``)."""
    module = getattr(request.module, "MODULE", None)
    if not isinstance(module, ModuleType):
        pytest.fail(f"{request.module.__name__} does not name the module it runs (MODULE = <the module>)")
    return ModuleRunner(module, capsys)


@pytest.fixture(autouse=True)
def own_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """ansible-core keeps module warnings in a process-wide registry: each test's stay its own."""
    # an empty one of the same kind: a list before ansible-core 2.19, a dict since
    monkeypatch.setattr(ansible_warnings, "_global_warnings", type(ansible_warnings._global_warnings)())
