# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to the kubeha.apiserver collection: not a public API, may change without notice.
"""Durable file writes: the collection's one atomic replace, and the bound on the backups kept beside a file.

- ``atomic_write``: a temporary file in the same directory, written and fsynced, given its mode (and the owner of
  the file it replaces), renamed over the target, then the directory fsynced: after a power loss the file is the
  old one or the new one, never empty or half written, and the rename itself is not lost;
- ``fsync_directory``: that last step alone, for a rename or unlink done another way (AnsibleModule.atomic_move);
- ``prune_backups``: only the newest few of Ansible's timestamped backups (``<file>.<pid>.<date>@<time>~``) stay,
  so a file changed on every run does not grow its directory without end. Other copies (the collection's
  ``.kubeha-orig``) are never touched;
- restart markers: a small file holding the digest of the content a service last (re)started with. Recorded
  before the content changes (``adopt_marker``), it makes a restart the change needs happen on the next run
  when the run that made the change died before restarting (``restart_due``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile

BACKUPS_KEPT = 3
_BACKUP_SUFFIX = re.compile(r"\.\d+\.\d{4}-\d{2}-\d{2}@\d{2}:\d{2}:\d{2}~$")


def fsync_directory(directory: str) -> None:
    """Make the directory's entries (a rename, a new or removed name) durable."""
    fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes | str, mode: int | None = None, like: str | None = None) -> None:
    """Replace ``path`` with ``data``, durably. ``mode`` (default: ``like``'s, else 0644) is set before the rename,
    so the new content is never readable by more than intended; as root, ``like``'s owner is kept too."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o755, exist_ok=True)
    info = os.stat(like) if like else None
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")  # made 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode if mode is not None else (info.st_mode & 0o7777 if info else 0o644))
        if info is not None and os.geteuid() == 0:
            os.chown(tmp, info.st_uid, info.st_gid)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_directory(directory)


def backups_of(path: str) -> list[str]:
    """Ansible's timestamped backups of ``path`` in its directory, oldest first (by time of change, then name)."""
    directory, name = os.path.split(os.path.abspath(path))
    found = [
        os.path.join(directory, entry)
        for entry in os.listdir(directory)
        if entry.startswith(name + ".") and _BACKUP_SUFFIX.fullmatch(entry[len(name) :])
    ]
    return sorted(found, key=lambda p: (os.stat(p).st_mtime_ns, p))


def prune_backups(path: str, keep: int = BACKUPS_KEPT) -> list[str]:
    """Remove all but the ``keep`` newest backups of ``path``; the removed names, oldest first."""
    removed = backups_of(path)[:-keep] if keep > 0 else backups_of(path)
    for old in removed:
        os.unlink(old)
    if removed:
        fsync_directory(os.path.dirname(os.path.abspath(path)))
    return removed


def content_digest(data: bytes | str) -> str:
    """The SHA-256 of a file's content, as restart markers hold it."""
    return hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()


def read_marker(path: str) -> str | None:
    """The digest a restart marker holds; None when there is none (or it holds no digest)."""
    try:
        with open(path, encoding="ascii") as handle:
            value = handle.read().strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    return value if re.fullmatch(r"[0-9a-f]{64}", value) else None


def adopt_marker(path: str, digest: str) -> None:
    """Before a change: a missing marker records ``digest``, what the service runs now (never overwrites one)."""
    if read_marker(path) is None:
        atomic_write(path, digest + "\n", 0o644)


def restart_due(marker: str | None, before: str, after: str) -> bool:
    """Whether the service runs other content than ``after`` (digests): by its marker, or without one by
    ``before`` (the content as the run found it, which the service is taken to run)."""
    return (marker or before) != after
