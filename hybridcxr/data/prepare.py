"""Turn a dataset adapter's tables into a training-ready folder: decoded PNGs, a YOLO dataset, a manifest.

Every image is decoded once (DICOM window, MONOCHROME1 inversion and all, through :func:`read_radiograph`),
resized so its long side is at most ``size`` (aspect ratio kept), and cached as an 8- or 16-bit PNG. The
folder then holds::

    images/{train,val,test}/<image_id>.png   labels/{train,val,test}/<image_id>.txt   data.yaml
    manifest.csv   boxes.csv (fused boxes, original pixels)   skipped.csv   summary.json   records/

``records/<image_id>.json`` marks a finished image: a re-run (after a kill, say) reuses it instead of decoding
again. Every file is written to a temporary name and renamed, so nothing is ever half-written.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from hybridcxr.config import Fusion, LabelRule, load_config
from hybridcxr.data.boxes import BoxStats, clip_boxes, fuse_readers
from hybridcxr.data.schema import SourceTables
from hybridcxr.data.splits import SplitSummary, assign_splits, check_leakage, summarize
from hybridcxr.device import cpu_threads
from hybridcxr.errors import DatasetError, HybridCXRError
from hybridcxr.layout import PreparedLayout
from hybridcxr.files import atomic_path, read_json_or_none, write_csv, write_json, write_text
from hybridcxr.progress import progress_bar

SPLITS = ("train", "val", "test")


_SETTINGS = ("size", "bits", "fusion", "iou", "label_rule", "split", "seed", "keep_official_test")


@dataclass
class PrepareOptions:
    """Knobs of :func:`prepare`: the job's settings (None = the default of ``configs/prepare.yaml``, or of
    ``configs/datasets/<dataset>.yaml``) validated once, here, plus how to run (workers, modality, progress)."""

    size: int | None = None
    bits: int | None = None
    fusion: Fusion | None = None
    iou: float | None = None
    label_rule: LabelRule | None = None
    split: list[float] | None = None
    seed: int | None = None
    keep_official_test: bool | None = None
    dataset: str | None = None
    workers: int = field(default_factory=cpu_threads)
    allow_modality: bool = False
    progress: bool = True
    split_tables: list[Path] | None = None  # the user's own train[,val],test tables (hybridcxr.data.split_tables)
    patient_column: str | None = None  # their patient column, where not found by its usual names
    split_from: Path | None = None  # another prepared folder whose manifest's splits this one takes

    def __post_init__(self) -> None:
        config = load_config("prepare", dataset=self.dataset, overrides={k: getattr(self, k) for k in _SETTINGS})
        for key in _SETTINGS:
            setattr(self, key, config[key])


@dataclass
class Skipped:
    """An image that could not be prepared, and why."""

    image_id: str
    path: str
    reason: str


@dataclass
class PrepareResult:
    """What :func:`prepare` made; ``str()`` is the closing summary."""

    out: Path
    source: str
    findings: tuple[str, ...]
    manifest: pd.DataFrame
    boxes: pd.DataFrame
    skipped: list[Skipped]
    box_stats: BoxStats
    splits: SplitSummary
    decoded: int
    reused: int
    warnings: list[str]
    notes: list[str]

    def summary(self) -> dict[str, Any]:
        """Counts for ``summary.json`` and the terminal."""
        per_split = self.manifest.groupby("split")
        return {
            "source": self.source,
            "images": len(self.manifest),
            "images_per_split": {s: int(n) for s, n in per_split.size().items()},
            "patients_per_split": {s: int(n) for s, n in per_split["patient_id"].nunique().items()},
            "positives_per_finding": {
                f: {s: int(g[f].sum()) for s, g in per_split} for f in self.findings
            },
            "boxes": {
                "reader_boxes": self.box_stats.raw, "readers": self.box_stats.readers,
                "fused": self.box_stats.fused, "clipped": self.box_stats.clipped,
                "dropped": self.box_stats.dropped, "unchecked": self.box_stats.unchecked,
            },
            "decoded": self.decoded,
            "reused": self.reused,
            "skipped": [vars(s) for s in self.skipped],
            "grouped_by": self.splits.grouped_by,
            "notes": self.notes,
        }

    def class_weights(self) -> list[str]:
        """Lines giving each finding's frequency in the training split and the positive weight
        ``train classifier`` will use by default (``pos_weight=inverse``: negatives / positives)."""
        from hybridcxr.classify.loop import pos_weight

        train = self.manifest[self.manifest["split"] == "train"]
        if train.empty or not self.findings:
            return []
        labels = train[list(self.findings)].to_numpy(dtype=float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a finding without positives: said on its line
            weights = pos_weight(labels, "inverse", self.findings)
        lines = [f"class frequency in train ({len(train)} images) and the positive weight train classifier uses "
                 "(pos_weight=inverse: negatives/positives):"]
        absent = []
        for c, f in enumerate(self.findings):
            known = labels[~np.isnan(labels[:, c]), c]
            pos = int((known > 0).sum())
            if not pos:
                absent.append(f)
                continue
            lines.append(f"  {f}: {pos / len(known):.1%} ({pos} of {len(known)}), weight {weights[c]:.2f}")
        if absent:  # one line, not one per finding: a 36-lesion vocabulary on a small set has dozens
            lines.append(f"  no positive image in train, so the classifier will not learn them ({len(absent)}): "
                         + ", ".join(absent))
        return lines

    def __str__(self) -> str:
        s = self.summary()
        lines = [
            f"Prepared {s['images']} images of {self.source} in {self.out} "
            f"({self.decoded} decoded, {self.reused} reused from an earlier run)",
            "images per split: " + ", ".join(f"{k} {v}" for k, v in s["images_per_split"].items())
            + f" (grouped by {self.splits.grouped_by})",
            "positives per finding (" + "/".join(s["images_per_split"]) + "):",
        ]
        lines += [f"  {f}: " + "/".join(str(v) for v in by.values()) for f, by in s["positives_per_finding"].items()]
        lines += self.class_weights()
        lines.append("boxes: " + self.box_stats.describe())
        lines += [f"note: {n}" for n in self.notes]
        if self.warnings:
            lines.append(f"{len(self.warnings)} warnings, e.g. {self.warnings[0]}")
        if self.skipped:
            lines.append(f"{len(self.skipped)} images skipped:")
            lines += [f"  {x.path}: {x.reason}" for x in self.skipped]
        return "\n".join(lines)


def prepare(tables: SourceTables, out: str | Path, options: PrepareOptions | None = None) -> PrepareResult:
    """Decode, split, fuse and write a source's images as a YOLO dataset plus manifest under ``out``.

    Splits are patient-grouped and multi-label stratified; a dataset's official test split is kept when
    ``options.keep_official_test`` (the rest is split into train/val); ``options.split_tables`` gives the
    splits instead (checked for shared patients before anything is decoded), or ``options.split_from``: those
    of another prepared folder of the same images. Images that fail to decode are
    skipped and listed, never fatal. Raises DatasetError when nothing at all could be prepared.
    """
    opts = options or PrepareOptions()
    out = Path(out)
    given = _given_splits(opts)
    out.mkdir(parents=True, exist_ok=True)
    _remove_leftover_temp_files(out)
    findings = tables.findings
    studies = tables.studies.copy()
    table_notes: list[str] = []
    if given is not None:
        from hybridcxr.data.split_tables import apply_table_splits

        studies, table_notes = apply_table_splits(studies, given)

    missing = studies["path"].isna()
    skipped = [Skipped(i, "", "image file not found under the dataset root") for i in studies.loc[missing, "image_id"]]
    studies = studies[~missing].reset_index(drop=True)
    if studies.empty:
        raise DatasetError(out, f"none of the {len(tables.studies)} images of {tables.name} was found on disk")

    studies = _split(studies, _strata(studies, findings, tables.boxes), opts, given is not None)
    records, decoded, reused, warn_texts = _decode_all(studies, out, opts, skipped)
    done = studies[studies["image_id"].isin(records)].reset_index(drop=True)
    if done.empty:
        raise DatasetError(out, f"no image of {tables.name} could be decoded; first problem: {skipped[0].reason}")
    done = _with_records(done, records)

    stats = BoxStats()
    sizes = done.set_index("image_id")[["width", "height"]]
    raw = tables.boxes[tables.boxes["image_id"].isin(sizes.index)]
    fused = fuse_readers(clip_boxes(raw, sizes, stats=stats), sizes, method=opts.fusion, iou_thr=opts.iou, stats=stats)

    _write_yolo(out, done, fused, findings)
    manifest_cols = ["image_id", "path", "image", "patient_id", "age_years", "sex", "view", "split",
                     *findings, "width", "height", "prepared_width", "prepared_height"]
    manifest = done[manifest_cols]
    layout = PreparedLayout(out)
    write_csv(layout.manifest, manifest)
    write_csv(layout.boxes, fused)
    write_csv(out / "skipped.csv", pd.DataFrame([vars(s) for s in skipped], columns=["image_id", "path", "reason"]))
    split_summary = summarize(done, findings)
    result = PrepareResult(out, tables.name, findings, manifest, fused, skipped, stats, split_summary,
                           decoded, reused, warn_texts, [*tables.notes, *table_notes, *split_summary.notes])
    write_json(layout.summary, result.summary())
    return result


def _given_splits(opts: PrepareOptions) -> dict[str, str] | None:
    """``{image id: split}`` of the user's split tables (refused when they leak, before any work) or of
    ``split_from``'s manifest; None when the splits are to be made here."""
    if opts.split_tables and opts.split_from:
        raise DatasetError(opts.split_from, "give --split-tables or --split-from, not both")
    from hybridcxr.data.split_tables import manifest_splits, table_splits

    if opts.split_tables:
        return table_splits(opts.split_tables, opts.patient_column)
    return manifest_splits(opts.split_from) if opts.split_from else None


