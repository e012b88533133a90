"""The fusion head: detector features, CNN embedding and demographics, concatenated, into one logit per finding.

Feature groups (any non-empty subset, always concatenated in this order):

- ``"yolo"``: the detector's pooled neck features (width given by the detector);
- ``"cnn"``: the CNN embedding (512 for ResNet-18, 1024 for DenseNet-121);
- ``"lungs"``: lung-field measurements from the lung segmenter, with a missing flag
  (:data:`hybridcxr.lungs.features.LUNG_FEATURES`);
- ``"age"``: standardised age and a missing flag (2 inputs), from :func:`encode_demographics`;
- ``"sex"``: one-hot ``M``, ``F``, missing (3 inputs), from :func:`encode_demographics`.

Two heads read the fused vector (``FusionConfig.head``): ``"mlp"``, hidden layers then one Linear to the
logits, and ``"gcn"``, the same hidden layers (the projection of the fused vector) and, per finding, the dot
product of their output with a classifier that ML-GCN's label graph makes from learned label embeddings, plus a
bias (:mod:`hybridcxr.classify.gcn`; the graph comes from the training labels and lives in the config).

The ``yolo``, ``cnn`` and ``lungs`` groups are standardised inside the head with the training set's per-feature mean and
std (buffers, so they travel with the weights); age is standardised by :func:`encode_demographics` with the
``age_mean``/``age_std`` of the :class:`FusionConfig`, so every normalisation constant lives in the config
and its card.

Checkpoints are a folder holding ``model.safetensors`` (tensors only) and ``card.json`` (the config, the
normalisation, versions and whatever the trainer adds, e.g. thresholds); loading never unpickles.

>>> config = FusionConfig(findings=("Cardiomegaly", "Pleural effusion"), groups=("cnn", "age", "sex"),
...                       dims={"cnn": 512}, hidden=(64,))
>>> head = FusionHead(config).eval()
>>> age, sex = encode_demographics([63.0, None], ["F", None], config.age_mean, config.age_std)
>>> head({"cnn": torch.zeros(2, 512), "age": torch.from_numpy(age), "sex": torch.from_numpy(sex)}).shape
torch.Size([2, 2])
"""

from __future__ import annotations

import math
import platform
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

import hybridcxr
from hybridcxr.classify.gcn import DEFAULT_P, DEFAULT_TAU, LabelGCN, label_graph
from hybridcxr.errors import DataWarning, InputError
from hybridcxr.files import file_sha256, read_model_card, write_atomic, write_json
from hybridcxr.io.demographics import MAX_AGE_YEARS, parse_sex

#: Every feature group, in concatenation order.
GROUPS: tuple[str, ...] = ("yolo", "cnn", "lungs", "age", "sex")
#: The groups of a head built without a lung model.
DEFAULT_GROUPS: tuple[str, ...] = ("yolo", "cnn", "age", "sex")
#: Groups the head standardises itself (per-feature mean/std buffers).
STANDARDISED: tuple[str, ...] = ("yolo", "cnn", "lungs")
#: Widths of the demographic blocks, fixed by :func:`encode_demographics`.
FIXED_DIMS: dict[str, int] = {"age": 2, "sex": 3}
#: Columns of the sex block.
SEX_COLUMNS: tuple[str, ...] = ("M", "F", "missing")
#: The heads over the fused vector: an MLP, or ML-GCN's label-graph classifiers.
HEADS: tuple[str, ...] = ("mlp", "gcn")
#: Standard deviations below this count as constant features and divide by 1 instead.
MIN_STD = 1e-6

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"
KIND = "hybridcxr fusion head"
CARD_VERSION = 1
_RESERVED = frozenset({"kind", "card_version", "weights", "weights_sha256", "findings", "groups", "dims",
                       "input_dim", "hidden", "dropout", "layer_norm", "normalisation", "versions", "saved_at",
                       "head", "gcn"})


