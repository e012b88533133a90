"""Any chest X-ray box set in COCO format (TBX11K, the COVID-19 lung boxes, exports of labelling tools).

Findings: the file's own ``categories`` names, in category-id order, so ``findings`` comes from the data
(TBX11K: ActiveTuberculosis, ObsoletePulmonaryTuberculosis, PulmonaryTuberculosis; COVID-19 lung boxes:
Right Lung, Left Lung). An image's finding column is 1 where it has a box of that category.

Layout::

    <any name>.json     {"images": [{id, file_name, width, height}], "annotations": [{image_id,
                         category_id, bbox: [x, y, w, h]}], "categories": [{id, name}]}
    <any folders>/<file_name>    found relative to the root, its ``images/`` or ``imgs/``, or by name

``bbox`` is COCO's ``[x, y, w, h]`` in pixels of the image as annotated; reader ``"coco"``. The Study table's
``width``/``height`` are each file's size on disk, and where that differs from the JSON's ``width``/
``height`` (the COVID-19 set's ``ciaa199.pdf-001-b/c.png`` were replaced by smaller crops after boxing) the
boxes are rescaled per axis to the file, with a note naming the images. Per-image ``metadata`` dicts (the
COVID-19 set's ``patientid``, ``sex``, ``age``, ``view``) fill demographics, and so does an optional
``labels=`` CSV with a ``filename`` column and any of ``patientid``, ``sex``, ``age``, ``view`` (the COVID-19
set's ``metadata.csv``). Without patient ids images are grouped by image. ``split`` is the one the JSON's
file name names (``TBX11K_train.json`` -> ``"train"``), else empty.

Sources: TBX11K -- Liu Y. et al., "Rethinking Computer-aided Tuberculosis Diagnosis", CVPR 2020;
COVID-19 lung boxes -- General Blockchain, Inc. (CC BY 4.0) on Cohen J.P. et al., "COVID-19 Image Data
Collection", arXiv:2006.11988. COCO format: Lin T.-Y. et al., ECCV 2014. See datasets/coco.md.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from hybridcxr.data.boxes import LabelRule
from hybridcxr.data.schema import SourceTables
from hybridcxr.data.sources._common import (
    NO_PATIENT_IDS,
    PathLike,
    Paths,
    as_paths,
    boxes_frame,
    check_root,
    find_images,
    finish,
    fit_to_files,
    parse_ages,
    parse_sexes,
    parse_views,
    read_csv,
    read_json,
    resolve_given,
    split_of,
    warn_unknown,
)
from hybridcxr.errors import DatasetError
from hybridcxr.findings import canonical

NAME = "coco"
READER = "coco"


def load(
    root: PathLike,
    *,
    labels: Paths | None = None,
    boxes: Paths | None = None,
    label_rule: LabelRule = "any",
    read_sizes: bool = True,
    workers: int = 8,
    missing: str = "keep",
    source_name: str = NAME,
) -> SourceTables:
    """Read COCO box file(s) and their images under ``root`` into Study and Box tables.

    Args:
        root: folder holding the images (searched recursively) and, by default, the one JSON file.
        labels: optional demographics CSV (``filename`` + ``patientid``/``sex``/``age``/``view``).
        boxes: COCO JSON file(s); by default the only ``*.json`` under ``root`` (error if several).
        label_rule: accepted for a uniform interface; COCO files hold one set of boxes.
        read_sizes: read each file's header size and rescale boxes where it differs from the JSON's.
        workers: threads reading sizes.
        missing: "keep" images not on disk (``path`` None) or "drop" them.
        source_name: the source name recorded in the tables (e.g. "tbx11k").
    """
    base = check_root(root, source_name)
    notes: list[str] = []
    paths = [resolve_given(base, p) for p in as_paths(boxes)] or [_default_json(base)]
    parts = [_read_coco(p) for p in paths]
    findings = parts[0][2]
    for path, (_, _, other) in zip(paths[1:], parts[1:]):
        if other != findings:
            raise DatasetError(path, f"categories {list(other)} differ from {paths[0].name}'s {list(findings)}")
    studies = pd.concat([p[0] for p in parts], ignore_index=True)
    box_table = boxes_frame(pd.concat([p[1] for p in parts], ignore_index=True))
    dup = studies["image_id"].duplicated()
    if dup.any():
        notes.append(f"{int(dup.sum())} images listed twice: first kept")
        studies = studies[~dup].reset_index(drop=True)

    present = box_table.drop_duplicates(["image_id", "finding"]).assign(v=1)
    marks = present.pivot(index="image_id", columns="finding", values="v") if len(present) else pd.DataFrame()
    for finding in findings:
        studies[finding] = studies["image_id"].map(marks[finding]).fillna(0).astype(int) if finding in marks else 0

    index = find_images(base)
    found = []
    for file_name in studies["file_name"]:
        path = None
        for folder in (base, base / "images", base / "imgs"):
            if (folder / file_name).is_file():
                path = folder / file_name
                break
        path = path or index.find_name(file_name)
        found.append(str(path.resolve()) if path is not None else None)
    studies["path"] = found
    for table in as_paths(labels):
        studies = _demographics(studies, resolve_given(base, table), notes)
    no_pid = studies["patient_id"].isna()
    if no_pid.all():
        notes.append(NO_PATIENT_IDS)
    elif no_pid.any():
        notes.append(f"{int(no_pid.sum())} images without a patient id: grouped by image")
    studies["patient_id"] = studies["patient_id"].fillna(studies["image_id"])
    studies, box_table = fit_to_files(studies, box_table, notes, read_sizes=read_sizes, workers=workers)
    return finish(source_name, findings, studies.drop(columns=["file_name"]), box_table, notes,
                  missing=missing, root=base)


def _default_json(root: Path) -> Path:
    """The one COCO JSON under ``root`` (any depth)."""
    candidates = sorted(p for p in root.rglob("*.json") if not any(s.startswith(".") for s in p.parts))
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise DatasetError(root, "no COCO .json file under the root; pass boxes=")
    names = [str(p.relative_to(root)) for p in candidates[:5]]
    raise DatasetError(root, f"{len(candidates)} .json files under the root ({names}); pass boxes= to pick one")


def _read_coco(path: Path) -> tuple[pd.DataFrame, pd.DataFrame, tuple[str, ...]]:
    """Images (``image_id, file_name, split, width, height`` + metadata demographics), Box rows and the
    category names (by id) of one COCO file."""
    data = read_json(path, what="COCO annotation file")
    if not isinstance(data, dict) or not all(k in data for k in ("images", "annotations", "categories")):
        raise DatasetError(path, "not a COCO file: needs 'images', 'annotations' and 'categories'")
    if not data["images"]:
        raise DatasetError(path, "COCO file lists no images")
    if not data["categories"]:
        raise DatasetError(path, "COCO file lists no categories")
    categories = {int(c["id"]): canonical(str(c["name"])) for c in sorted(data["categories"], key=lambda c: c["id"])}
    findings = tuple(dict.fromkeys(categories.values()))
    split = split_of(path)
    rows, ids = [], {}
    for image in data["images"]:
        if "file_name" not in image or "id" not in image:
            raise DatasetError(path, f"an image entry lacks file_name or id: {sorted(image)[:6]}")
        file_name = str(image["file_name"])
        image_id = Path(file_name).stem
        meta: dict[str, Any] = image.get("metadata") or {}
        rows.append({"image_id": image_id, "file_name": file_name, "split": split,
                     "width": image.get("width"), "height": image.get("height"),
                     "patient_id": _text(meta.get("patientid") or meta.get("patient_id")),
                     "sex": meta.get("sex"), "age_years": meta.get("age"), "view": meta.get("view")})
        ids[image["id"]] = image_id
    studies = pd.DataFrame(rows)
    studies["sex"] = parse_sexes(studies["sex"])
    studies["view"] = parse_views(studies["view"])
    studies["age_years"] = parse_ages(studies["age_years"], path)
    boxes, unknown, orphans = [], Counter(), 0
    for ann in data["annotations"]:
        category = categories.get(int(ann.get("category_id", -1)))
        if category is None:
            unknown[f"category_id {ann.get('category_id')}"] += 1
            continue
        if ann.get("image_id") not in ids:
            orphans += 1
            continue
        bbox = ann.get("bbox") or []
        if len(bbox) != 4:
            raise DatasetError(path, f"annotation {ann.get('id')} has bbox {bbox!r}, not [x, y, w, h]")
        x, y, w, h = (float(v) for v in bbox)
        boxes.append({"image_id": ids[ann["image_id"]], "finding": category, "reader": READER,
                      "x_min": x, "y_min": y, "x_max": x + w, "y_max": y + h})
    warn_unknown(path, unknown, [f"category_id {k}" for k in categories])
    if orphans:
        raise DatasetError(path, f"{orphans} annotations refer to image ids not in 'images'")
    return studies, boxes_frame(boxes), findings


def _text(value: Any) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None


def _demographics(studies: pd.DataFrame, path: Path, notes: list[str]) -> pd.DataFrame:
    """Fill patient id, sex, age and view from a CSV keyed by file name (where the JSON had none)."""
    table = read_csv(path, what="demographics table")
    key = next((c for c in ("filename", "file_name", "image_id") if c in table.columns), None)
    if key is None:
        raise DatasetError(path, f"demographics table needs a filename column; it has {list(table.columns)[:10]}")
    table = table.drop_duplicates(key).set_index(table[key].astype(str).map(lambda n: Path(n).stem))
    ids = studies["image_id"]
    columns = {"patient_id": ("patientid", "patient_id"), "sex": ("sex",), "age_years": ("age", "age_years"),
               "view": ("view",)}
    out = studies.copy()
    for col, names in columns.items():
        source = next((n for n in names if n in table.columns), None)
        if source is None:
            continue
        values = ids.map(table[source])
        if col == "sex":
            values = parse_sexes(values)
        elif col == "view":
            values = parse_views(values)
        elif col == "age_years":
            values = parse_ages(values, path)
        else:
            values = values.map(_text)
        out[col] = out[col].where(out[col].notna(), values)
    notes.append(f"demographics of {int(ids.isin(table.index).sum())} images from {path.name}")
    return out