def _remove_leftover_temp_files(out: Path) -> None:
    """Delete temporary files a killed run left behind (``.<name>.<random>.<ext>``, see files.atomic_path)."""
    layout = PreparedLayout(out)
    for folder in (out, out / "records", *(f for s in SPLITS for f in (layout.images(s), layout.labels(s)))):
        for leftover in folder.glob(".*.*"):
            if leftover.is_file():
                leftover.unlink()


BOXED = "_boxed"  # the stratification column of images with a box (see _strata); never written


def _strata(studies: pd.DataFrame, findings: tuple[str, ...], boxes: pd.DataFrame) -> tuple[str, ...]:
    """What the split is stratified by: the findings, plus "has a box" where boxes are not simply the positive
    findings (NIH: text-mined labels for all, boxes for about 1% of the images). Without it, the few boxed images
    can all fall in train, and validation has none to choose the classifier's gating rule or to stop the
    detector on. Adds the ``BOXED`` column to ``studies`` when it is used."""
    boxed = studies["image_id"].astype(str).isin(set(boxes["image_id"].astype(str))).astype(int)
    positive = (studies[list(findings)].fillna(0).to_numpy() > 0).any(axis=1).astype(int)
    if not boxed.any() or (boxed.to_numpy() == positive).all():
        return findings
    studies[BOXED] = boxed
    return (*findings, BOXED)


