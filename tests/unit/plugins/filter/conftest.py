# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The filter plugin a test file tests (its ``FILTER``, the plugin's name), loaded the one way for every file.

The plugin is imported during each test rather than at collection: importing controller code (ansible.errors) marks
the process as Ansible's controller, and the modules' unit tests in the same process would then see their warnings
go to the controller's display instead of their result. The mark is put back after each test.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from types import ModuleType

import ansible.module_utils._internal as module_utils_internal
import pytest

PACKAGE = "ansible_collections.kubeha.apiserver.plugins.filter"


@pytest.fixture(autouse=True)
def plugin(request: pytest.FixtureRequest) -> Iterator[ModuleType]:
    """The plugin module named by the test file's ``FILTER``."""
    name = getattr(request.module, "FILTER", None)
    if not isinstance(name, str):
        pytest.fail(f"{request.module.__name__} does not name its filter plugin (FILTER = '<name>')")
    was_controller = module_utils_internal.is_controller
    try:
        yield importlib.import_module(f"{PACKAGE}.{name}")
    finally:
        module_utils_internal.is_controller = was_controller


@pytest.fixture
def AnsibleFilterError(plugin: ModuleType) -> type[Exception]:  # the class, under its own name
    return plugin.AnsibleFilterError