@dataclass
class FusionConfig:
    """Everything needed to rebuild a :class:`FusionHead`; stored in the checkpoint's card.

    Args:
        findings: one logit per finding, in this order.
        groups: feature groups used (non-empty subset of :data:`GROUPS`); kept in :data:`GROUPS` order.
        dims: input width per group; ``yolo``, ``cnn`` and ``lungs`` must be given, ``age`` (2) and ``sex`` (3)
            are filled in.
        hidden: widths of the hidden layers (Linear-[LayerNorm]-ReLU-Dropout each); ``()`` gives a linear model.
        dropout: dropout probability after each hidden layer.
        layer_norm: whether to put a LayerNorm after each hidden Linear.
        age_mean: training-set mean age in years, used by :func:`encode_demographics`.
        age_std: training-set age standard deviation in years.
        feature_mean: per-feature means of ``yolo``/``cnn`` (lists); zeros where not given.
        feature_std: per-feature standard deviations of ``yolo``/``cnn`` (lists); ones where not given.
        head: ``"mlp"`` or ``"gcn"`` (the label-graph head).
        gcn_dim: width of the gcn head's label embeddings and graph hidden layer (its per-finding classifiers
            have the width of the last hidden layer, or of the input without one).
        gcn_tau: the threshold the label graph was binarised at (recorded; :func:`FusionConfig.fit` uses it).
        gcn_p: the neighbours' share the label graph was re-weighted with (recorded, as ``gcn_tau``).
        adjacency: the gcn head's ``(C, C)`` label graph (lists, rows in ``findings`` order), from
            :func:`~hybridcxr.classify.gcn.label_graph`; required for ``head="gcn"``, None for ``"mlp"``.
    """

    findings: tuple[str, ...]
    groups: tuple[str, ...] = DEFAULT_GROUPS
    dims: dict[str, int] = field(default_factory=dict)
    hidden: tuple[int, ...] = (256,)
    dropout: float = 0.2
    layer_norm: bool = False
    age_mean: float = 50.0
    age_std: float = 20.0
    feature_mean: dict[str, list[float]] = field(default_factory=dict)
    feature_std: dict[str, list[float]] = field(default_factory=dict)
    head: str = "mlp"
    gcn_dim: int = 256
    gcn_tau: float = DEFAULT_TAU
    gcn_p: float = DEFAULT_P
    adjacency: list[list[float]] | None = None

    def __post_init__(self) -> None:
        self.findings = tuple(str(f) for f in ([self.findings] if isinstance(self.findings, str) else self.findings))
        if not self.findings or len(set(self.findings)) != len(self.findings):
            raise ValueError(f"findings must be non-empty and unique, got {list(self.findings)}")
        groups = (self.groups,) if isinstance(self.groups, str) else tuple(self.groups)
        unknown = [g for g in groups if g not in GROUPS]
        if not groups or unknown or len(set(groups)) != len(groups):
            raise ValueError(f"groups must be a non-empty subset of {GROUPS} without repeats, got {list(groups)}")
        self.groups = tuple(g for g in GROUPS if g in groups)
        dims: dict[str, int] = {}
        for g in self.groups:
            if g in FIXED_DIMS:
                if g in self.dims and int(self.dims[g]) != FIXED_DIMS[g]:
                    raise ValueError(f"the {g!r} group has {FIXED_DIMS[g]} inputs, not {self.dims[g]}")
                dims[g] = FIXED_DIMS[g]
            elif g not in self.dims or int(self.dims[g]) < 1:
                raise ValueError(f"dims[{g!r}] must be a positive feature width, got {self.dims.get(g)}")
            else:
                dims[g] = int(self.dims[g])
        self.dims = dims
        self.hidden = tuple(int(h) for h in self.hidden)
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden sizes must be positive, got {list(self.hidden)}")
        self.dropout, self.layer_norm = float(self.dropout), bool(self.layer_norm)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        self.age_mean, self.age_std = float(self.age_mean), float(self.age_std)
        if not (math.isfinite(self.age_mean) and math.isfinite(self.age_std) and self.age_std > 0):
            raise ValueError(f"age_mean must be finite and age_std positive, got {self.age_mean}, {self.age_std}")
        means, stds = {}, {}
        for g in STANDARDISED:
            if g not in self.groups:
                continue
            means[g] = _stat_list(self.feature_mean.get(g), self.dims[g], 0.0, f"feature_mean[{g!r}]")
            stds[g] = _stat_list(self.feature_std.get(g), self.dims[g], 1.0, f"feature_std[{g!r}]")
            if any(s <= 0 for s in stds[g]):
                raise ValueError(f"feature_std[{g!r}] must be positive")
        self.feature_mean, self.feature_std = means, stds
        self._check_head()

    def _check_head(self) -> None:
        """The head's own settings: a known head, and for ``gcn`` a positive width and a (C, C) label graph."""
        self.head = str(self.head)
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        self.gcn_dim, self.gcn_tau, self.gcn_p = int(self.gcn_dim), float(self.gcn_tau), float(self.gcn_p)
        if self.head == "mlp":
            self.adjacency = None
            return
        if self.gcn_dim < 1:
            raise ValueError(f"gcn_dim must be positive, got {self.gcn_dim}")
        if self.adjacency is None:
            raise ValueError("a gcn head needs its label graph: adjacency=label_graph(training labels), "
                             "or FusionConfig.fit(..., labels=training labels)")
        a = np.asarray(self.adjacency, dtype=np.float64)
        c = len(self.findings)
        if a.shape != (c, c) or not np.isfinite(a).all():
            raise ValueError(f"adjacency must be a finite ({c}, {c}) matrix, got shape {a.shape}")
        self.adjacency = a.tolist()

    @property
    def input_dim(self) -> int:
        """Width of the concatenated input."""
        return sum(self.dims.values())

    @classmethod
    def fit(cls, findings: Iterable[str], features: Mapping[str, np.ndarray], age_years: Iterable[Any] | None = None,
            groups: Iterable[str] = DEFAULT_GROUPS, labels: np.ndarray | None = None, **kwargs: Any) -> FusionConfig:
        """A config whose dims and normalisation come from the training set's features and ages.

        Args:
            findings: the findings to predict.
            features: ``{"yolo": (N, d), "cnn": (N, d), "lungs": (N, d)}`` training features of the
                standardised groups used.
            age_years: training ages (None/NaN for unknown); the defaults are kept where none is known.
            groups: the feature groups to use.
            labels: ``(N, C)`` training labels; a gcn head's label graph is built from them (with ``gcn_tau``
                and ``gcn_p``) unless ``adjacency`` is given.
            **kwargs: other :class:`FusionConfig` fields (hidden, dropout, layer_norm, head, gcn_*).
        """
        groups = tuple(groups)
        dims, means, stds = {}, {}, {}
        for g in STANDARDISED:
            if g not in groups:
                continue
            if g not in features:
                raise ValueError(f"no {g!r} features given to fit the normalisation of group {g!r}")
            x = np.asarray(features[g], dtype=np.float64)
            if x.ndim != 2 or len(x) == 0:
                raise ValueError(f"{g!r} features must be a non-empty (N, d) array, got shape {x.shape}")
            dims[g] = x.shape[1]
            means[g], stds[g] = feature_stats(x)
        if "age" in groups and age_years is not None:
            ages = _ages_or_nan(age_years)
            known = ages[np.isfinite(ages)]
            if len(known):
                kwargs.setdefault("age_mean", float(known.mean()))
                kwargs.setdefault("age_std", float(known.std()) if known.std() > MIN_STD else 1.0)
        if kwargs.get("head") == "gcn" and kwargs.get("adjacency") is None and labels is not None:
            kwargs["adjacency"] = label_graph(labels, kwargs.get("gcn_tau", DEFAULT_TAU),
                                              kwargs.get("gcn_p", DEFAULT_P)).tolist()
        return cls(findings=tuple(findings), groups=groups, dims=dims, feature_mean=means, feature_std=stds,
                   **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The config as the JSON-ready fields of a checkpoint card."""
        return {
            "findings": list(self.findings),
            "groups": list(self.groups),
            "dims": dict(self.dims),
            "hidden": list(self.hidden),
            "dropout": self.dropout,
            "layer_norm": self.layer_norm,
            "normalisation": {
                "age": {"mean": self.age_mean, "std": self.age_std, "missing_flag": True},
                "sex_columns": list(SEX_COLUMNS),
                "features": {g: {"mean": self.feature_mean[g], "std": self.feature_std[g]}
                             for g in self.feature_mean},
            },
            "head": self.head,
            "gcn": None if self.head == "mlp" else {"dim": self.gcn_dim, "tau": self.gcn_tau, "p": self.gcn_p,
                                                    "adjacency": self.adjacency},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FusionConfig:
        """Rebuild a config from :meth:`to_dict`'s output (or a card); KeyError/ValueError when incomplete."""
        norm = data["normalisation"]
        features = norm.get("features", {})
        _check_sizes(data)
        gcn = data.get("gcn") or {}
        return cls(
            findings=tuple(data["findings"]), groups=tuple(data["groups"]), dims=dict(data["dims"]),
            hidden=tuple(data["hidden"]), dropout=data["dropout"], layer_norm=data.get("layer_norm", False),
            age_mean=norm["age"]["mean"], age_std=norm["age"]["std"],
            feature_mean={g: v["mean"] for g, v in features.items()},
            feature_std={g: v["std"] for g, v in features.items()},
            head=data.get("head", "mlp"), gcn_dim=gcn.get("dim", 256), gcn_tau=gcn.get("tau", DEFAULT_TAU),
            gcn_p=gcn.get("p", DEFAULT_P), adjacency=gcn.get("adjacency"),
        )


MAX_WIDTH = 65_536  # the widest layer a card may ask for (a 4e9-wide "hidden" would try to allocate TBs)


def _check_sizes(data: Mapping[str, Any]) -> None:
    """Refuse a card whose layer widths, input dims or finding count are not sane positive integers."""
    sizes = {"hidden": list(data["hidden"]), "dims": list(dict(data["dims"]).values()),
             "findings": [len(data["findings"])]}
    if data.get("head") == "gcn":
        sizes["gcn.dim"] = [(data.get("gcn") or {}).get("dim")]
    for name, values in sizes.items():
        for value in values:
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_WIDTH:
                raise ValueError(f"{name} must be whole numbers between 1 and {MAX_WIDTH}, got {value!r}")


class FusionHead(nn.Module):
    """Standardise ``yolo``/``cnn`` features, concatenate the groups, MLP or label-graph head, one logit per finding.

    ``forward`` takes a mapping group -> ``(N, dims[group])`` tensor (numpy arrays are converted); groups the
    head does not use are ignored, so one feature dict can feed heads of different subsets.
    """

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.config = config
        for g in config.feature_mean:
            self.register_buffer(f"{g}_mean", torch.tensor(config.feature_mean[g], dtype=torch.float32))
            self.register_buffer(f"{g}_std", torch.tensor(config.feature_std[g], dtype=torch.float32))
        layers: list[nn.Module] = []
        width = config.input_dim
        for size in config.hidden:
            layers.append(nn.Linear(width, size))
            if config.layer_norm:
                layers.append(nn.LayerNorm(size))
            layers += [nn.ReLU(), nn.Dropout(config.dropout)]
            width = size
        if config.head == "gcn":  # the hidden layers project; the label graph makes a classifier per finding
            self.gcn = LabelGCN(config.adjacency, config.gcn_dim, width)
            self.bias = nn.Parameter(torch.zeros(len(config.findings)))
        else:
            layers.append(nn.Linear(width, len(config.findings)))
        self.mlp = nn.Sequential(*layers)

    def forward(self, features: Mapping[str, torch.Tensor | np.ndarray]) -> torch.Tensor:
        """Logits ``(N, len(findings))`` from ``{group: (N, dims[group])}``."""
        weight = next(self.parameters())  # where and in which dtype the head runs (a gcn head may have no MLP)
        blocks, n = [], None
        for g in self.config.groups:
            if g not in features:
                raise ValueError(f"missing feature group {g!r}; this head uses {', '.join(self.config.groups)}")
            x = torch.as_tensor(features[g]).to(device=weight.device, dtype=weight.dtype)
            if x.ndim != 2 or x.shape[1] != self.config.dims[g]:
                raise ValueError(f"feature group {g!r} must be (N, {self.config.dims[g]}), got {tuple(x.shape)}")
            if n is not None and x.shape[0] != n:
                raise ValueError(f"feature group {g!r} has {x.shape[0]} rows, the groups before it {n}")
            n = x.shape[0]
            if g in self.config.feature_mean:
                x = (x - getattr(self, f"{g}_mean")) / getattr(self, f"{g}_std")
            blocks.append(x)
        fused = self.mlp(torch.cat(blocks, dim=1))
        return fused if self.config.head == "mlp" else fused @ self.gcn().T + self.bias


def feature_stats(features: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-column mean and std of ``(N, d)`` training features; constant columns get std 1 (no blow-up)."""
    x = np.asarray(features, dtype=np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.where(std > MIN_STD, std, 1.0)
    return mean.tolist(), std.tolist()


def encode_demographics(age_years: Iterable[Any], sex: Iterable[Any], age_mean: float,
                        age_std: float) -> tuple[np.ndarray, np.ndarray]:
    """Encode age and sex as the fusion head's ``age`` (N, 2) and ``sex`` (N, 3) blocks.

    The age block is ``[(age - age_mean) / age_std, 0]`` for a known age and ``[0, 1]`` for an unknown one
    (None, NaN, negative, above 130 years, or not a number; the last three also give one
    :class:`~hybridcxr.errors.DataWarning`). The sex block is one-hot over ``M``, ``F``, missing; ``male``/
    ``female`` in any case count, anything else (None, NaN, ``O``, ``""``) is missing.

    Args:
        age_years: ages in years, one per image.
        sex: ``"M"``/``"F"``/None, one per image.
        age_mean: the config's training-set mean age.
        age_std: the config's training-set age std (positive).

    Returns:
        ``(age_block, sex_block)``, float32 arrays.

    >>> age, sex = encode_demographics([70, None], ["M", "x"], age_mean=50, age_std=10)
    >>> age.tolist(), sex.tolist()
    ([[2.0, 0.0], [0.0, 1.0]], [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    """
    if not (math.isfinite(age_std) and age_std > 0 and math.isfinite(age_mean)):
        raise ValueError(f"age_mean must be finite and age_std positive, got {age_mean}, {age_std}")
    ages = _ages_or_nan(age_years, warn=True)
    sexes = [parse_sex(s) for s in _as_list(sex)]
    if len(ages) != len(sexes):
        raise ValueError(f"{len(ages)} ages but {len(sexes)} sexes: one of each per image")
    known = np.isfinite(ages)
    age_block = np.zeros((len(ages), 2), dtype=np.float32)
    age_block[known, 0] = (ages[known] - age_mean) / age_std
    age_block[~known, 1] = 1.0
    sex_block = np.zeros((len(sexes), 3), dtype=np.float32)
    sex_block[np.arange(len(sexes)), [SEX_COLUMNS.index(s or "missing") for s in sexes]] = 1.0
    return age_block, sex_block


def assemble_inputs(config: FusionConfig, *, yolo: np.ndarray | torch.Tensor | None = None,
                    cnn: np.ndarray | torch.Tensor | None = None, lungs: np.ndarray | torch.Tensor | None = None,
                    age_years: Iterable[Any] | None = None,
                    sex: Iterable[Any] | None = None) -> dict[str, torch.Tensor]:
    """The ``forward`` input of a head with ``config``: features as tensors, demographics encoded.

    Only the groups the config uses are needed (and returned); pass ``[None] * N`` for unknown demographics.
    """
    given = {"yolo": yolo, "cnn": cnn, "lungs": lungs}
    needs_demo = [g for g in ("age", "sex") if g in config.groups]
    if needs_demo and (age_years is None or sex is None):
        raise ValueError(f"the head uses {', '.join(needs_demo)}: pass age_years and sex (None entries for unknown)")
    out: dict[str, torch.Tensor] = {}
    for g in STANDARDISED:
        if g in config.groups:
            if given[g] is None:
                raise ValueError(f"the head uses {g!r} features: pass {g}=")
            out[g] = torch.as_tensor(given[g], dtype=torch.float32)
    if needs_demo:
        age, sex_block = encode_demographics(age_years, sex, config.age_mean, config.age_std)  # type: ignore[arg-type]
        if "age" in config.groups:
            out["age"] = torch.from_numpy(age)
        if "sex" in config.groups:
            out["sex"] = torch.from_numpy(sex_block)
    return out


# -------------------------------------------------------------------------------------------- checkpoints


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """``(model.safetensors, card.json)`` of a checkpoint folder, given the folder or either file in it."""
    path = Path(path)
    folder = path.parent if path.name in (WEIGHTS_FILE, CARD_FILE) else path
    if folder.suffix in (".safetensors", ".json", ".pt", ".pth"):
        raise InputError(path, f"a fusion checkpoint is a folder holding {WEIGHTS_FILE} and {CARD_FILE}")
    return folder / WEIGHTS_FILE, folder / CARD_FILE


def save_checkpoint(path: str | Path, head: FusionHead, config: FusionConfig | None = None,
                    card: Mapping[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` and ``card.json`` into the folder ``path``, each atomically.

    The card holds the config (findings, groups, dims, hidden sizes, dropout, normalisation), the versions
    of hybridcxr/torch/safetensors, the sha256 of the weights file (so a card never passes for another
    save's weights) and every key of ``card`` (e.g. ``thresholds``, a training-data summary, metrics).

    Args:
        path: the checkpoint folder (created), or ``model.safetensors``/``card.json`` inside it.
        head: the trained head.
        config: its config (default ``head.config``); must equal ``head.config``.
        card: extra JSON-serialisable entries; keys the card already has (e.g. ``findings``) are refused.

    Returns:
        The checkpoint folder.
    """
    from safetensors.torch import save_file

    config = head.config if config is None else config
    if config != head.config:
        raise ValueError("config differs from the head's own config; save the config the head was built with")
    extra = _jsonable(dict(card or {}))
    clash = sorted(_RESERVED & set(extra))
    if clash:
        raise ValueError(f"card keys {clash} are written by save_checkpoint itself; rename them")
    weights_path, card_path = checkpoint_paths(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in head.state_dict().items()}
    write_atomic(weights_path, lambda tmp: save_file(tensors, str(tmp), metadata={"kind": KIND}))
    document = {
        "kind": KIND,
        "card_version": CARD_VERSION,
        "weights": WEIGHTS_FILE,
        "weights_sha256": file_sha256(weights_path),
        **config.to_dict(),
        "input_dim": config.input_dim,
        "versions": _versions(),
        "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
    write_json(card_path, document)
    return weights_path.parent


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[FusionHead, FusionConfig,
                                                                                   dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint`: safetensors and JSON only, nothing unpickled.

    Args:
        path: the checkpoint folder, or ``model.safetensors``/``card.json`` inside it.
        device: where to put the head.

    Returns:
        ``(head in eval mode, config, card)``.

    Raises:
        InputError: naming the file, for a missing, corrupt or mismatched checkpoint.
    """
    from safetensors.torch import load_file

    weights_path, card_path = checkpoint_paths(path)
    for file in (weights_path, card_path):
        if not file.is_file():
            raise InputError(file, f"missing; a fusion checkpoint folder holds {WEIGHTS_FILE} and {CARD_FILE}")
    card = read_model_card(card_path, KIND, "fusion head")
    if int(card.get("card_version", 0)) > CARD_VERSION:
        raise InputError(card_path, f"card version {card['card_version']} is newer than this hybridcxr reads "
                                    f"({CARD_VERSION}); upgrade hybridcxr")
    try:
        config = FusionConfig.from_dict(card)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise InputError(card_path, f"invalid card ({type(err).__name__}: {err})") from err
    expected_sha = card.get("weights_sha256")
    if expected_sha is not None and expected_sha != file_sha256(weights_path):
        raise InputError(weights_path, f"does not belong to {CARD_FILE} (sha256 differs): the two files come "
                                       "from different saves")
    try:
        tensors = load_file(str(weights_path), device="cpu")
    except Exception as err:  # noqa: BLE001 - safetensors raises several types for a corrupt file
        raise InputError(weights_path, f"not a readable safetensors file ({type(err).__name__}: {err})") from err
    head = FusionHead(config)
    own = head.state_dict()
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    wrong = sorted(k for k in set(own) & set(tensors) if own[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        raise InputError(weights_path, f"does not match {CARD_FILE}: missing {missing[:3]}, unexpected "
                                       f"{unexpected[:3]}, wrong shape {wrong[:3]}")
    for g in config.feature_mean:  # the card's copy of the normalisation must be the one the weights carry
        for stat in ("mean", "std"):
            if not torch.equal(own[f"{g}_{stat}"], tensors[f"{g}_{stat}"]):
                raise InputError(card_path, f"the {g!r} normalisation differs from the one in {WEIGHTS_FILE}")
    if config.head == "gcn" and not torch.equal(own["gcn.adjacency"], tensors["gcn.adjacency"]):
        raise InputError(card_path, f"the label graph differs from the one in {WEIGHTS_FILE}")
    head.load_state_dict(tensors, strict=True)
    return head.to(device).eval(), config, card


# ---------------------------------------------------------------------------------------------- helpers


def _stat_list(values: Iterable[float] | None, dim: int, default: float, label: str) -> list[float]:
    out = [default] * dim if values is None else [float(v) for v in values]
    if len(out) != dim or not all(math.isfinite(v) for v in out):
        raise ValueError(f"{label} must hold {dim} finite numbers, got {len(out)}")
    return out


def _as_list(values: Any) -> list[Any]:
    if isinstance(values, (str, bytes)) or np.ndim(values) == 0:
        return [values]
    return list(values)


def _ages_or_nan(age_years: Iterable[Any], warn: bool = False) -> np.ndarray:
    """Ages as float64 with NaN for unknown; unusable values (text, negative, > 130 y) also become NaN."""
    raw = pd.Series(_as_list(age_years), dtype=object)
    ages = pd.to_numeric(raw.map(lambda v: v.strip() if isinstance(v, str) else v), errors="coerce")
    ages = np.array(ages, dtype=np.float64)  # a writable copy (pandas may hand out read-only views)
    empty = raw.map(_is_empty).to_numpy(dtype=bool)
    bad = ~empty & ~(np.isfinite(ages) & (ages >= 0) & (ages <= MAX_AGE_YEARS))
    if warn and bad.any():
        example = raw[bad].iloc[0]
        warnings.warn(DataWarning(
            f"{int(bad.sum())} age value(s) are not usable years (e.g. {example!r}); treated as unknown. "
            "Header ages such as '081Y' are parsed by hybridcxr.io.demographics.parse_age"), stacklevel=3)
    ages[bad | empty] = np.nan
    return ages


def _is_empty(value: Any) -> bool:
    """None, NaN, pd.NA and blank text: an unknown value, not a bad one."""
    if isinstance(value, str):
        return not value.strip()
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # array-like cell
        return False


def _jsonable(value: Any) -> Any:
    """Caller card values with numpy/torch scalars and arrays turned into plain JSON types."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return value


def _versions() -> dict[str, str]:
    try:
        safetensors_version = version("safetensors")
    except PackageNotFoundError:  # pragma: no cover - safetensors is a dependency
        safetensors_version = "unknown"
    return {"hybridcxr": hybridcxr.__version__, "torch": torch.__version__, "safetensors": safetensors_version,
            "python": platform.python_version()}

