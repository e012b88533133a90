"""The label-graph (ML-GCN) head: the co-occurrence graph, its forward pass and checkpoints, and how it trains."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hybridcxr.classify.fusion import FusionConfig, FusionHead, assemble_inputs, load_checkpoint, save_checkpoint
from hybridcxr.classify.gcn import LabelGCN, label_graph
from hybridcxr.classify.train import SplitData, classifier_config, train_head
from hybridcxr.errors import InputError

FINDINGS = ("A", "B", "C", "D")
# A and B come together (P(B|A) = 1, P(A|B) = 2/3); C appears alone once; D never appears.
LABELS = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]], dtype=float)


def test_graph_binarises_conditional_cooccurrence_and_reweights_it():
    graph = label_graph(LABELS, tau=0.4, p=0.2)
    expected = np.array([[0.8, 0.2, 0, 0], [0.2, 0.8, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    np.testing.assert_allclose(graph, expected)
    np.testing.assert_allclose(graph.sum(axis=1), 1.0)
    # tau above P(A|B) = 2/3 cuts B -> A but keeps A -> B (the graph is directed, as P(j|i) is)
    cut = label_graph(LABELS, tau=0.7, p=0.2)
    assert cut[0, 1] == pytest.approx(0.2) and cut[1, 0] == 0 and cut[1, 1] == 1
    # a finding with two neighbours shares p between them
    three = label_graph(np.array([[1, 1, 1], [1, 1, 1]]), tau=0.4, p=0.3)
    np.testing.assert_allclose(three[0], [0.7, 0.15, 0.15])


def test_graph_survives_unseen_findings_and_unlabelled_entries():
    nothing = label_graph(np.zeros((6, 3)))
    np.testing.assert_array_equal(nothing, np.eye(3))  # no positives anywhere: self-loops only, no NaN
    with_nan = LABELS.copy()
    with_nan[4, 3] = np.nan  # not labelled counts as negative
    np.testing.assert_array_equal(label_graph(with_nan), label_graph(LABELS))
    with pytest.raises(ValueError, match="tau"):
        label_graph(LABELS, tau=0.0)


def _config(**kwargs) -> FusionConfig:
    settings = {"hidden": (16,), **kwargs}
    return FusionConfig(findings=FINDINGS, groups=("cnn", "age", "sex"), dims={"cnn": 12}, head="gcn", gcn_dim=8,
                        adjacency=label_graph(LABELS).tolist(), **settings)


def _inputs(config: FusionConfig, n: int = 5) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(0)
    return assemble_inputs(config, cnn=rng.normal(size=(n, 12)).astype(np.float32), age_years=[60.0] * n,
                           sex=["F"] * n)


def test_gcn_head_forward_shapes_and_classifiers_from_the_graph():
    config = _config()
    torch.manual_seed(0)
    head = FusionHead(config).eval()
    assert head(_inputs(config)).shape == (5, len(FINDINGS))
    gcn = head.gcn
    assert isinstance(gcn, LabelGCN) and gcn.embedding.shape == (len(FINDINGS), 8)
    assert gcn().shape == (len(FINDINGS), 16)  # one classifier per finding, as wide as the last hidden layer
    torch.testing.assert_close(gcn.adjacency, torch.tensor(label_graph(LABELS), dtype=torch.float32))
    logits = head(_inputs(config))
    fused = head.mlp(torch.cat([_inputs(config)[g] for g in config.groups], dim=1))
    torch.testing.assert_close(logits, fused @ gcn().T + head.bias)
    linear = FusionHead(_config(hidden=())).eval()  # no hidden layer: classifiers over the fused vector itself
    assert len(linear.mlp) == 0 and linear.gcn().shape == (len(FINDINGS), 12 + 2 + 3)
    assert linear(_inputs(config)).shape == (5, len(FINDINGS))
    # classifiers mix along the graph only: A's embedding reaches B's classifier, not C's or the unseen D's
    before = gcn().detach().clone()
    with torch.no_grad():
        gcn.embedding[0] += 1.0
    changed = ~torch.isclose(gcn().detach(), before).all(dim=1)
    assert changed.tolist() == [True, True, False, False]
    with pytest.raises(ValueError, match="label graph"):
        FusionConfig(findings=FINDINGS, groups=("cnn",), dims={"cnn": 4}, head="gcn")
    with pytest.raises(ValueError, match="adjacency"):
        FusionConfig(findings=FINDINGS, groups=("cnn",), dims={"cnn": 4}, head="gcn", adjacency=np.eye(3).tolist())
    with pytest.raises(ValueError, match="head"):
        FusionConfig(findings=FINDINGS, groups=("cnn",), dims={"cnn": 4}, head="transformer")


def test_fit_builds_the_graph_from_training_labels():
    features = {"cnn": np.random.default_rng(1).normal(size=(5, 12))}
    config = FusionConfig.fit(FINDINGS, features, groups=("cnn",), labels=LABELS, head="gcn", gcn_tau=0.7,
                              gcn_p=0.1, gcn_dim=4)
    np.testing.assert_allclose(config.adjacency, label_graph(LABELS, tau=0.7, p=0.1))
    assert FusionConfig.fit(FINDINGS, features, groups=("cnn",), labels=LABELS).adjacency is None  # the mlp


def test_gcn_checkpoint_round_trip_rebuilds_the_graph_exactly(tmp_path: Path):
    config = _config()
    torch.manual_seed(0)
    head = FusionHead(config).eval()
    save_checkpoint(tmp_path / "ck", head)
    card = json.loads((tmp_path / "ck" / "card.json").read_text())
    assert card["head"] == "gcn" and card["gcn"]["dim"] == 8 and card["gcn"]["tau"] == 0.4
    np.testing.assert_array_equal(card["gcn"]["adjacency"], label_graph(LABELS))
    loaded, loaded_config, _ = load_checkpoint(tmp_path / "ck")
    assert loaded_config == config
    torch.testing.assert_close(loaded(_inputs(config)), head(_inputs(config)), rtol=0, atol=0)
    # a card whose graph is not the one the weights were trained with is refused
    card["gcn"]["adjacency"][0][0] = 0.5
    (tmp_path / "ck" / "card.json").write_text(json.dumps(card))
    with pytest.raises(InputError, match="label graph"):
        load_checkpoint(tmp_path / "ck")


def test_mlp_cards_keep_their_shape_and_old_cards_still_load(tmp_path: Path):
    config = FusionConfig(findings=FINDINGS, groups=("cnn",), dims={"cnn": 4}, hidden=(8,))
    save_checkpoint(tmp_path / "ck", FusionHead(config))
    card = json.loads((tmp_path / "ck" / "card.json").read_text())
    assert card["head"] == "mlp" and card["gcn"] is None
    del card["head"], card["gcn"]  # a card written before the gcn head existed
    (tmp_path / "ck" / "card.json").write_text(json.dumps(card))
    assert load_checkpoint(tmp_path / "ck")[1] == config


def _correlated_split(n: int, rng: np.random.Generator) -> SplitData:
    """Six findings in two co-occurring pairs (B only with A, D only with C), a rare one and an unseen one."""
    a, c = rng.random(n) < 0.3, rng.random(n) < 0.25
    labels = np.stack([a, a & (rng.random(n) < 0.6), c, c & (rng.random(n) < 0.5), rng.random(n) < 0.1,
                       np.zeros(n, bool)], axis=1).astype(float)
    cnn = rng.normal(size=(n, 32))
    cnn[:, :5] += 1.2 * labels[:, :5]
    return SplitData([str(i) for i in range(n)], {"cnn": cnn, "yolo": rng.normal(size=(n, 16))},
                     rng.uniform(20, 80, n), list(rng.choice(["M", "F"], n)), labels)


def _mean_aurocs(train: SplitData, val: SplitData, findings: tuple[str, ...], seeds: tuple[int, ...],
                 **settings) -> dict[str, float]:
    """Best validation macro AUROC of each head, averaged over ``seeds``, trained with the same settings."""
    out = {}
    for head in ("mlp", "gcn"):
        runs = [train_head(train, val, findings, classifier_config({**settings, "head": head, "seed": seed}))
                for seed in seeds]
        out[head] = float(np.mean([r.best_auroc for r in runs]))
    return out


@pytest.mark.slow
def test_gcn_head_learns_correlated_findings_as_well_as_the_mlp():
    rng = np.random.default_rng(0)
    train, val = _correlated_split(240, rng), _correlated_split(160, rng)
    scores = _mean_aurocs(train, val, tuple("ABCDEF"), (0, 1), epochs=25, patience=8, hidden=[64], gcn_dim=64,
                          device="cpu")
    assert scores["mlp"] > 0.65 and scores["gcn"] >= scores["mlp"] - 0.02, scores


@pytest.mark.slow
def test_gcn_head_trains_on_phantoms_as_well_as_the_mlp(tiny_classifier):
    """Both heads on the same cached phantom features: the GCN's validation macro AUROC within 0.02 of the MLP's."""
    from _splits import run_splits

    folder, out, _ = tiny_classifier
    train, val, findings = run_splits(folder, out / "features")
    scores = _mean_aurocs(train, val, findings, (0, 1, 2), epochs=40, patience=40, hidden=[32], gcn_dim=32,
                          device="cpu")
    assert scores["gcn"] >= scores["mlp"] - 0.02, scores


@pytest.mark.slow
def test_train_classifier_cli_with_head_gcn_then_classify(tiny_classifier, tiny_detector, tmp_path: Path):
    """`hybridcxr train classifier ... head=gcn` (on the cached features of another run), then `classify` with it."""
    import pandas as pd
    from typer.testing import CliRunner

    from hybridcxr.cli import app

    phantom = tiny_detector[0]
    folder, first, _ = tiny_classifier
    runner = CliRunner()
    out = tmp_path / "gcn-run"
    result = runner.invoke(app, ["train", "classifier", "--data", str(folder / "prepared"), "--detector",
                                 str(folder / "run"), "--out", str(out), "backbone_size=64", "epochs=4", "hidden=[32]",
                                 "head=gcn", "gcn_dim=16", f"cache={first / 'features'}", "--no-progress"])
    assert result.exit_code == 0, result.output
    card = json.loads((out / "model" / "card.json").read_text())
    assert card["head"] == "gcn" and card["train_config"]["head"] == "gcn" and card["gcn"]["dim"] == 16
    assert len(card["gcn"]["adjacency"]) == len(card["findings"])
    result = runner.invoke(app, ["classify", str(phantom / "test"), "--model", str(out), "--out",
                                 str(tmp_path / "c"), "--no-progress"])
    assert result.exit_code == 0, result.output
    predictions = pd.read_csv(tmp_path / "c" / "predictions.csv")
    assert len(predictions) == len(list((phantom / "test").iterdir()))
    assert ((predictions[card["findings"]] >= 0) & (predictions[card["findings"]] <= 1)).all().all()
