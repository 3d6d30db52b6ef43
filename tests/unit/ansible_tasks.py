"""Walking the tasks of a parsed playbook or task file, for the unit tests that read roles/ and playbooks/."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

# Where a play or a block holds more tasks.
TASK_LISTS = ("tasks", "pre_tasks", "post_tasks", "handlers", "block", "rescue", "always")


def tasks_in(node: Any) -> Iterator[dict[str, Any]]:
    """Every task (a mapping with a name) in a task file or playbook, blocks, plays and handlers included."""
    if isinstance(node, list):
        for item in node:
            yield from tasks_in(item)
    elif isinstance(node, dict):
        if "name" in node:
            yield node
        for key in TASK_LISTS:
            yield from tasks_in(node.get(key))
