"""Dataset adapters: one per public chest X-ray dataset, each reading the dataset's official layout into the
same two tables (:class:`~hybridcxr.data.schema.SourceTables`: a Study table and a Box table).

Every adapter is ``load(root, *, labels=None, boxes=None, label_rule="any", **options)``; ``labels`` and
``boxes`` override the layout's table paths (the CLI's ``--labels``/``--boxes``). How to obtain each dataset
and the folder layout it expects are in ``datasets/*.md``.

>>> from hybridcxr.data.sources import load_source
>>> tables = load_source("nih", "/data/nih", extra_boxes=["/data/chestx-det10/train.json"])  # doctest: +SKIP
>>> sorted(SOURCES)
['chestx-det10', 'coco', 'nih', 'pneumonia', 'vindr-cxr', 'vindr-pcxr']
"""

from __future__ import annotations

from typing import Any, Callable

from hybridcxr.data.boxes import LabelRule
from hybridcxr.data.schema import SourceTables
from hybridcxr.data.sources import chestx_det10, coco, nih, pneumonia, vindr_cxr, vindr_pcxr
from hybridcxr.data.sources._common import PathLike, Paths
from hybridcxr.errors import DatasetError

Loader = Callable[..., SourceTables]

#: Dataset name -> adapter. Names are the CLI's ``--source`` values.
SOURCES: dict[str, Loader] = {
    vindr_cxr.NAME: vindr_cxr.load,
    vindr_pcxr.NAME: vindr_pcxr.load,
    nih.NAME: nih.load,
    chestx_det10.NAME: chestx_det10.load,
    pneumonia.NAME: pneumonia.load,
    coco.NAME: coco.load,
}


def load_source(
    name: str,
    root: PathLike,
    *,
    labels: Paths | None = None,
    boxes: Paths | None = None,
    label_rule: LabelRule = "any",
    **options: Any,
) -> SourceTables:
    """Read dataset ``name`` under ``root`` with its adapter; DatasetError for an unknown name.

    Args:
        name: one of :data:`SOURCES` (``vindr-cxr``, ``vindr-pcxr``, ``nih``, ``chestx-det10``,
            ``pneumonia``, ``coco``).
        root: the dataset folder.
        labels: label table path(s) overriding the layout's default.
        boxes: box table path(s) overriding the layout's default.
        label_rule: "any" reader or "majority" of readers marks a finding (multi-reader datasets).
        **options: adapter-specific keywords (e.g. ``read_headers=False`` for VinDr, ``extra_boxes=`` for NIH).
    """
    key = name.strip().lower()
    if key not in SOURCES:
        raise DatasetError(name, f"unknown dataset source; known sources are {sorted(SOURCES)}")
    if label_rule not in ("any", "majority"):
        raise ValueError(f"label_rule must be 'any' or 'majority', not {label_rule!r}")
    return SOURCES[key](root, labels=labels, boxes=boxes, label_rule=label_rule, **options)


__all__ = ["SOURCES", "Loader", "load_source"]