def _split(studies: pd.DataFrame, findings: tuple[str, ...], opts: PrepareOptions, given: bool = False) -> pd.DataFrame:
    """Assign patient-grouped splits, keeping the dataset's official test split when asked (or, ``given``, the
    splits of the user's tables: only the patients of a two-table train table are divided into train/val)."""
    studies = studies.copy()
    if given:
        studies, _ = assign_splits(studies, findings, fractions=tuple(opts.split), names=SPLITS, seed=opts.seed,
                                   keep_existing=True)
        check_leakage(studies)
        return studies
    official = studies["split"].astype(str)
    keep = opts.keep_official_test and (official == "test").any() and (official != "test").any()
    studies["split"] = np.where(keep & (official == "test"), "test", "")
    # kept test rows (and their patients' other images) stay; the rest go to train/val at the same ratio
    studies, _ = assign_splits(studies, findings, fractions=tuple(opts.split), names=SPLITS, seed=opts.seed,
                               keep_existing=bool(keep))
    check_leakage(studies)
    return studies


# --- decoding -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    image_id: str
    source: str
    dest: str
    record: str
    size: int
    bits: int
    allow_modality: bool


def _decode_all(
    studies: pd.DataFrame, out: Path, opts: PrepareOptions, skipped: list[Skipped]
) -> tuple[dict[str, dict], int, int, list[str]]:
    """Decode every image not finished by an earlier run; returns records by image_id and counts."""
    records: dict[str, dict] = {}
    jobs: list[_Job] = []
    layout = PreparedLayout(out)
    for row in studies.itertuples(index=False):
        image_id, split = str(row.image_id), str(row.split)
        dest = layout.images(split) / f"{image_id}.png"
        record_path = out / "records" / f"{image_id}.json"
        record = read_json_or_none(record_path)
        if record is not None and record.get("source") == str(row.path) and _settings(record) == (opts.size, opts.bits):
            old = out / record["image"]
            if old.exists():
                if old != dest:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(old, dest)
                    record["image"] = str(dest.relative_to(out))
                    write_json(record_path, record)
                records[image_id] = record
                continue
        jobs.append(_Job(image_id, str(row.path), str(dest), str(record_path), opts.size, opts.bits, opts.allow_modality))
    reused = len(records)
    warn_texts: list[str] = []
    for result in _run(jobs, opts):
        warn_texts += result.pop("warnings", [])
        if "error" in result:
            skipped.append(Skipped(result["image_id"], result["source"], result["error"]))
        else:
            records[result["image_id"]] = result
    return records, len(records) - reused, reused, warn_texts


def _settings(record: dict) -> tuple[int, int]:
    return int(record.get("size", -1)), int(record.get("bits", -1))


def _run(jobs: list[_Job], opts: PrepareOptions) -> Iterator[dict]:
    """Run decode jobs in ``opts.workers`` processes (0 = in this process) behind a progress bar."""
    if not jobs:
        return
    with progress_bar(len(jobs), "decoding", opts.progress) as advance:
        if opts.workers <= 0:
            _init_worker()
            for job in jobs:
                yield _decode_one(job)
                advance()
            return
        ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        with ctx.Pool(min(opts.workers, len(jobs)), initializer=_init_worker) as pool:
            for result in pool.imap_unordered(_decode_one, jobs, chunksize=2):
                yield result
                advance()


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core; OpenCV's own threads would fight over the same cores


