"""The classifier report: numbers agree with the metrics they come from, groups never crash, pictures exist."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from hybridcxr.report.classifier_report import subgroup_auroc, write_classifier_report
from hybridcxr.report.metrics import macro_auroc

FINDINGS = ["A", "B", "C", "D"]


def _data(n: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 4)) < [0.3, 0.2, 0.4, 0.0]).astype(float)
    score = np.clip(y * [0.6, 0.3, 0.0, 0.0] + rng.random((n, 4)) * 0.5, 0, 1)
    y[:5, 1] = np.nan  # unlabelled
    sex = rng.choice(np.array(["M", "F", None], dtype=object), n)
    age = rng.uniform(5, 90, n)
    age[:10] = np.nan
    return y, score, sex, age


def test_report_folder(tmp_path):
    y, score, sex, age = _data()
    history = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [0.7, 0.6, 0.5], "val_loss": [0.7, 0.65, 0.66],
                            "val_macro_auroc": [0.6, 0.7, 0.68]})
    path = write_classifier_report(tmp_path, y_true=y, y_score=score, findings=FINDINGS,
                                   image_ids=[str(i) for i in range(len(y))], split="test",
                                   thresholds={f: 0.5 for f in FINDINGS}, sex=sex, age_years=age, history=history,
                                   n_boot=200)
    text = path.read_text()
    assert "split **test**" in text and "| D | n/a |" in text
    per_finding = pd.read_csv(tmp_path / "per_finding.csv").set_index("finding")
    defined = per_finding["auroc"].dropna()
    assert abs(defined.mean() - macro_auroc(y, score, FINDINGS)) < 1e-12
    assert per_finding.loc["A", "auroc"] > 0.9 and abs(per_finding.loc["C", "auroc"] - 0.5) < 0.1
    assert (per_finding["ci_low"].dropna() <= defined).all() and (defined <= per_finding["ci_high"].dropna()).all()
    assert per_finding.loc["B", "n_pos"] + per_finding.loc["B", "n_neg"] == len(y) - 5
    for name in ("roc_curves.png", "pr_curves.png", "training_curves.png"):
        picture = tmp_path / name
        assert picture.stat().st_size > 10_000
        assert Image.open(picture).format == "PNG"


def test_subgroups_cover_every_image_and_tolerate_empty_groups():
    y, score, sex, age = _data()
    table = subgroup_auroc(y, score, FINDINGS, sex, age, bands=((0, 18), (18, 60), (60, 200), (300, 400)))
    by_sex = table[table["by"] == "sex"]
    assert by_sex["images"].sum() == len(y)
    assert table[table["by"] == "age"]["images"].sum() == len(y)
    empty = table[(table["by"] == "age") & (table["group"] == "300+")].iloc[0]
    assert empty["images"] == 0 and np.isnan(empty["macro_auroc"])
