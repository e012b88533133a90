"""Helpers shared by the dataset adapters: locating tables and images on disk, reading them with errors that
name the file, and turning rows into the Study/Box contract.

Nothing here knows a particular dataset; the adapters hold the layouts.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import pandas as pd

from hybridcxr.data.schema import BOX_COLUMNS, SourceTables, empty_boxes, make_studies
from hybridcxr.errors import DataWarning, DatasetError, InputError
from hybridcxr.findings import canonical

PathLike = Union[str, "os.PathLike[str]"]
#: One table path or several (e.g. the train and test tables of one dataset).
Paths = Union[PathLike, Sequence[PathLike]]
#: ``progress(done, total)``, called while headers are read; the CLI wires it to a progress bar.
Progress = Callable[[int, int], None]

IMAGE_EXTENSIONS: tuple[str, ...] = (".dicom", ".dcm", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_SKIP_DIRS = {"__MACOSX"}
NO_PATIENT_IDS = "no patient ids: grouped by image"


# --------------------------------------------------------------------------------------------- paths ---


def as_paths(value: Paths | None) -> list[Path]:
    """One path or a sequence of paths as a list of Paths (``None`` gives an empty list)."""
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [Path(value)]
    return [Path(v) for v in value]


def check_root(root: PathLike, source: str) -> Path:
    """The dataset root as an absolute Path; DatasetError unless it is a folder."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetError(path, f"{source} root folder not found")
    return path.resolve()


def resolve_given(root: Path, given: PathLike) -> Path:
    """A table path given by the user: as given where it exists, else relative to the dataset root."""
    path = Path(given).expanduser()
    if not path.exists() and not path.is_absolute() and (root / path).exists():
        path = root / path
    return path


def split_of(path: PathLike) -> str:
    """The dataset split a table's file name names (``annotations_train.csv`` -> ``"train"``), else ``""``."""
    words = set(re.split(r"[^a-z]+", Path(path).name.lower()))
    for split, names in (("train", {"train", "training", "trainval"}), ("val", {"val", "valid", "validation"}),
                         ("test", {"test", "testing"})):
        if words & names:
            return split
    return ""


# -------------------------------------------------------------------------------------------- tables ---