def _decode_one(job: _Job) -> dict:
    """Decode, resize and write one image; returns its record, or ``{"error": ...}``. Runs in a worker."""
    import cv2

    from hybridcxr.io import read_radiograph

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            radiograph = read_radiograph(job.source, allow_modality=job.allow_modality)
            pixels = radiograph.pixels
            height, width = pixels.shape
            scale = min(1.0, job.size / max(height, width))
            if scale < 1.0:
                new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
                pixels = cv2.resize(pixels, new_size, interpolation=cv2.INTER_AREA)
            peak = 255 if job.bits == 8 else 65535
            image = np.round(np.clip(pixels, 0.0, 1.0) * peak).astype(np.uint8 if job.bits == 8 else np.uint16)
            with atomic_path(job.dest) as tmp:
                if not cv2.imwrite(str(tmp), image):
                    raise OSError(f"could not write {job.dest}")
            meta = radiograph.meta
            record = {
                "image_id": job.image_id, "source": job.source,
                "image": str(Path(job.dest).relative_to(Path(job.record).parent.parent)),
                "width": width, "height": height,
                "prepared_width": int(image.shape[1]), "prepared_height": int(image.shape[0]),
                "size": job.size, "bits": job.bits,
                "age_years": meta.age_years, "sex": meta.sex, "view": meta.view,
            }
            write_json(job.record, record)
        except (HybridCXRError, OSError, ValueError, RuntimeError) as err:
            message = err.problem if hasattr(err, "problem") else f"{type(err).__name__}: {err}"
            record = {"image_id": job.image_id, "source": job.source, "error": message}
    record["warnings"] = [str(w.message) for w in caught]
    return record


# --- writing ---------------------------------------------------------------------------------------------


def _with_records(done: pd.DataFrame, records: dict[str, dict]) -> pd.DataFrame:
    """Add sizes and prepared paths from the decode records; fill demographics the tables lacked."""
    rec = pd.DataFrame.from_records([records[i] for i in done["image_id"]])
    done = done.copy()
    for col in ("image", "width", "height", "prepared_width", "prepared_height"):
        done[col] = rec[col].to_numpy()
    for col in ("age_years", "sex", "view"):
        done[col] = done[col].where(done[col].notna(), rec[col].to_numpy())
    done["age_years"] = pd.to_numeric(done["age_years"], errors="coerce")
    return done


def _write_yolo(out: Path, done: pd.DataFrame, fused: pd.DataFrame, findings: tuple[str, ...]) -> None:
    """Write one YOLO label file per image (empty for negatives), data.yaml, and remove stale files."""
    index, layout = {f: i for i, f in enumerate(findings)}, PreparedLayout(out)
    by_image = dict(tuple(fused.groupby("image_id"))) if len(fused) else {}
    wanted: set[Path] = set()
    for row in done.itertuples(index=False):
        label = layout.labels(row.split) / f"{row.image_id}.txt"
        wanted |= {label, out / row.image}
        boxes = by_image.get(row.image_id)
        lines = [] if boxes is None else list(_yolo_lines(boxes, row.width, row.height, index))
        write_text(label, "".join(lines))
    for split in SPLITS:
        for stale in (*layout.images(split).glob("*.*"), *layout.labels(split).glob("*.*")):
            if stale not in wanted and stale.suffix in (".png", ".txt"):
                stale.unlink()
    for folder in ("images", "labels"):
        for cache in (out / folder).glob("*.cache"):
            cache.unlink()  # ultralytics' label cache would hide changed labels
    present = [s for s in SPLITS if (done["split"] == s).any()]
    data = {
        # no "path" key: ultralytics then resolves splits against this file's folder, so it can move
        **{s: f"images/{s}" for s in present},
        "nc": len(findings),
        "names": dict(enumerate(findings)),
    }
    if "val" not in present and "train" in present:
        data["val"] = "images/train"
    header = "# hybridcxr prepared dataset: YOLO layout, boxes fused across readers (see manifest.csv)\n"
    write_text(layout.data_yaml, header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def _yolo_lines(boxes: pd.DataFrame, width: float, height: float, index: dict[str, int]) -> Iterable[str]:
    for b in boxes.itertuples(index=False):
        xc, yc = (b.x_min + b.x_max) / 2 / width, (b.y_min + b.y_max) / 2 / height
        w, h = (b.x_max - b.x_min) / width, (b.y_max - b.y_min) / height
        yield f"{index[b.finding]} {xc:.6f} {yc:.6f} {w:.6f} {h:.6f}\n"
