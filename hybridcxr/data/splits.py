"""Patient-grouped, multi-label stratified splits of a Study table, and the checks that keep them honest.

Two rules: a patient never sits in two splits (their other images would leak into evaluation and inflate
AUROC), and every finding that can appear in every split does (else its AUROC is undefined on val/test).

Splits are made over *patients*, not images: each patient's labels are aggregated (positive if any of
their images is) and the patients are split with iterative stratification (Sechidis et al. 2011, via
``iterative-stratification``), then every image follows its patient. Besides the findings, the
stratifier sees two helper labels, "no positive finding" and the patient's image-count band (2-3, 4-7,
8-15, ... images), so that normal patients and many-image patients spread in proportion too and the
fraction of *images* per split stays close to the requested one. Iterative stratification alone leaves a
finding with fewer than ~1/fraction positive patients out of the small splits; a repair step then moves
one positive patient into each split that lacks the finding (swapping back a patient with no findings
to keep sizes), whenever another split can spare one.

Rows without a patient id are grouped by their own image id; when no row has a patient id distinct from
its image id the split is by image, and the summary says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from hybridcxr.errors import DatasetError, HybridCXRError

__all__ = [
    "LeakageError",
    "SplitSummary",
    "assign_splits",
    "check_leakage",
    "kfold",
    "summarize",
]

_TABLE = "study table"
_MAX_LISTED = 20
_CANONICAL_ORDER = ("train", "val", "valid", "validation", "dev", "test")
_UNASSIGNED = "(unassigned)"


class LeakageError(HybridCXRError):
    """Some patients have images in more than one split.

    ``patients`` maps each leaking patient id to the splits it sits in; the message lists at most
    20 ids, then "and N more".
    """

    def __init__(self, patients: dict[str, tuple[str, ...]], column: str = "split") -> None:
        self.patients = dict(patients)
        self.column = column
        listed = [f"{pid} ({', '.join(splits)})" for pid, splits in list(self.patients.items())[:_MAX_LISTED]]
        more = len(self.patients) - len(listed)
        tail = f" and {more} more" if more > 0 else ""
        n = len(self.patients)
        super().__init__(
            f"{n} patient{'s' if n != 1 else ''} sit{'' if n != 1 else 's'} in more than one "
            f"{column!r}: {'; '.join(listed)}{tail}"
        )


@dataclass
class SplitSummary:
    """How a Study table is split: images, patients and positive images per finding in each split."""

    grouped_by: Literal["patient", "image"]
    images: dict[str, int]
    patients: dict[str, int]
    positives: pd.DataFrame  # rows: findings, columns: splits; counts of positive images
    notes: list[str] = field(default_factory=list)

    @property
    def fractions(self) -> dict[str, float]:
        """Fraction of all images in each split."""
        total = sum(self.images.values())
        return {s: (n / total if total else 0.0) for s, n in self.images.items()}

    def __str__(self) -> str:
        splits = list(self.images)
        fractions = self.fractions
        rows: list[tuple[str, list[str]]] = [
            ("images", [str(self.images[s]) for s in splits]),
            ("  fraction", [f"{fractions[s]:.3f}" for s in splits]),
            ("patients", [str(self.patients.get(s, 0)) for s in splits]),
        ]
        if len(self.positives.index):
            rows.append(("positive images:", ["" for _ in splits]))
        for finding in self.positives.index:
            rows.append((f"  {finding}", [str(int(self.positives.at[finding, s])) for s in splits]))
        label_w = max([len(r[0]) for r in rows] + [len("split")])
        col_w = [max([len(s)] + [len(r[1][i]) for r in rows]) for i, s in enumerate(splits)]
        lines = [f"Split summary (grouped by {self.grouped_by})"]
        lines.append("  ".join(["split".ljust(label_w), *(s.rjust(w) for s, w in zip(splits, col_w))]))
        for label, cells in rows:
            lines.append("  ".join([label.ljust(label_w), *(c.rjust(w) for c, w in zip(cells, col_w))]).rstrip())
        if self.notes:
            lines.append("notes:")
            lines.extend(f"  - {note}" for note in self.notes)
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------
# grouping


@dataclass
class _Groups:
    keys: np.ndarray  # one key per group, sorted
    codes: np.ndarray  # row -> group index
    grouped_by: Literal["patient", "image"]
    notes: list[str]


def _group_keys(studies: pd.DataFrame) -> tuple[pd.Series, Literal["patient", "image"], list[str]]:
    """Per row, the key a row is grouped by: its patient id, or its image id where that is missing."""
    if "image_id" not in studies.columns:
        raise DatasetError(_TABLE, "study table lacks column 'image_id'")
    image_ids = studies["image_id"].astype(str)
    if "patient_id" in studies.columns:
        pid = studies["patient_id"]
        missing = pid.isna() | (pid.astype(str).str.strip() == "")
        pid = pid.astype(str).str.strip()
    else:
        missing = pd.Series(True, index=studies.index)
        pid = image_ids
    keys = pid.where(~missing, "image:" + image_ids)
    notes: list[str] = []
    if bool((missing | (pid == image_ids)).all()):
        return keys, "image", ["no patient ids: grouped by image"]
    n_missing = int(missing.sum())
    if n_missing:
        plural = "s" if n_missing != 1 else ""
        notes.append(f"{n_missing} image{plural} without a patient id: each grouped as its own patient")
    return keys, "patient", notes


def _groups(studies: pd.DataFrame) -> _Groups:
    keys, grouped_by, notes = _group_keys(studies)
    codes, uniques = pd.factorize(keys, sort=True)
    return _Groups(np.asarray(uniques, dtype=object), np.asarray(codes), grouped_by, notes)


def _label_matrix(studies: pd.DataFrame, findings: Sequence[str]) -> np.ndarray:
    missing = [f for f in findings if f not in studies.columns]
    if missing:
        raise DatasetError(_TABLE, f"study table lacks finding columns {missing}")
    if not findings:
        return np.zeros((len(studies), 0), dtype=bool)
    values = studies[list(findings)].apply(pd.to_numeric, errors="coerce").fillna(0).to_numpy()
    return values > 0


def _group_labels(rows: np.ndarray, codes: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Per group: any-positive labels (groups x findings) and image count."""
    labels = np.zeros((n_groups, rows.shape[1]), dtype=bool)
    if rows.shape[1]:
        np.logical_or.at(labels, codes, rows)
    sizes = np.bincount(codes, minlength=n_groups)
    return labels, sizes


