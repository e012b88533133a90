"""The models behind the HTTP face: one :class:`~hybridcxr.analyzer.Analyzer`, one batch worker, the recent results.

An upload is checked (type by content, size), written to a private temporary folder under a generated id,
decoded by :func:`hybridcxr.io.read_radiograph` (the CLI's decode) and deleted; the radiograph then goes
through the Analyzer's :meth:`~hybridcxr.analyzer.Analyzer.analyze_radiographs`, the detector and
:meth:`~hybridcxr.analyzer.Analyzer.analyze` that ``hybridcxr classify`` runs, so the service and the CLI give
the same numbers. Decoding runs in the request's thread; the networks run in one worker thread
(:class:`~hybridcxr.serve.batching.Batcher`) that takes the requests waiting together, up to ``max_batch``
within ``batch_window_ms``, as one batch (their feature hooks hold per-call state: one batch at a time).

Memory is bounded before anything is decoded: the header's pixel count is checked first and an unreadable
header is refused (never "let the decoder try": OpenCV decodes what Pillow will not parse); at most
``max_decodes`` uploads decode at once, and decoded images hold a share of a pixel budget of ``max_decodes``
images at the pixel limit (:class:`~hybridcxr.serve.budget.PixelBudget`, from decoding until the analysis is
done), so N uploads at the pixel limit cost ``max_decodes`` images, not N, while small ones batch together.

Nothing identifying is logged: the generated id, byte counts, image size, box count and time only.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

from pydicom.dataset import Dataset

from hybridcxr.dicom_out.study import read_source
from hybridcxr.errors import (
    MultiFrameError,
    NoPixelDataError,
    NotAnImageError,
    RadiographError,
    TooManyPixelsError,
    UnsupportedModalityError,
)
from hybridcxr.findings import colour
from hybridcxr.io.radiograph import Radiograph
from hybridcxr.serve.batching import DEFAULT_BATCH_WINDOW_MS, DEFAULT_MAX_BATCH, Batcher, check_batching
from hybridcxr.serve.budget import PixelBudget
from hybridcxr.serve.results import LazyReport, ResultStore, StoredResult, stored_result
from hybridcxr.serve.uploads import MIB, ServiceError, sniff_upload, too_large

if TYPE_CHECKING:
    from hybridcxr.analyzer import Analysis

log = logging.getLogger("hybridcxr.serve")
_T = TypeVar("_T")

DEFAULT_MAX_UPLOAD_BYTES = 50 * MIB
_SUFFIX = {"dicom": ".dcm", "png": ".png", "jpeg": ".jpg"}
#: Largest image accepted, in pixels: a chest radiograph has 4-12 million; a small compressed file can claim far
#: more (a 140 KB PNG of 12000 x 12000 zeros decodes to 0.6 GB), so the header is checked before decoding.
DEFAULT_MAX_PIXELS = 64_000_000
MIN_SIDE = 64  # smaller "images" are no radiograph a model should score
#: Uploads decoded at once, and the pixel budget in images at the pixel limit: each may hold a full-resolution
#: float32 image.
DEFAULT_MAX_DECODES = 2


class AnalysisService:
    """Load a classifier run once; analyze uploads into JSON records; keep the last ``cache_size`` for overlays."""

    def __init__(self, run: str | Path, *, device: str | None = None,
                 max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, cache_size: int = 256,
                 max_pixels: int = DEFAULT_MAX_PIXELS, max_decodes: int = DEFAULT_MAX_DECODES,
                 batch_window_ms: float = DEFAULT_BATCH_WINDOW_MS, max_batch: int = DEFAULT_MAX_BATCH,
                 runtime: str = "torch") -> None:
        from hybridcxr.analyzer import Analyzer
        from hybridcxr.io.dicom import max_pixels as decoder_limit

        if max_upload_bytes < 1 or max_decodes < 1:
            raise ValueError(f"max_upload_bytes and max_decodes must be positive, not {max_upload_bytes}, "
                             f"{max_decodes}")
        check_batching(batch_window_ms, max_batch)
        self.analyzer = Analyzer(run, device=device, runtime=runtime)  # runtime: torch, onnx, onnx-int8
        self.max_upload_bytes = max_upload_bytes
        self.max_pixels = max_pixels
        self.results = ResultStore(cache_size)
        self.model = model_info(self.analyzer.card, self.analyzer.detector.card)
        self._decodes = threading.BoundedSemaphore(max_decodes)
        # an image decoded here is at most the smaller of the two limits (hybridcxr.io refuses above its own)
        self.pixels = PixelBudget(max_decodes * min(max_pixels, decoder_limit()))
        self.batcher: Batcher[tuple[Radiograph, float | None, str | None], Analysis] = Batcher(
            self._analyze_batch, window_ms=batch_window_ms, max_batch=max_batch)

    @property
    def busy(self) -> bool:
        """Whether the networks are running now."""
        return self.batcher.busy

    def close(self) -> None:
        """Finish the analyses queued for the networks and stop the batch worker (the server's shutdown)."""
        self.batcher.drain()

    def analyze_upload(self, upload: IO[bytes], content_type: str | None, age: str | None = None,
                       sex: str | None = None) -> dict[str, Any]:
        """Check, decode, detect and classify one uploaded file; return its JSON record (:class:`schema.Analysis`).

        Raises:
            ServiceError: 413 too large, 415 not DICOM/PNG/JPEG, 422 undecodable or not a radiograph, or a
                bad ``age``/``sex``.
        """
        analysis_id = uuid.uuid4().hex
        start = time.perf_counter()
        given_age, given_sex = self._checked(analysis_id, lambda: parse_demographics(age, sex))
        with self._decoded(upload, content_type, analysis_id) as (kind, size, radiograph, header):
            age_years = given_age if age else radiograph.age_years
            sex_used = given_sex if sex else radiograph.sex
            analysis = self.batcher.submit((radiograph, age_years, sex_used))  # waits for its batch
            stored = stored_result(radiograph.pixels, analysis.detection.boxes, analysis.probabilities,
                                   analysis.decisions, self.analyzer.findings)
            if header is not None and header.get("SOPInstanceUID"):
                stored = replace(stored, sr=self._lazy_report(analysis, header))
            record = self._record(analysis_id, kind, size, radiograph, analysis, stored,
                                  given=(bool(age), bool(sex)))
            record["sr"] = f"/v1/sr/{analysis_id}.dcm" if stored.sr else None
            del radiograph, analysis, header  # the full-resolution image goes before its pixels are given back
        self.results.put(analysis_id, stored)
        image = record["image"]
        log.info("analyzed %s: %d bytes, %s %dx%d, %d boxes, %.0f ms", analysis_id, size, kind, image["width"],
                 image["height"], len(record["boxes"]), 1000 * (time.perf_counter() - start))
        return record

    def _lazy_report(self, analysis: Analysis, header: Dataset) -> LazyReport:
        """The SR of a DICOM upload, made when first asked for (from the header and the calls, not the pixels)."""
        from hybridcxr.dicom_out.outputs import sr_bytes
        from hybridcxr.dicom_out.sr import structured_report

        boxes, path = analysis.detection.boxes.copy(), analysis.detection.radiograph.meta.path
        probabilities, decisions = dict(analysis.probabilities), dict(analysis.decisions)
        model = self.analyzer.model_version

        def make() -> bytes | None:
            return sr_bytes(None, header, model=model, build=lambda source: structured_report(
                boxes, source, model=model, path=path, probabilities=probabilities, decisions=decisions))

        return LazyReport(make)

    def _analyze_batch(self, items: list[tuple[Radiograph, float | None, str | None]]) -> list[Analysis]:
        """The batch worker's call: detect and classify the decoded uploads waiting together."""
        radiographs, ages, sexes = zip(*items)
        return self.analyzer.analyze_radiographs(list(radiographs), list(ages), list(sexes))

    @contextmanager
    def _decoded(self, upload: IO[bytes], content_type: str | None,
                 analysis_id: str) -> Iterator[tuple[str, int, Radiograph, Dataset | None]]:
        """Sniff, store under a private temporary name, check the header's size, then hold its pixels in the
        budget and decode (the temporary file is gone before the block runs): (kind, bytes, image, the DICOM
        header for the SR or None). The pixels are given back when the block ends."""
        with ExitStack() as held:
            def read() -> tuple[str, int, Radiograph, Dataset | None]:
                kind = sniff_upload(upload.read(132), content_type)
                upload.seek(0)
                with tempfile.TemporaryDirectory(prefix="hybridcxr-serve-") as folder:
                    path = Path(folder) / f"{analysis_id}{_SUFFIX[kind]}"
                    size = _copy_limited(upload, path, self.max_upload_bytes)
                    held.enter_context(self.pixels.hold(_check_pixels(path, kind, self.max_pixels)))
                    with self._decodes:
                        return kind, size, _decode(path), read_source(path) if kind == "dicom" else None

            yield self._checked(analysis_id, read)

    @staticmethod
    def _checked(analysis_id: str, step: Callable[[], _T]) -> _T:
        """Run ``step``; a refusal is logged by id and code only, then raised."""
        try:
            return step()
        except ServiceError as err:
            log.info("rejected %s: %d %s", analysis_id, err.status_code, err.code)
            raise

    def stored(self, analysis_id: str) -> StoredResult:
        """The kept result of ``analysis_id``; 404 where unknown or already dropped."""
        found = self.results.get(analysis_id)
        if found is None:
            raise ServiceError(404, "unknown_id", f"no analysis {analysis_id!r} here: only the last "
                                                  f"{self.results.capacity} results are kept")
        return found

    def _record(self, analysis_id: str, kind: str, size: int, radiograph: Radiograph, analysis: Analysis,
                stored: StoredResult, given: tuple[bool, bool]) -> dict[str, Any]:
        """The JSON answer: image facts, demographics used and their source, findings, boxes, overlay, model."""
        findings = self.analyzer.findings
        meta = radiograph.meta

        def source(was_given: bool, value: object) -> str:
            return "request" if was_given else "header" if value is not None else "unknown"

        ranked = sorted(findings, key=lambda f: -analysis.probabilities[f])
        return {
            "id": analysis_id,
            "image": {"format": kind, "bytes": size, "width": radiograph.width, "height": radiograph.height,
                      "view": meta.view, "modality": meta.modality, "pixel_spacing": meta.pixel_spacing,
                      "study_instance_uid": meta.study_uid, "series_instance_uid": meta.series_uid,
                      "sop_instance_uid": meta.sop_uid},
            "age_years": analysis.age_years,
            "sex": analysis.sex,
            "demographics_source": {"age": source(given[0], analysis.age_years), "sex": source(given[1], analysis.sex)},
            "findings": [{"finding": f, "probability": round(analysis.probabilities[f], 5),
                          "positive": analysis.decisions[f], "threshold": self.analyzer.thresholds[f],
                          "no_decision": self.analyzer.unlearned.get(f),
                          "colour": colour(f, findings)} for f in ranked],
            "boxes": [{"finding": r.finding, "score": round(float(r.score), 5),
                       **{k: round(float(getattr(r, k)), 2) for k in ("x_min", "y_min", "x_max", "y_max")},
                       "colour": colour(r.finding, findings)}
                      for r in analysis.detection.boxes.itertuples(index=False)],
            "overlay": {"url": f"/v1/overlay/{analysis_id}.png",
                        "panel": {"width": int(stored.grey.shape[1]), "height": int(stored.grey.shape[0])}},
            "lungs": analysis.lung_record(),
            "model": self.model,
        }


def model_info(card: dict[str, Any], detector_card: dict[str, Any]) -> dict[str, Any]:
    """The model card's facts a client may show or log: versions, findings, thresholds rule, validation AUROC.

    Local paths of the training data are left out.
    """
    backbone = card.get("backbone", {})
    return {
        "kind": card.get("kind"),
        "card_version": card.get("card_version"),
        "versions": card.get("versions", {}),
        "saved_at": card.get("saved_at"),
        "findings": list(card.get("findings", [])),
        "groups": list(card.get("groups", [])),
        "threshold_rule": card.get("threshold_rule"),
        "val_macro_auroc": card.get("val_macro_auroc"),
        "best_epoch": card.get("best_epoch"),
        "backbone": {k: backbone.get(k) for k in ("name", "size", "fine_tuned")},
        "detector": {"imgsz": detector_card.get("imgsz"), "feature_dim": detector_card.get("feature_dim"),
                     "versions": detector_card.get("versions", {})},
    }


def parse_demographics(age: str | None, sex: str | None) -> tuple[float | None, str | None]:
    """The optional ``age`` and ``sex`` form fields; empty means "use the header".

    Raises:
        ServiceError: 422 for an age that is not one (``62``, ``062Y``, ``003M`` are) or a sex other than M/F.
    """
    from hybridcxr.io.demographics import parse_age, parse_sex

    given_age = parse_age(age, source="form field age") if age else None
    if age and given_age is None:
        raise ServiceError(422, "bad_age", f"age {age[:20]!r} is not an age (expected e.g. 62, 062Y or 003M)")
    given_sex = parse_sex(sex) if sex else None
    if sex and given_sex is None:
        raise ServiceError(422, "bad_sex", f"sex {sex[:20]!r} is not M or F")
    return given_age, given_sex


def _copy_limited(upload: IO[bytes], path: Path, limit: int) -> int:
    """Copy the upload to ``path``; 413 once it passes ``limit`` bytes. Returns the size."""
    size = 0
    with path.open("wb") as out:
        while block := upload.read(1 << 20):
            size += len(block)
            if size > limit:
                raise too_large(limit)
            out.write(block)
    return size


def _check_pixels(path: Path, kind: str, max_pixels: int) -> int:
    """The pixels the header claims (width x height); 422 before decoding where the header claims more than ``max_pixels``, a side under MIN_SIDE or more than
    one frame, and where it cannot be read at all: the check fails closed (a decoder would try anyway, and
    OpenCV decodes PNGs Pillow refuses, a gigabyte at a time)."""
    try:
        width, height, frames = _claimed_size(path, kind)
    except TooManyPixelsError:  # Pillow's own bomb check: more than twice its limit
        raise ServiceError(422, "too_many_pixels", "the image claims more pixels than this service decodes "
                                                   f"({max_pixels:,})") from None
    except Exception as err:  # noqa: BLE001 - parsers raise many types on hostile headers
        raise ServiceError(422, "undecodable", f"cannot read the image header ({type(err).__name__}): "
                                               "refused before decoding") from None
    if width is None or height is None:
        raise ServiceError(422, "not_a_radiograph", "not a chest radiograph: the header gives no image size "
                                                    "(DICOM Rows and Columns)")
    if width * height > max_pixels:
        raise ServiceError(422, "too_many_pixels", f"the image claims {width} x {height} pixels, more than the "
                                                   f"{max_pixels:,} this service decodes")
    if min(width, height) < MIN_SIDE:
        raise ServiceError(422, "not_a_radiograph", f"not a chest radiograph: {width} x {height} pixels is too small")
    if frames > 1:
        raise ServiceError(422, "not_a_radiograph", f"not a chest radiograph: {frames} frames (one is expected)")
    return width * height


def _claimed_size(path: Path, kind: str) -> tuple[int | None, int | None, int]:
    """(width, height, frames) from the header alone; None for a DICOM size element that is absent or empty."""
    if kind == "dicom":
        from hybridcxr.io.dicom import read_header

        ds = read_header(path, ["Rows", "Columns", "NumberOfFrames"])

        def number(keyword: str) -> int | None:
            value = ds.get(keyword)
            return int(value) if value not in (None, "") else None

        return number("Columns"), number("Rows"), number("NumberOfFrames") or 1
    from hybridcxr.io.images import claimed_size as image_size  # a PNG's IHDR, else Pillow's header parse

    size = image_size(path)
    if size is None:
        raise NotAnImageError(path, "no readable image header")
    return size[0], size[1], 1


def _decode(path: Path) -> Radiograph:
    """Read the radiograph; every failure becomes a 422 that names the problem, never the temporary path."""
    from hybridcxr.io import read_radiograph

    def plain(problem: str) -> str:
        return problem.replace(str(path), "the upload").replace(str(path.parent), "")

    try:
        return read_radiograph(path)
    except TooManyPixelsError:  # hybridcxr.io's own limit (HYBRIDCXR_MAX_PIXELS), checked before decoding
        raise ServiceError(422, "too_many_pixels", "the image claims more pixels than this service decodes "
                                                   "(its decoder's limit)") from None
    except (UnsupportedModalityError, NoPixelDataError, MultiFrameError) as err:
        problem = err.problem.split("; pass allow_modality")[0]  # the service has no such switch
        raise ServiceError(422, "not_a_radiograph", f"not a chest radiograph: {plain(problem)}") from None
    except NotAnImageError as err:
        raise ServiceError(422, "undecodable", f"cannot decode the file: {plain(err.problem)}") from None
    except RadiographError as err:
        raise ServiceError(422, "unreadable", f"cannot read the radiograph: {plain(err.problem)}") from None
    except Exception as err:  # noqa: BLE001 - decoders raise many types on hostile input
        log.warning("decoder failed on %s: %s", path.stem, type(err).__name__)
        raise ServiceError(422, "undecodable", f"cannot decode the file ({type(err).__name__})") from None


__all__ = ["DEFAULT_MAX_PIXELS", "DEFAULT_MAX_UPLOAD_BYTES", "AnalysisService", "model_info", "parse_demographics"]
