"""``hybridcxr pacs`` without a PACS to talk to: usage errors, and a PACS that is down (connection refused)."""

from __future__ import annotations

import pytest
from _orthanc import free_port
from typer.testing import CliRunner

from hybridcxr.cli import app
from hybridcxr.dicom_out.identity import model_version
from hybridcxr.pacs.state import PacsState

runner = CliRunner()


@pytest.fixture
def card_only_run(tmp_path):
    """A run folder holding only its card: enough for the model version, which is all a pass needs until it
    has something to analyze (the models load on first use)."""
    (tmp_path / "run" / "model").mkdir(parents=True)
    (tmp_path / "run" / "model" / "card.json").write_text('{"kind": "classifier"}')
    return tmp_path / "run"


@pytest.mark.parametrize("args, message", [
    ([], "exactly one of --dicomweb"),
    (["--dicomweb", "http://x", "--dimse", "x:1"], "exactly one of --dicomweb"),
    (["--dimse", "nohost"], "HOST:PORT"),
    (["--dicomweb", "http://x", "--since", "yesterday"], "--since wants a date"),
    (["--dicomweb", "http://x", "--store", "sc"], "the SR always"),
    (["--dicomweb", "http://x", "--study", "1.2", "--since", "2024-01-01"], "not both"),
])
def test_usage_errors_exit_2(card_only_run, tmp_path, args, message):
    result = runner.invoke(app, ["pacs", "--model", str(card_only_run), "--state", str(tmp_path / "s.sqlite"), *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


@pytest.mark.parametrize("protocol", ["dicomweb", "dimse"])
def test_pacs_down_is_a_clear_error_after_retries(card_only_run, tmp_path, protocol):
    port = free_port()  # nothing listens there: connection refused
    target = ["--dicomweb", f"http://127.0.0.1:{port}/dicom-web"] if protocol == "dicomweb" else \
        ["--dimse", f"127.0.0.1:{port}", "--called-aet", "ORTHANC"]
    state = tmp_path / "s.sqlite"
    result = runner.invoke(app, ["pacs", "--model", str(card_only_run), "--state", str(state), *target],
                           env={"HYBRIDCXR_PACS_PASSWORD": "s3cret-never-shown", "HYBRIDCXR_PACS_USER": "u"})
    text = " ".join(result.output.split())
    assert result.exit_code == 1, result.output
    assert f"127.0.0.1:{port}" in text and "failed 3 times" in text
    assert "stopped early" in text and "0 studies answered" in text
    assert "s3cret-never-shown" not in result.output
    server = target[1] if protocol == "dicomweb" else f"{target[1]} (AE ORTHANC)"
    assert f"PACS {server}," in text
    assert PacsState(state).last_run(server, model_version(card_only_run / "model" / "card.json")) is None


def test_credentials_in_the_url_are_never_shown(card_only_run, tmp_path):
    port = free_port()
    result = runner.invoke(app, ["pacs", "--model", str(card_only_run), "--state", str(tmp_path / "s.sqlite"),
                                 "--dicomweb", f"http://bob:hunter2@127.0.0.1:{port}/dicom-web"])
    assert result.exit_code == 1
    assert "hunter2" not in result.output and "bob" not in result.output
    assert f"http://127.0.0.1:{port}/dicom-web" in result.output