def _stratify_targets(labels: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Findings plus helper labels: "no positive finding" and log2 image-count bands (2-3, 4-7, ...)."""
    bands = np.floor(np.log2(np.maximum(sizes, 1))).astype(int)
    band_cols = [(bands == b) for b in range(1, int(bands.max()) + 1)] if len(bands) else []
    cols = [labels, (~labels.any(axis=1))[:, None], *(c[:, None] for c in band_cols)]
    return np.concatenate(cols, axis=1).astype(int)


# --------------------------------------------------------------------------------------------------------
# stratified assignment of groups


def _stratified_parts(targets: np.ndarray, fractions: Sequence[float], rng: np.random.RandomState) -> np.ndarray:
    """Assign each group (row of ``targets``) to a part, peeling parts off the end with successive
    two-way multi-label stratified splits (test first, then val from the rest with the adjusted fraction)."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    n = len(targets)
    parts = np.zeros(n, dtype=int)
    remaining = np.arange(n)
    for p in range(len(fractions) - 1, 0, -1):
        if len(remaining) <= p:  # too few left to give every part one; the repair step fills the rest
            break
        share = fractions[p] / sum(fractions[: p + 1])
        # a whole number of groups: at least one for this part and for each part still to come
        n_part = int(np.clip(round(share * len(remaining)), 1, len(remaining) - p))
        splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=n_part, random_state=rng)
        y = targets[remaining]
        keep, take = next(splitter.split(np.zeros((len(remaining), 1)), y))
        parts[remaining[take]] = p
        remaining = remaining[keep]
    return parts


