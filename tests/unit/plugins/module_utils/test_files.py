# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The collection's one atomic, durable write and its bound on backups, on real files in a temporary directory."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from ansible_collections.kubeha.apiserver.plugins.module_utils import _files


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What each os.fsync call was made on: "dir" or "file"."""
    seen: list[str] = []
    real = os.fsync

    def watching(fd: int) -> None:
        seen.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", watching)
    return seen


def test_atomic_write_syncs_the_file_then_its_directory(tmp_path: Path, synced: list[str]) -> None:
    target = tmp_path / "state.json"
    _files.atomic_write(str(target), "{}\n")
    assert target.read_text() == "{}\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert synced == ["file", "dir"]  # the bytes, then the rename itself
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary file left


def test_atomic_write_takes_the_mode_and_owner_of_the_file_it_replaces(tmp_path: Path) -> None:
    old = tmp_path / "kubelet.conf"
    old.write_text("old")
    old.chmod(0o600)
    _files.atomic_write(str(tmp_path / "copy"), b"new", like=str(old))
    assert stat.S_IMODE((tmp_path / "copy").stat().st_mode) == 0o600
    _files.atomic_write(str(tmp_path / "key.pem"), b"k", mode=0o600)
    assert stat.S_IMODE((tmp_path / "key.pem").stat().st_mode) == 0o600


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "haproxy.cfg"
    target.write_text("old")

    def no_rename(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError):
        _files.atomic_write(str(target), "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["haproxy.cfg"]


def test_only_the_newest_backups_stay(tmp_path: Path, synced: list[str]) -> None:
    conf = tmp_path / "kubelet.conf"
    conf.write_text("now")
    backups = []
    for n in range(6):
        backup = tmp_path / f"kubelet.conf.{1000 + n}.2026-12-0{n + 1}@10:00:00~"
        backup.write_text(str(n))
        os.utime(backup, ns=(n * 10**9, n * 10**9))
        backups.append(backup)
    # Not Ansible backups of this file: kept whatever their age.
    others = [
        tmp_path / "kubelet.conf.kubeha-orig",
        tmp_path / "kubelet.conf.bak",
        tmp_path / "other.conf.1.2026-12-01@10:00:00~",
    ]
    for other in others:
        other.write_text("x")
        os.utime(other, ns=(0, 0))
    removed = _files.prune_backups(str(conf))
    assert removed == [str(b) for b in backups[:3]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["kubelet.conf", *(b.name for b in backups[3:]), *(o.name for o in others)]
    )
    assert synced == ["dir"]
    assert _files.prune_backups(str(conf)) == []  # nothing more to do


def test_negative_control_fewer_backups_than_kept_are_all_kept(tmp_path: Path) -> None:
    conf = tmp_path / "kubelet.conf"
    conf.write_text("now")
    backup = tmp_path / "kubelet.conf.1.2026-12-01@10:00:00~"
    backup.write_text("0")
    assert _files.prune_backups(str(conf)) == [] and backup.exists()
    assert _files.backups_of(str(conf)) == [str(backup)]  # it is one: the pattern matches, the bound spares it


def test_a_marker_is_adopted_once_and_anything_but_a_digest_reads_as_none(tmp_path: Path) -> None:
    marker = str(tmp_path / "markers" / "kubelet.conf.sha256")
    old, new = _files.content_digest("old"), _files.content_digest("new")
    assert _files.read_marker(marker) is None
    _files.adopt_marker(marker, old)
    _files.adopt_marker(marker, new)  # never overwrites: the first records what the service ran
    assert _files.read_marker(marker) == old
    assert _files.restart_due(_files.read_marker(marker), new, new)  # the file moved on, the service did not
    assert not _files.restart_due(None, new, new) and _files.restart_due(None, old, new)
    Path(marker).write_text("not a digest\n")
    assert _files.read_marker(marker) is None
