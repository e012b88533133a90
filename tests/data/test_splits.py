"""Patient-grouped, multi-label stratified splits: no leakage, rare findings everywhere, fractions kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hybridcxr.data.schema import make_studies
from hybridcxr.data.splits import (
    LeakageError,
    SplitSummary,
    assign_splits,
    check_leakage,
    kfold,
    summarize,
)
from hybridcxr.errors import DatasetError, HybridCXRError
from hybridcxr.findings import NIH14

NIH_LABELS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "nih" / "nih_labels.csv"

FINDINGS = ("common", "mid", "rare1", "rare2", "rare3", "absent")
RARE = ("rare1", "rare2", "rare3")
NAMES = ("train", "val", "test")


def _patients_per_split(table: pd.DataFrame) -> dict[str, set[str]]:
    return {s: set(g["patient_id"].astype(str)) for s, g in table.groupby("split")}


def _assert_no_shared_patients(table: pd.DataFrame) -> None:
    sets = list(_patients_per_split(table).values())
    for i, a in enumerate(sets):
        for b in sets[i + 1:]:
            assert not (a & b)


@pytest.fixture(scope="module")
def synthetic() -> pd.DataFrame:
    """300 patients with 1-4 images each; 'rare*' findings on 3-6 patients, 'absent' on none."""
    rng = np.random.default_rng(12345)
    prevalence = {"common": 0.3, "mid": 0.1, "absent": 0.0}
    rare_patients = {f: set(rng.choice(300, size=n, replace=False)) for f, n in zip(RARE, (6, 4, 3))}
    rows = []
    for p in range(300):
        has = {f: rng.random() < q for f, q in prevalence.items()}
        has.update({f: p in members for f, members in rare_patients.items()})
        n_images = int(rng.integers(1, 5))
        for i in range(n_images):
            # the patient's first image always shows their findings; later ones sometimes do
            labels = {f: int(v and (i == 0 or rng.random() < 0.7)) for f, v in has.items()}
            rows.append({"image_id": f"img{p:03d}_{i}", "patient_id": f"pat{p:03d}", **labels})
    return make_studies(pd.DataFrame(rows), FINDINGS)


@pytest.fixture(scope="module")
def synthetic_split(synthetic: pd.DataFrame) -> tuple[pd.DataFrame, SplitSummary]:
    return assign_splits(synthetic, FINDINGS, seed=0)


@pytest.fixture(scope="module")
def nih() -> pd.DataFrame:
    if not NIH_LABELS.exists():
        pytest.skip(f"real NIH labels not found at {NIH_LABELS}")
    raw = pd.read_csv(NIH_LABELS)
    labels = raw["Finding Labels"].str.split("|")
    table = pd.DataFrame({
        "image_id": raw["Image Index"].str.rsplit(".", n=1).str[0],
        "patient_id": raw["Patient ID"].astype(str),
        **{f: labels.map(lambda names, f=f: int(f in names)) for f in NIH14},
    })
    return make_studies(table, NIH14)


# ---------------------------------------------------------------------------------------------- real table


def test_nih_split_is_patient_grouped_and_stratified(nih: pd.DataFrame) -> None:
    out, summary = assign_splits(nih, NIH14, seed=0)
    check_leakage(out)
    _assert_no_shared_patients(out)
    assert summary.grouped_by == "patient"
    assert set(out["split"]) == set(NAMES) and len(out) == len(nih)
    patient_positives = nih.groupby("patient_id")[list(NIH14)].max().sum()
    for finding in NIH14:
        if patient_positives[finding] >= 3:
            assert summary.positives.at[finding, "train"] > 0, finding
            # the repair step puts it in every split
            assert (summary.positives.loc[finding] > 0).all(), finding
    for name, target in zip(NAMES, (0.8, 0.1, 0.1)):
        assert summary.fractions[name] == pytest.approx(target, abs=0.03)


def test_nih_planted_leak_is_caught(nih: pd.DataFrame) -> None:
    out, _ = assign_splits(nih, NIH14, seed=0)
    counts = out["patient_id"].value_counts()
    multi = counts[counts > 1]
    if len(multi):
        patient = str(multi.index[0])
    else:
        # the shared sample has one image per patient: give one patient a second image first
        patient = str(out["patient_id"].iloc[0])
        extra = out.iloc[[0]].assign(image_id=lambda t: t["image_id"] + "_followup")
        out = pd.concat([out, extra], ignore_index=True)
    rows = out.index[out["patient_id"] == patient]
    other = next(s for s in NAMES if s != out.at[rows[0], "split"])
    out.loc[rows[-1], "split"] = other
    with pytest.raises(LeakageError) as err:
        check_leakage(out)
    assert patient in str(err.value)
    assert other in str(err.value)
    assert set(err.value.patients) == {patient}
    assert isinstance(err.value, HybridCXRError)


# ----------------------------------------------------------------------------------------- synthetic table


def test_no_leakage(synthetic_split: tuple[pd.DataFrame, SplitSummary]) -> None:
    out, summary = synthetic_split
    check_leakage(out)
    _assert_no_shared_patients(out)
    assert summary.grouped_by == "patient"
    assert sum(summary.patients.values()) == 300


def test_fractions_within_tolerance(synthetic: pd.DataFrame) -> None:
    for seed in (0, 1, 2):
        _, summary = assign_splits(synthetic, FINDINGS, seed=seed)
        assert sum(summary.images.values()) == len(synthetic)
        for name, target in zip(NAMES, (0.8, 0.1, 0.1)):
            assert summary.fractions[name] == pytest.approx(target, abs=0.02), (seed, name)


def test_rare_findings_in_every_split(synthetic: pd.DataFrame) -> None:
    for seed in (0, 1, 2):
        out, summary = assign_splits(synthetic, FINDINGS, seed=seed)
        for finding in RARE:
            assert (summary.positives.loc[finding, list(NAMES)] > 0).all(), (seed, finding)
            assert set(out.loc[out[finding] == 1, "split"]) == set(NAMES)
    assert "no positive images for 'absent'" in summary.notes


def test_deterministic_by_seed(synthetic: pd.DataFrame, synthetic_split) -> None:
    again, _ = assign_splits(synthetic, FINDINGS, seed=0)
    assert again["split"].tolist() == synthetic_split[0]["split"].tolist()
    other, _ = assign_splits(synthetic, FINDINGS, seed=1)
    assert other["split"].tolist() != again["split"].tolist()


def test_row_order_does_not_matter(synthetic: pd.DataFrame, synthetic_split) -> None:
    shuffled = synthetic.sample(frac=1.0, random_state=3)
    out, _ = assign_splits(shuffled, FINDINGS, seed=0)
    expected = synthetic_split[0].set_index("image_id")["split"]
    assert out.set_index("image_id")["split"].sort_index().equals(expected.sort_index())
    assert out.index.equals(shuffled.index)  # the input's rows and index are kept


def test_kfold_disjoint_covering_grouped(synthetic: pd.DataFrame) -> None:
    folds = kfold(synthetic, FINDINGS, k=5, seed=0)
    assert len(folds) == 5
    vals = [v for _, v in folds]
    assert np.array_equal(np.sort(np.concatenate(vals)), np.arange(len(synthetic)))
    patients = synthetic["patient_id"].to_numpy()
    for train, val in folds:
        assert len(np.intersect1d(train, val)) == 0
        assert len(train) + len(val) == len(synthetic)
        assert not set(patients[train]) & set(patients[val])
        assert len(val) / len(synthetic) == pytest.approx(0.2, abs=0.03)
        assert synthetic["rare1"].to_numpy()[val].any()  # 6 positive patients, 5 folds
    again = kfold(synthetic, FINDINGS, k=5, seed=0)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))
    with pytest.raises(ValueError):
        kfold(synthetic, FINDINGS, k=1)


def test_keep_existing_pulls_patients_along(synthetic: pd.DataFrame) -> None:
    table = synthetic.copy()
    counts = table["patient_id"].value_counts()
    multi = sorted(counts[counts >= 3].index)[:10]
    official = set(sorted(counts.index)[::5]) | set(multi)
    # the official test split names only the FIRST image of some multi-image patients
    first = ~table["image_id"].str.endswith(("_1", "_2", "_3"))
    table.loc[table["patient_id"].isin(official) & (first | ~table["patient_id"].isin(multi)), "split"] = "test"
    assert (table["patient_id"].isin(multi) & (table["split"] == "")).any()

    out, summary = assign_splits(table, FINDINGS, seed=0, keep_existing=True)
    check_leakage(out)
    kept = table["split"] == "test"
    assert (out.loc[kept, "split"] == "test").all()
    assert (out.loc[out["patient_id"].isin(official), "split"] == "test").all()
    assert set(out.loc[~out["patient_id"].isin(official), "split"]) == {"train", "val"}
    assert any("joined the existing split" in note for note in summary.notes)
    rest = out[~out["patient_id"].isin(official)]
    assert (rest["split"] == "val").mean() == pytest.approx(0.1 / 0.9, abs=0.03)

    # without keep_existing the old split is ignored
    fresh, _ = assign_splits(table, FINDINGS, seed=0)
    assert set(fresh["split"]) == set(NAMES)
    assert not (fresh.loc[kept, "split"] == "test").all()


def test_keep_existing_refuses_a_leaking_official_split(synthetic: pd.DataFrame) -> None:
    table = synthetic.copy()
    patient = table["patient_id"].value_counts().index[0]
    rows = table.index[table["patient_id"] == patient]
    table.loc[rows[0], "split"] = "train"
    table.loc[rows[1], "split"] = "test"
    with pytest.raises(LeakageError, match=patient):
        assign_splits(table, FINDINGS, keep_existing=True)


def test_no_patient_ids_groups_by_image(synthetic: pd.DataFrame) -> None:
    table = synthetic.assign(patient_id=synthetic["image_id"])
    table.loc[:9, "patient_id"] = None
    out, summary = assign_splits(table, FINDINGS, seed=0)
    assert summary.grouped_by == "image"
    assert "no patient ids: grouped by image" in summary.notes
    assert summary.patients == summary.images
    assert "grouped by image" in str(summary)


def test_missing_patient_ids_fall_back_to_image(synthetic: pd.DataFrame) -> None:
    table = synthetic.copy()
    table.loc[:4, "patient_id"] = None
    out, summary = assign_splits(table, FINDINGS, seed=0)
    assert summary.grouped_by == "patient"
    assert any(note.startswith("5 images without a patient id") for note in summary.notes)
    check_leakage(out)


# ------------------------------------------------------------------------------------------------- edges


def test_fractions_must_sum_to_one(synthetic: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        assign_splits(synthetic, FINDINGS, fractions=(0.7, 0.1, 0.1))
    with pytest.raises(ValueError):
        assign_splits(synthetic, FINDINGS, fractions=(0.8, 0.2))


def test_zero_fraction_gives_empty_split(synthetic: pd.DataFrame) -> None:
    out, summary = assign_splits(synthetic, FINDINGS, fractions=(0.8, 0.2, 0.0))
    assert summary.images["test"] == 0 and "test" not in set(out["split"])
    assert summary.fractions["val"] == pytest.approx(0.2, abs=0.02)
    assert "test" in str(summary)


def test_fewer_patients_than_splits(synthetic: pd.DataFrame) -> None:
    two = synthetic[synthetic["patient_id"].isin(["pat000", "pat001"])]
    with pytest.raises(DatasetError, match="only 2 patients"):
        assign_splits(two, FINDINGS)
    out, summary = assign_splits(two, FINDINGS, fractions=(0.5, 0.5, 0.0))
    assert summary.patients == {"train": 1, "val": 1, "test": 0}
    with pytest.raises(DatasetError, match="folds"):
        kfold(two, FINDINGS, k=3)
    three = synthetic[synthetic["patient_id"].isin(["pat000", "pat001", "pat002"])]
    _, summary = assign_splits(three, FINDINGS)
    assert all(n == 1 for n in summary.patients.values())


def test_all_negative_and_single_finding(synthetic: pd.DataFrame) -> None:
    negative = synthetic.assign(**{f: 0 for f in FINDINGS})
    out, summary = assign_splits(negative, FINDINGS, seed=0)
    check_leakage(out)
    assert summary.fractions["train"] == pytest.approx(0.8, abs=0.02)
    assert (summary.positives == 0).all().all()

    out, summary = assign_splits(synthetic, ["rare2"], seed=0)
    check_leakage(out)
    assert list(summary.positives.index) == ["rare2"]
    assert (summary.positives.loc["rare2"] > 0).all()

    out, summary = assign_splits(synthetic, [], seed=0)
    assert summary.fractions["test"] == pytest.approx(0.1, abs=0.02)


def test_check_leakage_ignores_unassigned_and_lists_at_most_twenty() -> None:
    table = pd.DataFrame({
        "image_id": [f"i{n}" for n in range(60)],
        "patient_id": [f"p{n // 2:02d}" for n in range(60)],
        "split": ["train", "test"] * 25 + ["train", ""] * 5,
    })
    with pytest.raises(LeakageError) as err:
        check_leakage(table)
    assert len(err.value.patients) == 25
    assert err.value.patients["p00"] == ("test", "train")
    message = str(err.value)
    assert "p00 (test, train)" in message and "and 5 more" in message and "p24" not in message
    check_leakage(table.iloc[50:])
    with pytest.raises(DatasetError):
        check_leakage(table, column="fold")


def test_summarize_counts() -> None:
    table = pd.DataFrame({
        "image_id": ["a", "b", "c", "d"],
        "patient_id": ["p1", "p1", "p2", None],
        "split": ["train", "train", "test", ""],
        "x": [1, 0, 1, 1],
    })
    summary = summarize(table, ["x"])
    assert summary.images == {"train": 2, "test": 1, "(unassigned)": 1}
    assert summary.patients == {"train": 1, "test": 1, "(unassigned)": 1}
    assert summary.positives.loc["x"].tolist() == [1, 1, 1]
    text = str(summary)
    assert "train" in text and "patients" in text and "x" in text