def _repair(
    parts: np.ndarray,
    labels: np.ndarray,
    sizes: np.ndarray,
    movable: np.ndarray,
    fractions: Sequence[float],
) -> None:
    """In place: make every part non-empty, then put each finding with at least ``len(fractions)`` positive
    movable groups into every part: move one positive group from the part most over its share of that
    finding (and able to spare it without losing any of the group's findings), and swap back a group
    without findings, closest in image count, to keep sizes. Deterministic (ties by group order)."""
    k = len(fractions)

    def members(t: int) -> np.ndarray:
        return np.flatnonzero(movable & (parts == t))

    def least_disruptive(cand: np.ndarray) -> int:
        # fewest findings, then fewest images, then group order
        return int(cand[np.lexsort((sizes[cand], labels[cand].sum(axis=1)))[0]])

    for t in range(k):
        if len(members(t)) == 0:
            donors = [d for d in range(k) if len(members(d)) > 1]
            if donors:
                d = max(donors, key=lambda d: len(members(d)))
                parts[least_disruptive(members(d))] = t

    counts = np.stack([labels[members(t)].sum(axis=0) for t in range(k)])  # parts x findings
    n_pos = counts.sum(axis=0)
    for f in np.argsort(n_pos, kind="stable"):
        if n_pos[f] < k:
            continue
        for t in range(k):
            if counts[t, f] > 0:
                continue
            best: tuple[float, int] | None = None  # (surplus of the donor part, group)
            for d in range(k):
                if d == t or counts[d, f] < 2:
                    continue
                cand = members(d)
                cand = cand[labels[cand, f]]
                # moving must not empty part d of any other finding the group carries
                cand = np.array([g for g in cand if np.all(counts[d, labels[g]] >= 2)], dtype=int)
                if len(cand) == 0:
                    continue
                surplus = counts[d, f] / max(fractions[d], 1e-9)
                if best is None or surplus > best[0]:
                    best = (surplus, least_disruptive(cand))
            if best is None:
                continue
            g = best[1]
            d = int(parts[g])
            parts[g] = t
            counts[d] -= labels[g]
            counts[t] += labels[g]
            back = members(t)
            back = back[~labels[back].any(axis=1)]
            if len(back):
                parts[int(back[np.argmin(np.abs(sizes[back] - sizes[g]))])] = d


# --------------------------------------------------------------------------------------------------------
# public API


def _check_fractions(fractions: Sequence[float], names: Sequence[str]) -> None:
    if len(fractions) != len(names):
        raise ValueError(f"{len(fractions)} fractions for {len(names)} split names {list(names)}")
    if len(set(names)) != len(names) or any(not isinstance(n, str) or not n for n in names):
        raise ValueError(f"split names must be distinct non-empty strings, got {list(names)}")
    if any((not np.isfinite(f)) or f < 0 for f in fractions):
        raise ValueError(f"fractions must be >= 0, got {list(fractions)}")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {list(fractions)} (sum {sum(fractions):g})")


def _existing_splits(studies: pd.DataFrame, keep_existing: bool) -> np.ndarray:
    """Per row, the split to keep (stripped; "" for none): the table's ``split`` column with
    ``keep_existing``, else "" everywhere."""
    if keep_existing and "split" in studies.columns:
        return studies["split"].fillna("").astype(str).str.strip().to_numpy()
    return np.full(len(studies), "", dtype=object)