def read_csv(path: PathLike, required: Sequence[str] = (), *, what: str = "table", **kwargs: Any) -> pd.DataFrame:
    """Read a CSV (plain or compressed) with column names stripped; DatasetError naming the file when it is
    missing, empty, unreadable or lacks one of the ``required`` columns."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, f"{what} not found")
    try:
        table = pd.read_csv(path, **kwargs)
    except pd.errors.EmptyDataError:
        raise DatasetError(path, f"{what} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError) as err:
        raise DatasetError(path, f"{what} cannot be read as CSV: {err}") from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise DatasetError(path, f"{what} lacks columns {missing}; it has {list(table.columns)[:12]}")
    if table.empty:
        raise DatasetError(path, f"{what} is empty (a header but no rows)")
    return table


def read_json(path: PathLike, *, what: str = "annotation file") -> Any:
    """Read a JSON file; DatasetError naming the file when it is missing, empty or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, f"{what} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(path, f"{what} cannot be read: {err}") from None
    if not text.strip():
        raise DatasetError(path, f"{what} is empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DatasetError(path, f"{what} is not valid JSON: {err}") from None


def warn_unknown(path: PathLike, counts: Mapping[str, int], known: Iterable[str] = ()) -> None:
    """One DataWarning naming the file and each unknown label with its count (the rows are dropped)."""
    if not counts:
        return
    listed = ", ".join(f"{name!r} x{n}" for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    hint = f"; known labels are {sorted(known)}" if known else ""
    warnings.warn(DataWarning(f"{path}: unknown labels dropped: {listed}{hint}"), stacklevel=3)


def count_unknown(labels: pd.Series, known: Iterable[str]) -> Counter[str]:
    """Counts of the values of ``labels`` that are not in ``known`` (NaN ignored)."""
    values = labels.dropna().astype(str)
    return Counter(values[~values.isin(set(known))])


def parse_ages(values: pd.Series, source: PathLike) -> pd.Series:
    """Ages in years from a table column (numbers, ``81``, ``060Y``, ``003M``); bad or implausible ones become
    NaN with one DataWarning naming the file and how many, not one warning per row."""
    from hybridcxr.io.demographics import MAX_AGE_YEARS, parse_age  # late: io imports pydicom

    numeric = pd.to_numeric(values, errors="coerce")
    text = values.where(numeric.isna() & values.notna())
    if text.notna().any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed = text.dropna().map(lambda v: parse_age(v))
        numeric = numeric.astype(float)
        numeric.loc[parsed.index] = parsed.astype(float)
    numeric = numeric.astype(float)
    bad_mask = (numeric < 0) | (numeric > MAX_AGE_YEARS) | (values.notna() & numeric.isna())
    bad_mask &= values.notna() & (values.astype(str).str.strip() != "")
    if bad_mask.any():
        examples = sorted({str(v) for v in values[bad_mask]})[:5]
        warnings.warn(DataWarning(
            f"{source}: {int(bad_mask.sum())} ages are not plausible ages (e.g. {examples}); set to unknown"),
            stacklevel=3)
        numeric = numeric.where(~bad_mask)
    return numeric


def parse_sexes(values: pd.Series) -> pd.Series:
    """``"M"``/``"F"``/None from M/F/male/female in any case."""
    mapping = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F"}
    return values.map(lambda v: mapping.get(str(v).strip().upper()) if isinstance(v, str) else None)


def parse_views(values: pd.Series) -> pd.Series:
    """View positions upper-cased and stripped (``"PA"``, ``"AP"``), None where empty."""
    return values.map(lambda v: (str(v).strip().upper() or None) if isinstance(v, str) else None)


# ------------------------------------------------------------------------------------------- images ---


@dataclass
class ImageIndex:
    """Image files under a root, by file stem (the image id of NIH, VinDr and most datasets)."""

    root: Path
    by_stem: dict[str, list[Path]] = field(default_factory=dict)

    def find(self, image_id: str, prefer: str = "") -> Path | None:
        """The file of an image id; among several copies the one whose path contains ``prefer``, else the
        first in path order."""
        paths = self.by_stem.get(image_id)
        if not paths:
            return None
        if prefer and len(paths) > 1:
            for path in paths:
                if prefer in path.as_posix():
                    return path
        return paths[0]

    def find_name(self, file_name: str) -> Path | None:
        """The file of a relative file name (``tb/tb0005.png``): the copy whose path ends with it, else any
        file with that stem and extension."""
        name = Path(file_name)
        paths = self.by_stem.get(name.stem, [])
        tail = name.as_posix().lstrip("./")
        for path in paths:
            if path.as_posix().endswith("/" + tail):
                return path
        for path in paths:
            if path.name == name.name:
                return path
        return None

    @property
    def duplicates(self) -> int:
        """How many stems have more than one file."""
        return sum(1 for paths in self.by_stem.values() if len(paths) > 1)

    def __len__(self) -> int:
        return sum(len(paths) for paths in self.by_stem.values())


def find_images(root: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> ImageIndex:
    """Index every image file under ``root`` recursively (hidden folders and ``__MACOSX`` skipped), so a
    dataset's own sub-folders (``images_001/images/``) need no configuration."""
    exts = {e.lower() for e in extensions}
    index = ImageIndex(root=root)
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIP_DIRS)
        for name in sorted(files):
            if name.startswith("."):
                continue
            stem, ext = os.path.splitext(name)
            if ext.lower() in exts:
                index.by_stem.setdefault(stem, []).append(Path(folder, name))
    return index


def image_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` of an image file from its header only (no pixel decoding); None if unreadable."""
    try:
        if path.suffix.lower() in (".dcm", ".dicom"):
            from hybridcxr.io.dicom import read_header

            ds = read_header(path, ["Rows", "Columns"])
            return int(ds.Columns), int(ds.Rows)
        from PIL import Image

        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except Exception:  # noqa: BLE001 - any unreadable file simply has no known size
        return None


def image_sizes(paths: Sequence[Path | None], workers: int = 8) -> list[tuple[int, int] | None]:
    """Header sizes of many files (None where a path is None or unreadable), read on a thread pool."""
    todo = [(i, p) for i, p in enumerate(paths) if p is not None]
    out: list[tuple[int, int] | None] = [None] * len(paths)
    if not todo:
        return out
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for (i, _), size in zip(todo, pool.map(lambda ip: image_size(ip[1]), todo)):
            out[i] = size
    return out


_HEADER_COLUMNS = ("patient_id", "age_years", "sex", "view", "width", "height")


def _read_header(path: Path) -> dict[str, Any]:
    """Demographics (as :func:`hybridcxr.io.read_metadata` gives them) plus PatientID and Rows/Columns of one
    DICOM, from one read of its header."""
    from hybridcxr.io.dicom import dicom_meta, header_text, read_header

    ds = read_header(path)
    meta = dicom_meta(ds, path)
    row: dict[str, Any] = {"age_years": meta.age_years, "sex": meta.sex, "view": meta.view}
    row["patient_id"] = header_text(ds, "PatientID")
    row["width"] = int(ds.Columns) if "Columns" in ds else np.nan
    row["height"] = int(ds.Rows) if "Rows" in ds else np.nan
    return row


def read_dicom_headers(
    paths: Sequence[Path | None], *, workers: int = 8, progress: Progress | None = None
) -> tuple[pd.DataFrame, int]:
    """Header facts of many DICOM files without their pixels, on a thread pool (15,000 VinDr headers take
    well under a minute). Returns one row per path (NaN/None where the path is None or unreadable) and the
    count of unreadable files."""
    rows: list[dict[str, Any]] = [dict.fromkeys(_HEADER_COLUMNS) for _ in paths]
    todo = [(i, p) for i, p in enumerate(paths) if p is not None]
    failed = 0

    def one(item: tuple[int, Path]) -> dict[str, Any] | None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return _read_header(item[1])
        except (InputError, OSError, ValueError, AttributeError, KeyError, TypeError):
            return None
        except Exception as err:  # pydicom raises its own InvalidDicomError and friends
            if type(err).__module__.startswith("pydicom"):
                return None
            raise

    done = 0
    if todo:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for (i, _), row in zip(todo, pool.map(one, todo)):
                if row is None:
                    failed += 1
                else:
                    rows[i] = row
                done += 1
                if progress is not None:
                    progress(done, len(todo))
    table = pd.DataFrame(rows, columns=list(_HEADER_COLUMNS))
    return table, failed


# ------------------------------------------------------------------------------------------- output ---


def boxes_frame(rows: pd.DataFrame | Sequence[Mapping[str, Any]] | None) -> pd.DataFrame:
    """A Box table from rows with at least the box columns, float coordinates, in contract order."""
    if rows is None or len(rows) == 0:
        return empty_boxes()
    table = pd.DataFrame(rows) if not isinstance(rows, pd.DataFrame) else rows.copy()
    for col in ("x_min", "y_min", "x_max", "y_max"):
        table[col] = pd.to_numeric(table[col], errors="coerce").astype(float)
    for col in ("image_id", "finding", "reader"):
        table[col] = table[col].astype(str)
    extra = [c for c in table.columns if c not in BOX_COLUMNS]
    return table[[*BOX_COLUMNS, *extra]].reset_index(drop=True)


def rescale_boxes(boxes: pd.DataFrame, scale: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Multiply box coordinates by per-image factors (``scale`` indexed by image_id with columns ``sx, sy``);
    returns the boxes and how many images were rescaled (factor not 1)."""
    if boxes.empty or scale.empty:
        return boxes, 0
    changed = scale[(~np.isclose(scale["sx"], 1.0)) | (~np.isclose(scale["sy"], 1.0))]
    if changed.empty:
        return boxes, 0
    out = boxes.copy()
    sx = out["image_id"].map(changed["sx"]).fillna(1.0)
    sy = out["image_id"].map(changed["sy"]).fillna(1.0)
    out["x_min"] *= sx
    out["x_max"] *= sx
    out["y_min"] *= sy
    out["y_max"] *= sy
    return out, int(out.loc[(sx != 1.0) | (sy != 1.0), "image_id"].nunique())


def finish(
    name: str,
    findings: Sequence[str],
    studies: pd.DataFrame,
    boxes: pd.DataFrame | None,
    notes: list[str],
    *,
    missing: str = "keep",
    root: Path | None = None,
) -> SourceTables:
    """Assemble the adapter's output: images missing on disk kept (``path`` None) or dropped per ``missing``
    with a note counting them, boxes of images not in the study table dropped with a note, contract order."""
    if missing not in ("keep", "drop"):
        raise ValueError(f"missing must be 'keep' or 'drop', not {missing!r}")
    studies = studies.copy()
    studies["image_id"] = studies["image_id"].astype(str)
    dup = studies["image_id"].duplicated()
    if dup.any():
        notes.append(f"{int(dup.sum())} duplicate image rows ignored (first kept)")
        studies = studies[~dup]
    absent = studies["path"].isna()
    if absent.any():
        n, total = int(absent.sum()), len(studies)
        if missing == "drop":
            studies = studies[~absent]
            notes.append(f"{n} of {total} images in the tables are not on disk: dropped")
        else:
            notes.append(f"{n} of {total} images in the tables are not on disk: kept with path None")
    if studies.empty:
        where = root if root is not None else name
        raise DatasetError(where, f"none of the {len(absent)} images in the {name} tables was found under it"
                           if missing == "drop" and absent.any() else f"no images in the {name} tables")
    for col in ("path", "sex", "view"):
        if col in studies:
            studies[col] = studies[col].astype(object).where(studies[col].notna(), None)
    box_table = boxes_frame(boxes)
    if not box_table.empty:
        known = box_table["image_id"].isin(set(studies["image_id"]))
        if not known.all():
            notes.append(f"{int((~known).sum())} boxes of images not in the study table dropped")
            box_table = box_table[known].reset_index(drop=True)
    return SourceTables(name=name, findings=tuple(findings), studies=make_studies(studies, findings),
                        boxes=box_table, notes=notes)



# ------------------------------------------------------------------------ per-reader label tables ---


def reader_column(table: pd.DataFrame) -> str | None:
    """The reader column of a VinDr table (``rad_id``; VinDr-PCXR writes ``rad_ID``), or None."""
    for col in table.columns:
        if col.lower() in ("rad_id", "reader", "reader_id"):
            return col
    return None


def wide_reader_labels(
    table: pd.DataFrame,
    path: PathLike,
    *,
    used: Sequence[str],
    known: Iterable[str],
    renames: Mapping[str, str] | None = None,
    default_reader: str = "reader",
) -> pd.DataFrame:
    """Positive labels (``image_id, reader, finding``) of a wide 0/1 table with one row per image and reader
    (VinDr's ``image_labels_*.csv``). Only the ``used`` columns become labels; columns neither used nor
    ``known`` are warned about once and ignored. Every row also yields a ``""`` finding so that readers who
    marked nothing are still counted as readers of the image."""
    reader = reader_column(table)
    renames = dict(renames or {})
    table = table.rename(columns={c: renames.get(c, c) for c in table.columns})
    table = table.rename(columns={c: canonical(c) for c in table.columns if c not in ("image_id", reader)})
    label_cols = [c for c in table.columns if c not in ("image_id", reader)]
    known_set = set(known) | set(used)
    unknown = [c for c in label_cols if c not in known_set and not c.lower().startswith("unnamed")]
    if unknown:
        counts = {c: int((pd.to_numeric(table[c], errors="coerce").fillna(0) > 0).sum()) for c in unknown}
        warn_unknown(path, counts, known_set)
    keep = [c for c in used if c in table.columns]
    ids = table["image_id"].astype(str).str.strip()
    readers = table[reader].astype(str).str.strip() if reader else pd.Series(default_reader, index=table.index)
    values = table[keep].apply(pd.to_numeric, errors="coerce").fillna(0) > 0
    base = pd.DataFrame({"image_id": ids, "reader": readers})
    parts = [base.assign(finding="")]
    for col in keep:
        hit = values[col]
        if hit.any():
            parts.append(base[hit].assign(finding=col))
    return pd.concat(parts, ignore_index=True)


def attach_images(
    studies: pd.DataFrame,
    root: Path,
    notes: list[str],
    *,
    read_headers: bool = True,
    workers: int = 8,
    progress: Progress | None = None,
    sizes: PathLike | None = None,
) -> pd.DataFrame:
    """Fill ``path`` (found recursively under ``root``, preferring a copy under the study's split folder)
    and, from DICOM headers where ``read_headers``, ``patient_id``, ``age_years``, ``sex``, ``view``,
    ``width`` and ``height``; a ``sizes`` table (``image_id, width, height``) fills sizes without pixels."""
    out = studies.copy()
    index = find_images(root)
    splits = out["split"] if "split" in out else pd.Series("", index=out.index)
    out["path"] = [
        (lambda p: str(p.resolve()) if p is not None else None)(index.find(i, prefer=f"/{s}/" if s else ""))
        for i, s in zip(out["image_id"], splits)
    ]
    for col in _HEADER_COLUMNS:
        if col not in out:
            out[col] = np.nan if col in ("age_years", "width", "height") else None
    dicom = [Path(p) if isinstance(p, str) and Path(p).suffix.lower() in (".dcm", ".dicom") else None
             for p in out["path"]]
    n_dicom = sum(p is not None for p in dicom)
    if read_headers and n_dicom:
        headers, failed = read_dicom_headers(dicom, workers=workers, progress=progress)
        headers.index = out.index
        for col in _HEADER_COLUMNS:
            out[col] = headers[col].where(headers[col].notna(), out[col])
        if failed:
            notes.append(f"{failed} of {n_dicom} DICOM headers could not be read: their demographics are unknown")
    elif n_dicom:
        notes.append("DICOM headers not read (read_headers=False): age, sex, view and size unknown")
    if sizes is not None:
        size_path = resolve_given(root, sizes)
        table = read_csv(size_path, ["image_id", "width", "height"], what="image size table")
        table = table.drop_duplicates("image_id").set_index(table["image_id"].astype(str).str.strip())
        ids = out["image_id"].astype(str)
        for col in ("width", "height"):
            given = pd.to_numeric(ids.map(table[col]), errors="coerce")
            out[col] = pd.to_numeric(out[col], errors="coerce").fillna(pd.Series(given.values, index=out.index))
        n = int(ids.isin(table.index).sum())
        notes.append(f"image sizes of {n} images from {size_path.name}")
    no_pid = out["patient_id"].isna()
    if no_pid.all():
        notes.append(NO_PATIENT_IDS)
    elif no_pid.any():
        notes.append(f"{int(no_pid.sum())} images without a PatientID header: grouped by image")
    out["patient_id"] = out["patient_id"].where(~no_pid, out["image_id"])
    return out


def fit_to_files(
    studies: pd.DataFrame,
    boxes: pd.DataFrame,
    notes: list[str],
    *,
    read_sizes: bool = True,
    workers: int = 8,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Make ``width``/``height`` the size of each file on disk and rescale its boxes to it.

    On entry ``width``/``height`` are the frame the boxes were drawn in (NIH's 1024x1024, a COCO file's
    ``images[].width``). Where a file's header size differs (a downscaled copy, a re-exported figure), the
    boxes are scaled by file/frame per axis and a note names how many images (and a few ids) changed.
    ``read_sizes=False`` trusts the tables.
    """
    if not read_sizes:
        return studies, boxes
    studies = studies.copy()
    paths = [Path(p) if isinstance(p, str) else None for p in studies["path"]]
    sizes = image_sizes(paths, workers=workers)
    disk_w = pd.Series([s[0] if s else np.nan for s in sizes], index=studies.index, dtype=float)
    disk_h = pd.Series([s[1] if s else np.nan for s in sizes], index=studies.index, dtype=float)
    frame_w = pd.to_numeric(studies["width"], errors="coerce")
    frame_h = pd.to_numeric(studies["height"], errors="coerce")
    scale = pd.DataFrame({"sx": disk_w / frame_w, "sy": disk_h / frame_h})
    scale.index = studies["image_id"].astype(str).values
    scale = scale.dropna()
    boxes, n = rescale_boxes(boxes, scale)
    differ = scale[(~np.isclose(scale["sx"], 1.0)) | (~np.isclose(scale["sy"], 1.0))]
    if len(differ):
        ids = ", ".join(differ.index[:3]) + (", ..." if len(differ) > 3 else "")
        notes.append(f"{len(differ)} images differ on disk from the size their boxes were drawn on "
                     f"({n} of them with boxes): width/height are the file's, boxes rescaled to it ({ids})")
    studies["width"] = disk_w.fillna(frame_w)
    studies["height"] = disk_h.fillna(frame_h)
    unreadable = int(sum(1 for p, s in zip(paths, sizes) if p is not None and s is None))
    if unreadable:
        notes.append(f"{unreadable} image files whose size could not be read: table sizes kept")
    return studies, boxes
