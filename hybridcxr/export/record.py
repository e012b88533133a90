"""The record an ONNX export leaves beside each file it writes, and the check that refuses a stale or changed file.

``X.onnx`` comes with ``X.onnx.json``::

    {"kind": "hybridcxr onnx export", "model": "detector", "file": "best.onnx", "sha256": "...",
     "source": {"file": "best.safetensors", "sha256": "..."}, "inputs": [...], "outputs": [...],
     "tolerance": {"rtol": 0.001, "atol": 0.0001}, "max_abs_diff": {"output0": 3.1e-05, ...}, ...}

``source`` is the weights file the graph was made from. :func:`check_export` is what ``--runtime onnx`` runs
before opening a session: the ONNX file must be the one recorded (its sha256: not truncated, not edited, not
another export's) and its source weights must still be the ones beside it (a re-trained or replaced model makes
the export stale). Either way the error names the file and says to export again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybridcxr.errors import InputError
from hybridcxr.files import file_sha256, read_model_card

KIND = "hybridcxr onnx export"
RECORD_VERSION = 1
#: What "the same outputs" means, for every graph and for boxes and probabilities at run time:
#: ``|onnx - torch| <= atol + rtol * |torch|`` element-wise (numpy's ``allclose``). fp32 kernels of
#: onnxruntime and PyTorch sum in different orders; measured differences are far smaller (the records hold them).
RTOL = 1e-3
ATOL = 1e-4


@dataclass(frozen=True)
class Tolerance:
    """An element-wise tolerance ``|a - b| <= atol + rtol * |b|``."""

    rtol: float = RTOL
    atol: float = ATOL

    def allclose(self, actual: Any, expected: Any) -> bool:
        """Whether two arrays of one shape agree within the tolerance (NaN never agrees).

        >>> TOLERANCE.allclose([250.0, 0.5], [250.2, 0.50005]), TOLERANCE.allclose([0.0], [0.001])
        (True, False)
        """
        import numpy as np

        a, b = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
        return a.shape == b.shape and bool(np.allclose(a, b, rtol=self.rtol, atol=self.atol))

    def as_dict(self) -> dict[str, float]:
        return {"rtol": self.rtol, "atol": self.atol}


TOLERANCE = Tolerance()


def record_path(onnx_file: str | Path) -> Path:
    """``X.onnx.json``: the export record of ``X.onnx``.

    >>> record_path("runs/det/weights/best.onnx").as_posix()
    'runs/det/weights/best.onnx.json'
    """
    onnx_file = Path(onnx_file)
    return onnx_file.with_name(onnx_file.name + ".json")


def check_export(onnx_file: Path, source: Path, model: str, int8: bool = False) -> dict[str, Any]:
    """The record of ``onnx_file`` after checking that the file is the one recorded and was exported from the
    weights file ``source`` as it is now; InputError naming the ONNX file (or its record) otherwise."""
    where = record_path(onnx_file)
    command = "`hybridcxr export RUN --format onnx" + (" --int8`" if int8 else "`")
    if not onnx_file.is_file():
        raise InputError(onnx_file, f"missing: no {'int8 ' if int8 else ''}ONNX {model} here; make it with {command}")
    if not where.is_file():
        raise InputError(onnx_file, f"has no export record ({where.name}); export again with {command}")
    record = read_model_card(where, KIND, "ONNX export record")
    if record.get("model") != model or record.get("file") != onnx_file.name:
        raise InputError(where, f"is not the record of the ONNX {model} {onnx_file.name}")
    if int(record.get("record_version", 0)) > RECORD_VERSION:
        raise InputError(where, f"record version {record['record_version']} is newer than this hybridcxr reads")
    if file_sha256(onnx_file) != record.get("sha256"):
        raise InputError(onnx_file, "does not match its export record (sha256 differs): the file was changed or "
                                    f"damaged after export; export again with {command}")
    if file_sha256(source) != (record.get("source") or {}).get("sha256"):
        raise InputError(onnx_file, f"is stale: it was exported from other weights than {source} holds now "
                                    f"(sha256 differs); export again with {command}")
    return record


def classification_refusal(record: dict[str, Any]) -> str | None:
    """Why an int8 detector's export record does not let it feed its classifier, or None when it may: only a
    record that measured the run's probabilities (a classifier run's export) within the tolerance it states
    (:class:`hybridcxr.export.quantize.Int8Tolerance`) may."""
    moved = (record.get("max_abs_diff") or {}).get("probabilities")
    tolerance = record.get("tolerance") or {}
    limit = tolerance.get("probabilities", tolerance.get("advised_probabilities"))  # the first int8 records' name
    if moved is None or limit is None:
        return ("its export measured no classifier's probabilities (a detector run's int8 export?): export the "
                "classifier run itself with --int8, or use --runtime onnx")
    if moved <= limit:
        return None
    return (f"with the detector in int8 this run's probabilities moved by up to {moved:.3g} on its held-out "
            f"images ({record.get('checked_on', 'see the record')}), beyond the int8 tolerance's {limit:g}: it "
            "detects (`detect --weights`), but does not classify; use --runtime onnx for PyTorch's probabilities, "
            "or export again with --calibration DIR on images of the kind it will see")
