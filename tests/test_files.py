"""Atomic writes: all or nothing, and the file mode a plain open() would give."""

from __future__ import annotations

import stat

import pytest

from hybridcxr.files import atomic_path, write_text


def test_written_file_is_readable_by_others_like_a_plain_open(tmp_path):
    path = write_text(tmp_path / "report.md", "hello")
    assert path.read_text() == "hello"
    assert stat.S_IMODE(path.stat().st_mode) & 0o044 == 0o044  # group and others may read (umask permitting)


def test_failed_write_leaves_neither_the_file_nor_a_temporary(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "table.csv") as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_disk_full_is_a_clear_error_and_leaves_nothing_behind(tmp_path, monkeypatch):
    import errno
    import os

    from hybridcxr.errors import OutputError
    from hybridcxr.files import write_json

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OutputError, match=r"report.json: cannot be written: the disk is full"):
        write_json(tmp_path / "report.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr("tempfile.mkstemp", full)
    with pytest.raises(OutputError, match="disk is full"):
        write_json(tmp_path / "report.json", {"a": 1})
