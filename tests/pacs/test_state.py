"""The PACS state: answered studies per server and model version, and the last run, kept across processes."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from hybridcxr.errors import OutputError
from hybridcxr.pacs.state import PacsState


def test_state_remembers_per_server_and_model(tmp_path):
    state = PacsState(tmp_path / "s.sqlite")
    state.mark_done("http://a", "1.2.3", "m1", "stored", 2)
    again = PacsState(tmp_path / "s.sqlite")  # a second process sees it
    assert again.is_done("http://a", "1.2.3", "m1")
    assert not again.is_done("http://a", "1.2.3", "m2")  # a new model version answers again
    assert not again.is_done("http://b", "1.2.3", "m1")
    assert again.done("http://a", "m1") == ["1.2.3"]


def test_state_last_run(tmp_path):
    state = PacsState(tmp_path / "s.sqlite")
    assert state.last_run("x", "m") is None
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    state.record_run("x", "m", when)
    assert state.last_run("x", "m") == when


def test_state_in_a_folder_that_cannot_hold_it_names_the_file(tmp_path):
    (tmp_path / "f").write_text("a file, not a folder")
    with pytest.raises(OutputError, match="s.sqlite"):
        PacsState(tmp_path / "f" / "s.sqlite")
