"""Calibrated probabilities: temperature scaling fitted on validation, and the findings a model never learned.

Why: a head trained with weighted BCE on a few hundred images gives scores, not probabilities (the positive
weights alone push every score up). Temperature scaling (Guo et al., ICML 2017) divides each finding's logit
by one number fitted on the validation split by maximum likelihood: the ranking (and so AUROC) is unchanged,
the probabilities become honest. A finding needs :data:`MIN_POSITIVES` positive and negative validation images
for its own temperature; the others share one fitted on all findings' logits pooled.

``platt`` (Platt 1999) also fits a bias per finding: ``sigmoid(logit / T + b)``. Why: weighted BCE shifts
every logit of a rare finding up by about log(pos_weight), an offset a temperature alone can only shrink,
not remove; the bias removes it. It is still monotone per finding, so AUROC is unchanged.

A finding with no positive image in the training split is not a finding the model knows: its score is noise
around whatever the bias settled at. :func:`unlearned_findings` names them with the reason; every output
then carries no decision for them (and the evaluation no AUROC claim).

>>> logits = np.array([[4.0], [-4.0], [2.0], [-2.0]]); labels = np.array([[1.0], [0.0], [0.0], [1.0]])
>>> fit_temperature(logits[:, 0], labels[:, 0]) > 1  # over-confident logits get a temperature above 1
True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: Positive (and negative) validation images a finding needs for a temperature of its own.
MIN_POSITIVES = 5
#: Temperatures are searched in [1/LIMIT, LIMIT].
LIMIT = 100.0


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature ``T`` minimising the binary cross-entropy of ``sigmoid(logits / T)`` (NaN labels skipped)."""
    from scipy.optimize import minimize_scalar

    known = ~np.isnan(labels)
    z, y = np.asarray(logits, np.float64)[known], np.asarray(labels, np.float64)[known]
    if not len(z) or y.min() == y.max():
        return 1.0

    def nll(log_t: float) -> float:
        s = z / np.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, s) - y * s))  # -log-likelihood of sigmoid(s), stable

    best = minimize_scalar(nll, bounds=(-np.log(LIMIT), np.log(LIMIT)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(best.x))


def fit_platt(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """``(T, b)`` minimising the binary cross-entropy of ``sigmoid(logits / T + b)`` (NaN labels skipped);
    ``(1, 0)`` when the labels hold one value only."""
    from scipy.optimize import minimize

    known = ~np.isnan(labels)
    z, y = np.asarray(logits, np.float64)[known], np.asarray(labels, np.float64)[known]
    if not len(z) or y.min() == y.max():
        return 1.0, 0.0

    def nll(params: np.ndarray) -> float:
        s = z / np.exp(params[0]) + params[1]
        return float(np.mean(np.logaddexp(0.0, s) - y * s))

    start = np.array([np.log(fit_temperature(z, y)), 0.0])
    bounds = [(-np.log(LIMIT), np.log(LIMIT)), (-20.0, 20.0)]
    best = minimize(nll, start, method="L-BFGS-B", bounds=bounds)
    return float(np.exp(best.x[0])), float(best.x[1])


def fit_calibration(logits: np.ndarray, labels: np.ndarray, findings: Sequence[str],
                    method: str = "temperature") -> dict[str, Any]:
    """Per-finding temperatures (and with ``method="platt"`` biases) from validation ``logits``/``labels``
    ``(N, C)``; findings with fewer than :data:`MIN_POSITIVES` positive or negative images get the values
    shared by all (the card's entry)."""
    if method not in ("temperature", "platt"):
        raise ValueError(f"calibration method must be temperature or platt, not {method!r}")
    labels = np.asarray(labels, np.float64)
    fit = fit_platt if method == "platt" else (lambda z, y: (fit_temperature(z, y), 0.0))
    shared, shared_bias = fit(np.asarray(logits).ravel(), labels.ravel())
    temperatures, biases, own = {}, {}, []
    for c, finding in enumerate(findings):
        known = labels[~np.isnan(labels[:, c]), c]
        if min(known.sum(), len(known) - known.sum()) >= MIN_POSITIVES:
            temperatures[finding], biases[finding] = fit(logits[:, c], labels[:, c])
            own.append(finding)
        else:
            temperatures[finding], biases[finding] = shared, shared_bias
    entry = {"method": method, "temperatures": temperatures, "shared": shared, "own": own,
             "min_positives": MIN_POSITIVES}
    if method == "platt":
        entry |= {"biases": biases, "shared_bias": shared_bias}
    return entry


def temperatures_of(calibration: Mapping[str, Any] | None, findings: Sequence[str]) -> np.ndarray:
    """The ``(C,)`` temperatures of a card's calibration entry (ones without one: an uncalibrated model)."""
    if not calibration:
        return np.ones(len(findings), dtype=np.float32)
    table = calibration["temperatures"]
    return np.array([float(table.get(f, calibration.get("shared", 1.0))) for f in findings], dtype=np.float32)


def biases_of(calibration: Mapping[str, Any] | None, findings: Sequence[str]) -> np.ndarray:
    """The ``(C,)`` biases of a card's calibration entry (zeros for temperature scaling or none)."""
    if not calibration or "biases" not in calibration:
        return np.zeros(len(findings), dtype=np.float32)
    table = calibration["biases"]
    return np.array([float(table.get(f, calibration.get("shared_bias", 0.0))) for f in findings], dtype=np.float32)


def calibrated(logits: np.ndarray, temperatures: np.ndarray, biases: np.ndarray | None = None) -> np.ndarray:
    """``sigmoid(logits / T + b)`` per finding column (``b`` = 0 without biases), float32."""
    from scipy.special import expit  # no overflow warning for logits far below zero

    z = np.asarray(logits, np.float64) / np.asarray(temperatures, np.float64)
    if biases is not None:
        z = z + np.asarray(biases, np.float64)
    return expit(z).astype(np.float32)


def apply_calibration(logits: np.ndarray, calibration: Mapping[str, Any] | None,
                      findings: Sequence[str]) -> np.ndarray:
    """The probabilities a card's calibration entry makes of ``logits`` (the raw sigmoid without one)."""
    return calibrated(logits, temperatures_of(calibration, findings), biases_of(calibration, findings))


def unlearned_findings(train_labels: np.ndarray, findings: Sequence[str]) -> dict[str, str]:
    """``{finding: reason}`` for the findings with no positive image in the training split."""
    labels = np.nan_to_num(np.asarray(train_labels, np.float64), nan=0.0)
    return {f: "no positive image in the training split: the model has not learned it"
            for c, f in enumerate(findings) if labels[:, c].sum() == 0}