def _fixed_group_splits(grp: _Groups, existing: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Per group, the existing split it keeps ("" for a group still to divide), and a note on the unassigned
    images pulled into their patient's split.

    A group with any image in an existing split keeps that split for all its images, so a patient cannot
    straddle a kept split and a new one; a group already in two splits raises LeakageError.
    """
    group_split = np.full(len(grp.keys), "", dtype=object)
    has_existing = existing != ""
    if not has_existing.any():
        return group_split, []
    fixed = pd.DataFrame({"g": grp.codes[has_existing], "s": existing[has_existing]}).drop_duplicates()
    multi = fixed.groupby("g")["s"].agg(lambda s: tuple(sorted(s)))
    clash = multi[multi.map(len) > 1]
    if len(clash):
        raise LeakageError({str(grp.keys[g]): s for g, s in clash.items()})
    group_split[multi.index.to_numpy()] = [s[0] for s in multi]
    pulled = int((~has_existing & (group_split[grp.codes] != "")).sum())
    if not pulled:
        return group_split, []
    note = (f"{pulled} unassigned image{'s' if pulled != 1 else ''} joined the existing split of "
            f"{'their' if pulled != 1 else 'its'} patient")
    return group_split, [note]


def _target_splits(names: Sequence[str], fractions: Sequence[float], used: set[str]
                   ) -> tuple[list[str], list[float]]:
    """The non-empty splits the remaining groups are divided over (those not already used, or all of them
    when every one is) and their fractions, rescaled to sum to 1."""
    candidates = [(n, f) for n, f in zip(names, fractions) if n not in used and f > 0]
    if not candidates:
        candidates = [(n, f) for n, f in zip(names, fractions) if f > 0]
    total = sum(f for _, f in candidates)
    return [n for n, _ in candidates], [f / total for _, f in candidates]


def _divide_movable(group_split: np.ndarray, movable: np.ndarray, labels: np.ndarray, sizes: np.ndarray,
                    target_names: list[str], target_fractions: list[float], seed: int, unit: str) -> None:
    """In place: give every movable group one of ``target_names``, by iterative stratification (seeded)
    then the rare-finding repair. DatasetError when there are fewer movable groups than target splits."""
    n_movable = int(movable.sum())
    if n_movable < len(target_names):
        raise DatasetError(
            _TABLE,
            f"only {n_movable} {unit} to divide over {len(target_names)} splits {target_names}; "
            f"each non-empty split needs at least one",
        )
    idx = np.flatnonzero(movable)
    rng = np.random.RandomState(seed)
    parts = np.full(len(group_split), -1, dtype=int)
    parts[idx] = _stratified_parts(_stratify_targets(labels[idx], sizes[idx]), target_fractions, rng)
    _repair(parts, labels, sizes, movable, target_fractions)
    group_split[idx] = np.asarray(target_names, dtype=object)[parts[idx]]


def _unreached_notes(findings: Sequence[str], labels: np.ndarray, group_split: np.ndarray,
                     movable: np.ndarray, target_names: list[str], unit: str) -> list[str]:
    """Notes on findings with movable positive groups that still have no positive group in some target
    split (too few positives to go round): their AUROC will be undefined there."""
    pos_patients = {t: labels[(group_split == t)].sum(axis=0) for t in target_names}
    notes = []
    for j, finding in enumerate(findings):
        absent = [t for t in target_names if pos_patients[t][j] == 0]
        total_pos = int(labels[movable, j].sum())
        if absent and total_pos:
            notes.append(
                f"{finding!r} has no positive image in {', '.join(absent)} "
                f"({total_pos} positive {unit} to divide over {len(target_names)} splits)"
            )
    return notes


def assign_splits(
    studies: pd.DataFrame,
    findings: Sequence[str],
    *,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    names: Sequence[str] = ("train", "val", "test"),
    seed: int = 0,
    keep_existing: bool = False,
) -> tuple[pd.DataFrame, SplitSummary]:
    """Return a copy of ``studies`` with its ``split`` column set, patient-grouped and stratified, and a
    summary.

    Patients are split with multi-label iterative stratification over their aggregated findings (see the
    module docstring); every image follows its patient, so no patient sits in two splits. A split with
    fraction 0 stays empty. The result depends only on the table's content and ``seed``, not on row order.

    With ``keep_existing=True``, rows whose ``split`` is already set (e.g. a dataset's official test split)
    keep it, and so do all other images of their patients; the remaining patients are divided over the
    ``names`` not yet used, with their fractions rescaled (over all ``names`` if every one is used).

    Raises ValueError for fractions that do not sum to 1, DatasetError for a table without the needed
    columns or with fewer patients than non-empty splits, LeakageError when ``keep_existing`` finds a
    patient already in two splits.

    >>> import pandas as pd
    >>> studies = pd.DataFrame({
    ...     "image_id": [f"img{i}" for i in range(40)],
    ...     "patient_id": [f"p{i // 2}" for i in range(40)],
    ...     "Effusion": [int(i % 5 == 0) for i in range(40)],
    ... })
    >>> out, summary = assign_splits(studies, ["Effusion"], fractions=(0.6, 0.2, 0.2), seed=1)
    >>> summary.images
    {'train': 24, 'val': 8, 'test': 8}
    >>> check_leakage(out)  # no patient in two splits
    """
    _check_fractions(fractions, names)
    if len(studies) == 0:
        raise DatasetError(_TABLE, "study table is empty: nothing to split")
    rows = _label_matrix(studies, findings)
    grp = _groups(studies)
    labels, sizes = _group_labels(rows, grp.codes, len(grp.keys))
    group_split, pulled_notes = _fixed_group_splits(grp, _existing_splits(studies, keep_existing))
    notes = list(grp.notes) + pulled_notes
    movable = group_split == ""
    used = set(group_split[~movable])
    target_names, target_fractions = _target_splits(names, fractions, used)
    unit = "patients" if grp.grouped_by == "patient" else "images"
    if movable.any():
        _divide_movable(group_split, movable, labels, sizes, target_names, target_fractions, seed, unit)

    out = studies.copy()
    out["split"] = group_split[grp.codes].astype(str)
    summary = summarize(out, findings, order=[*names, *sorted(s for s in used if s not in names)])
    summary.notes = notes + [n for n in summary.notes if n not in notes]
    if movable.any():
        summary.notes += _unreached_notes(findings, labels, group_split, movable, target_names, unit)
    return out, summary


def kfold(
    studies: pd.DataFrame,
    findings: Sequence[str],
    k: int = 5,
    *,
    seed: int = 0,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Return ``k`` (train_idx, val_idx) pairs of row *positions* (for ``studies.iloc``), patient-grouped
    and multi-label stratified like :func:`assign_splits`; the val folds are disjoint and cover every row.

    Same stratifier (``MultilabelStratifiedKFold`` over patients) and rare-finding repair as
    :func:`assign_splits`. Raises ValueError for ``k < 2`` and DatasetError for fewer patients than folds.
    """
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    if int(k) != k or k < 2:
        raise ValueError(f"k must be an integer >= 2, got {k!r}")
    if len(studies) == 0:
        raise DatasetError(_TABLE, "study table is empty: nothing to split")
    rows = _label_matrix(studies, findings)
    grp = _groups(studies)
    n_groups = len(grp.keys)
    if n_groups < k:
        unit = "patients" if grp.grouped_by == "patient" else "images"
        raise DatasetError(_TABLE, f"only {n_groups} {unit} for {k} folds; each fold needs at least one")
    labels, sizes = _group_labels(rows, grp.codes, n_groups)
    targets = _stratify_targets(labels, sizes)
    splitter = MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=np.random.RandomState(seed))
    parts = np.zeros(n_groups, dtype=int)
    for fold, (_, val) in enumerate(splitter.split(np.zeros((n_groups, 1)), targets)):
        parts[val] = fold
    _repair(parts, labels, sizes, np.ones(n_groups, dtype=bool), [1 / k] * k)
    row_fold = parts[grp.codes]
    positions = np.arange(len(studies))
    return [(positions[row_fold != f], positions[row_fold == f]) for f in range(k)]


def check_leakage(studies: pd.DataFrame, column: str = "split") -> None:
    """Raise LeakageError if any patient has images in more than one value of ``column``.

    Rows with an empty ``column`` are ignored; rows without a patient id count as their own patient.
    """
    if column not in studies.columns:
        raise DatasetError(_TABLE, f"study table lacks column {column!r}")
    keys, _, _ = _group_keys(studies)
    values = studies[column]
    assigned = values.notna() & (values.astype(str).str.strip() != "")
    if not assigned.any():
        return
    pairs = pd.DataFrame({"key": keys[assigned].to_numpy(), "split": values[assigned].astype(str).to_numpy()})
    n_splits = pairs.groupby("key")["split"].nunique()
    leaking = n_splits[n_splits > 1].index
    if len(leaking) == 0:
        return
    sub = pairs[pairs["key"].isin(leaking)].drop_duplicates()
    patients = {
        str(key).removeprefix("image:"): tuple(sorted(group["split"]))
        for key, group in sub.groupby("key", sort=True)
    }
    raise LeakageError(patients, column=column)


def summarize(
    studies: pd.DataFrame,
    findings: Sequence[str],
    *,
    order: Sequence[str] | None = None,
) -> SplitSummary:
    """Count images, patients and positive images per finding in each value of ``studies["split"]``.

    Splits appear in ``order`` (default: train, val, test, then others alphabetically); rows with an empty
    split show as "(unassigned)".
    """
    if "split" not in studies.columns:
        raise DatasetError(_TABLE, "study table lacks column 'split'")
    keys, grouped_by, notes = _group_keys(studies)
    split = studies["split"].fillna("").astype(str).str.strip().replace("", _UNASSIGNED)
    present = set(split)
    if order is None:
        known = [s for s in _CANONICAL_ORDER if s in present]
        order = [*known, *sorted(s for s in present if s not in known and s != _UNASSIGNED)]
    splits = [*order, *sorted(s for s in present if s not in order and s != _UNASSIGNED)]
    if _UNASSIGNED in present:
        splits.append(_UNASSIGNED)
    images = {s: int((split == s).sum()) for s in splits}
    patients = {s: int(keys[split == s].nunique()) for s in splits}
    rows = _label_matrix(studies, findings).astype(int)
    positives = pd.DataFrame(0, index=pd.Index(list(findings), name="finding"), columns=splits, dtype=int)
    for s in splits:
        mask = (split == s).to_numpy()
        positives[s] = rows[mask].sum(axis=0) if len(findings) else []
    zero = [f for f in findings if positives.loc[f].sum() == 0]
    if zero:
        notes.append(f"no positive images for {', '.join(map(repr, zero))}")
    return SplitSummary(grouped_by=grouped_by, images=images, patients=patients, positives=positives, notes=notes)
