# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the kubeha.apiserver collection: this is NOT a public API. It backs the collection's
# modules that plan and apply through a run of their module_utils, and may change in any release without notice.

"""The one ``main()`` of the modules whose work is a run in module_utils: parse, run, report.

This is the adapter between AnsibleModule and the runs, and the only module_utils file that imports
``ansible.module_utils.basic``; every other file here stays free of it. A run is any callable that takes the
AnsibleModule and returns an outcome: an object with ``warnings`` (a list of strings), ``diff`` and ``result()``
(the return values, ``changed`` included). ``run_module`` maps what a run raises to one ``fail_json``:

- ``MissingLibraryError`` (PyYAML not importable): ``missing_required_lib`` with the import traceback;
- ``KubeAPIError`` and the module's own errors: their message, as it is. An error raised after something was
  already changed carries that in ``outcome`` (an ``AfterChangeError`` or ``RestartError``): its warnings are
  printed and its return values and diff go with the failure, so the caller sees what was done.

The parameters named in ``context`` (``path``, ``kubeconfig``) go with every failure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.kubeha.apiserver.plugins.module_utils._kubeapi import KubeAPIError, MissingLibraryError


class Outcome(Protocol):
    """What a run returns (and what an error raised after a change carries in ``outcome``)."""

    @property
    def warnings(self) -> Sequence[str]: ...

    @property
    def diff(self) -> Any: ...

    def result(self) -> dict[str, Any]: ...


def run_module(
    argument_spec: dict[str, Any],
    run: Callable[[AnsibleModule], Outcome],
    errors: type[Exception] | tuple[type[Exception], ...] = (),
    *,
    required_if: Sequence[Sequence[Any]] = (),
    context: Sequence[str] = (),
    diff: bool = True,
) -> None:
    """Parse the parameters (check mode supported), call ``run(module)`` and exit with its outcome.

    ``errors`` are the module's domain errors, reported by their message; ``diff=False`` for a module without diff
    mode. Never returns: ``exit_json`` or ``fail_json`` ends the process.
    """
    module = AnsibleModule(argument_spec=argument_spec, required_if=list(required_if), supports_check_mode=True)
    extra = {name: module.params[name] for name in context}
    domain = errors if isinstance(errors, tuple) else (errors,)
    try:
        outcome = run(module)
    except MissingLibraryError as exc:
        module.fail_json(msg=missing_required_lib(exc.library), exception=exc.import_traceback, **extra)
    except (KubeAPIError, *domain) as exc:
        partial = getattr(exc, "outcome", None)
        if partial is None:
            module.fail_json(msg=str(exc), **extra)
        _warn(module, partial)
        module.fail_json(msg=str(exc), diff=partial.diff, **{**partial.result(), **extra})
    _warn(module, outcome)
    result = outcome.result()
    if diff and module._diff:
        result["diff"] = outcome.diff
    module.exit_json(**result)


def _warn(module: AnsibleModule, outcome: Outcome) -> None:
    for warning in outcome.warnings:
        module.warn(warning)
