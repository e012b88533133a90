"""The export record's checks on small files (no model): the tolerance, and what makes an ONNX file refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hybridcxr.errors import InputError
from hybridcxr.export.record import KIND, Tolerance, check_export, classification_refusal, record_path
from hybridcxr.files import file_sha256


def test_tolerance_is_relative_plus_absolute():
    tol = Tolerance(rtol=1e-3, atol=1e-4)
    assert tol.allclose([100.0, 0.0], [100.09, 0.00009])
    assert not tol.allclose([100.0], [100.2]) and not tol.allclose([0.0], [0.0002])
    assert not tol.allclose([np.nan], [np.nan]) and not tol.allclose([1.0, 2.0], [1.0])


def _exported(tmp_path):
    onnx_file, source = tmp_path / "head.onnx", tmp_path / "model.safetensors"
    onnx_file.write_bytes(b"graph bytes")
    source.write_bytes(b"weights")
    record = {"kind": KIND, "record_version": 1, "model": "head", "file": "head.onnx",
              "sha256": file_sha256(onnx_file), "source": {"file": source.name, "sha256": file_sha256(source)}}
    record_path(onnx_file).write_text(json.dumps(record))
    return onnx_file, source


def test_check_export_accepts_the_recorded_file_and_refuses_changes(tmp_path):
    onnx_file, source = _exported(tmp_path)
    assert record_path(onnx_file).name == "head.onnx.json"
    assert check_export(onnx_file, source, "head")["model"] == "head"
    with pytest.raises(InputError, match="is not the record of the ONNX backbone"):
        check_export(onnx_file, source, "backbone")
    source.write_bytes(b"retrained weights")
    with pytest.raises(InputError, match=r"head\.onnx: is stale"):
        check_export(onnx_file, source, "head")
    onnx_file.write_bytes(b"other graph")
    with pytest.raises(InputError, match=r"head\.onnx: does not match its export record"):
        check_export(onnx_file, source, "head")
    record_path(onnx_file).write_text("{not json")
    with pytest.raises(InputError, match=r"head\.onnx\.json: not readable JSON"):
        check_export(onnx_file, source, "head")


def test_an_int8_record_classifies_only_within_the_probabilities_it_states():
    def record(moved, **tolerance):
        return {"max_abs_diff": {"scores": 0.01, **({} if moved is None else {"probabilities": moved})},
                "tolerance": tolerance, "checked_on": "32 held-out images (val)"}

    assert classification_refusal(record(0.05, probabilities=0.05)) is None
    assert "measured no classifier's probabilities" in classification_refusal(record(None, probabilities=0.05))
    assert classification_refusal(record(float("nan"), probabilities=0.05)) is not None
    why = classification_refusal(record(0.081, probabilities=0.05))
    assert why is not None and why.startswith("with the detector in int8 this run's probabilities moved by up to "
                                              "0.081 on its held-out images (32 held-out images (val)), beyond")
    assert classification_refusal(record(0.081, advised_probabilities=0.05)) is not None  # the first records' key
    assert classification_refusal(record(0.03, advised_probabilities=0.05)) is None
