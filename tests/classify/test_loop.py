"""Training primitives: class weights for the weighted BCE."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from hybridcxr.classify.loop import SplitData, pos_weight
from hybridcxr.classify.train import train_head
from hybridcxr.config import classifier_config
from hybridcxr.errors import DataWarning



def test_pos_weight_hand_made_table() -> None:
    labels = np.array([
        # a  b  c       a: 2 pos / 3 neg, b: 1 pos / 3 neg (one unlabelled), c: never positive
        [1, 0, 0],
        [1, 1, 0],
        [0, 0, 0],
        [0, np.nan, 0],
        [0, 0, 0],
    ])
    with pytest.warns(DataWarning, match=r"c \(0 positive, 5 negative\)") as record:
        inverse = pos_weight(labels, "inverse", findings=["a", "b", "c"])
    assert len(record) == 1 and "b (" not in str(record[0].message)
    assert inverse == pytest.approx([3 / 2, 3 / 1, 1.0])
    with pytest.warns(DataWarning):
        sqrt = pos_weight(labels, "sqrt-inverse", findings=["a", "b", "c"])
    assert sqrt == pytest.approx([np.sqrt(1.5), np.sqrt(3.0), 1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pos_weight(labels, "none").tolist() == [1.0, 1.0, 1.0]
        assert pos_weight(labels[:, :2], "inverse").tolist() == [1.5, 3.0]
    with pytest.warns(DataWarning, match="column 0"):
        assert pos_weight(np.ones((3, 1))).tolist() == [1.0]  # all positive: 1.0, not 0
    with pytest.raises(ValueError, match="scheme"):
        pos_weight(labels, "log")  # type: ignore[arg-type]


def _split(rng: np.random.Generator, n: int) -> SplitData:
    labels = (rng.random((n, 3)) < 0.4).astype(float)
    return SplitData([f"i{k}" for k in range(n)],
                     {"yolo": rng.normal(size=(n, 8)).astype(np.float32) + labels[:, :1],
                      "cnn": rng.normal(size=(n, 16)).astype(np.float32)},
                     rng.uniform(20, 80, n), [("M", "F")[k % 2] for k in range(n)], labels)


def test_a_resumed_run_continues_exactly_as_the_uninterrupted_one(tmp_path):
    """Batch order (numpy) and dropout (torch) RNG states travel in the checkpoint."""
    import torch

    rng = np.random.default_rng(0)
    train, val = _split(rng, 64), _split(rng, 32)
    findings = ("a", "b", "c")
    config = classifier_config({"epochs": 6, "patience": 10, "hidden": [16], "dropout": 0.5, "batch_size": 8,
                                "device": "cpu", "lr_patience": 10})
    whole = train_head(train, val, findings, config, checkpoint=tmp_path / "whole")

    class Killed(Exception):
        pass

    def kill_after_3(epoch: int, _auroc: float) -> None:
        if epoch == 3:
            raise Killed

    with pytest.raises(Killed):
        train_head(train, val, findings, config, checkpoint=tmp_path / "resumed", callback=kill_after_3)
    torch.manual_seed(12345)  # whatever the process did in between must not matter
    resumed = train_head(train, val, findings, config, checkpoint=tmp_path / "resumed")
    assert resumed.history["train_loss"].tolist() == whole.history["train_loss"].tolist()
    for key, value in whole.head.state_dict().items():
        assert torch.equal(value, resumed.head.state_dict()[key]), key


def test_same_seed_same_model_and_another_seed_another():
    from hybridcxr.classify.backbone import build_backbone

    with pytest.warns(UserWarning):
        a, b, c = (build_backbone("resnet18", None, input_size=64, seed=s) for s in (7, 7, 8))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_two_runs_with_one_seed_give_the_same_head():
    import torch

    rng = np.random.default_rng(1)
    train, val = _split(rng, 48), _split(rng, 24)
    config = classifier_config({"epochs": 3, "hidden": [8], "dropout": 0.3, "device": "cpu", "seed": 5})
    a, b = (train_head(train, val, ("a", "b", "c"), config) for _ in range(2))
    c = train_head(train, val, ("a", "b", "c"), classifier_config({**config.to_dict(), "seed": 6}))
    assert all(torch.equal(v, b.head.state_dict()[k]) for k, v in a.head.state_dict().items())
    assert not all(torch.equal(v, c.head.state_dict()[k]) for k, v in a.head.state_dict().items())


def test_history_records_accuracy_of_the_kept_model() -> None:
    """Per-epoch accuracy (at 0.5) is recorded for both splits; the best epoch's is the returned head's."""
    from hybridcxr.classify.loop import label_accuracy
    from hybridcxr.classify.train import predict_head

    rng = np.random.default_rng(1)
    train, val = _split(rng, 48), _split(rng, 24)
    findings = ("a", "b", "c")
    config = classifier_config({"epochs": 4, "patience": 10, "hidden": [8], "batch_size": 16, "device": "cpu"})
    result = train_head(train, val, findings, config)
    history = result.history
    assert {"train_accuracy", "val_accuracy"} <= set(history.columns) and len(history) == 4
    assert history[["train_accuracy", "val_accuracy"]].stack().between(0, 1).all()
    best = history.set_index("epoch").loc[result.best_epoch]
    assert best["val_accuracy"] == pytest.approx(label_accuracy(val.labels, predict_head(result.head, val), findings))
    assert np.isnan(label_accuracy(np.full((2, 1), np.nan), np.zeros((2, 1)), ["a"]))


def test_the_plateau_schedule_takes_its_factor_and_patience_from_the_config() -> None:
    import torch

    from hybridcxr.classify.loop import make_optimizer

    config = classifier_config({"lr_factor": 0.1, "lr_patience": 5})
    optimizer, scheduler = make_optimizer([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 3e-3}], config)
    assert (scheduler.factor, scheduler.patience) == (0.1, 5)
    for _ in range(7):  # one best epoch, then six without improvement: past patience 5, the rate drops tenfold
        scheduler.step(0.5)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(3e-4)
    with pytest.raises(Exception, match="lr_factor must be between 0 and 1"):
        classifier_config({"lr_factor": 1.5})
