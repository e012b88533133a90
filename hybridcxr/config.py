"""Job configurations: YAML defaults in ``configs/`` (one file per job, the only place defaults live),
overridable per dataset and from the command line, built into one typed dataclass per job and validated once,
here, before any work starts.

Unknown keys fail with a suggestion (``lr0`` -> "did you mean 'lr'?", as ultralytics' ``check_dict_alignment``
and MONAI's ``look_up_option`` do), wrong types and choices fail naming the key; string choices are
:class:`StrEnum` members, which compare equal to their strings and which typer accepts directly.

>>> load_config("prepare").fusion == "wbf"
True
>>> load_config("prepare", dataset="nih")["iou"]
0.3
>>> load_config("detector", overrides={"fliplr": 0.5, "epochs": 3}).augment.fliplr
0.5
>>> load_config("classifier", overrides={"lr0": 1e-3})
Traceback (most recent call last):
...
hybridcxr.errors.ConfigError: ...classifier.yaml: unknown key 'lr0' (did you mean 'lr'?)
"""

from __future__ import annotations

import difflib
import enum
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Union

import yaml

from hybridcxr.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

try:
    from enum import StrEnum
except ImportError:  # Python 3.10
    class StrEnum(str, enum.Enum):  # type: ignore[no-redef]
        """A string-valued enum (3.11's ``enum.StrEnum``)."""

        def __str__(self) -> str:
            return str(self.value)


class Fusion(StrEnum):
    """How the readers' boxes of one finding are merged."""
    wbf = "wbf"
    nms = "nms"
    none = "none"


class LabelRule(StrEnum):
    """When an image is positive: any reader saw the finding, or most readers did."""
    any = "any"
    majority = "majority"


class Runtime(StrEnum):
    """What runs the networks at inference: PyTorch, or onnxruntime on the run's ONNX export (``hybridcxr export``),
    fp32 or with the detector in int8 (``hybridcxr export --int8``)."""
    torch = "torch"
    onnx = "onnx"
    onnx_int8 = "onnx-int8"


class BackboneName(StrEnum):
    """The CNN whose embedding the fusion head reads."""
    resnet18 = "resnet18"
    densenet121 = "densenet121"
    xrv_densenet121 = "xrv-densenet121-res224-all"
    xrv_resnet50 = "xrv-resnet50-res512-all"


class Head(StrEnum):
    """What reads the fused vector: an MLP, or ML-GCN's label-graph classifiers."""
    mlp = "mlp"
    gcn = "gcn"


class PosWeight(StrEnum):
    """Positive-class weights of the weighted BCE."""
    none = "none"
    inverse = "inverse"
    sqrt_inverse = "sqrt-inverse"


class Loss(StrEnum):
    """The classifier's loss."""
    bce = "bce"
    focal = "focal"


class ThresholdRule(StrEnum):
    """How per-finding decision thresholds are chosen on validation."""
    f1 = "f1"
    youden = "youden"


class Calibration(StrEnum):
    """How the classifier's scores become probabilities: temperature (or temperature and bias) scaling fitted
    on validation, or none."""
    temperature = "temperature"
    platt = "platt"
    none = "none"


class Gating(StrEnum):
    """Whether ``train classifier`` chooses a classifier-gated detection rule on validation (auto) or not."""
    auto = "auto"
    none = "none"


class Oversample(StrEnum):
    """Which training images get more augmented views: none, or those carrying the rarer findings."""
    none = "none"
    rare = "rare"


class Crop(StrEnum):
    """What the CNN embedding sees: the whole radiograph, or the lung-field box (with a margin)."""
    none = "none"
    lungs = "lungs"


class Pruner(StrEnum):
    """Optuna's pruner of lagging trials."""
    median = "median"
    hyperband = "hyperband"
    none = "none"


class JobConfig(Mapping):
    """Base of the job dataclasses: read as attributes or, like the dict it replaces, by key."""

    def __getitem__(self, key: str) -> Any:
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def keys(self):  # type: ignore[override]
        """The job's setting names, in their YAML order."""
        return [f.name for f in fields(self)]  # type: ignore[arg-type]

    def __eq__(self, other: object) -> bool:
        """Equal to another config or mapping holding the same values (enums equal their strings)."""
        return isinstance(other, Mapping) and self.to_dict() == to_plain(other)

    __hash__ = None  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (enums as strings, sections as dicts): for YAML, JSON and model cards."""
        return {k: to_plain(getattr(self, k)) for k in self.keys()}


@dataclass(frozen=True, eq=False)
class PrepareConfig(JobConfig):
    """``hybridcxr prepare``: cached image size and depth, reader fusion, labels, the split."""
    size: int
    bits: int
    fusion: Fusion
    iou: float
    label_rule: LabelRule
    split: list[float]
    seed: int
    keep_official_test: bool


@dataclass(frozen=True, eq=False)
class AugmentConfig(JobConfig):
    """The detector's CXR-safe augmentation (ultralytics' names)."""
    fliplr: float
    flipud: float
    hsv_h: float
    hsv_s: float
    hsv_v: float
    degrees: float
    translate: float
    scale: float
    shear: float
    perspective: float
    mosaic: float
    mixup: float
    close_mosaic: int


@dataclass(frozen=True, eq=False)
class DetectorConfig(JobConfig):
    """``hybridcxr train detector`` and ``detect``."""
    model: str
    epochs: int
    imgsz: int
    batch: int
    device: Union[str, int]
    amp: bool
    workers: Union[int, str]
    patience: int
    seed: int
    resume: bool
    augment: AugmentConfig
    conf: float
    iou: float
    max_det: int
    tta_iou: float
    batch_predict: int
    ultralytics: dict


@dataclass(frozen=True, eq=False)
class ClassifierConfig(JobConfig):
    """``hybridcxr train classifier`` and each Optuna trial."""
    backbone: BackboneName
    backbone_weights: Union[str, None]
    backbone_size: int
    findings: Union[list[str], None]
    groups: list[str]
    lungs: Union[str, None]
    crop: Crop
    crop_margin: float
    hidden: list[int]
    dropout: float
    layer_norm: bool
    head: Head
    gcn_dim: int
    gcn_tau: float
    gcn_p: float
    lr: float
    weight_decay: float
    batch_size: int
    epochs: int
    patience: int
    lr_patience: int
    lr_factor: float
    pos_weight: PosWeight
    loss: Loss
    threshold_rule: ThresholdRule
    calibration: Calibration
    gating: Gating
    seed: int
    device: str
    cache: Union[str, None]
    end_to_end: bool
    backbone_lr: float
    e2e_batch_size: int
    e2e_workers: int
    augment: bool
    augment_views: int
    oversample: Oversample
    oversample_max: int
    aug_p: float
    aug_rotate: float
    aug_scale: float
    aug_shift: float
    aug_brightness: float
    aug_contrast: float
    aug_gamma: float
    aug_clahe: float
    aug_noise: float
    hflip: bool

    def __post_init__(self) -> None:
        """The rules that link fields: the ``lungs`` group and the lung crop need a lung model (``lungs=RUN``);
        the group is dropped from the default list when none is given. Cached augmented views are for the
        cached-feature head (end to end, the images are augmented every epoch instead), and oversampling
        multiplies views, so it needs some."""
        where = CONFIG_DIR / "classifier.yaml"
        if self.lungs is None:
            if self.crop == Crop.lungs:
                raise ConfigError(where, "crop=lungs needs a lung model: lungs=RUN (from `hybridcxr train lungs`)")
            groups = [g for g in self.groups if g != "lungs"]
            if not groups:
                raise ConfigError(where, "the lungs group needs a lung model: lungs=RUN")
            object.__setattr__(self, "groups", groups)
        if self.end_to_end and self.crop == Crop.lungs:
            raise ConfigError(where, "end_to_end=true fine-tunes the CNN on whole prepared images: use crop=none")
        if self.end_to_end and self.augment_views:
            raise ConfigError(where, "augment_views is for the cached-feature head; end_to_end=true augments the "
                                     "training images every epoch instead (augment=true): set augment_views=0")
        if self.oversample != Oversample.none and not self.augment_views:
            raise ConfigError(where, "oversample=rare gives rare findings' images more augmented views: "
                                     "set augment_views to 1 or more")


@dataclass(frozen=True, eq=False)
class TuneConfig(JobConfig):
    """``hybridcxr tune``: the search space (checked by ``tune.space``) and the study's settings."""
    space: dict
    pruner: Pruner
    startup_trials: int
    warmup_epochs: int
    sampler_seed: int
    epochs: int
    patience: int
    trials: int
    study: str
    heartbeat_interval: int
    grace_period: int


@dataclass(frozen=True, eq=False)
class LungsConfig(JobConfig):
    """``hybridcxr train lungs`` and ``segment``: the lung segmenter, its augmentation and the quality rules."""
    imgsz: int
    epochs: int
    batch: int
    lr: float
    weight_decay: float
    patience: int
    lr_patience: int
    val_fraction: float
    channels: list[int]
    res_units: int
    rotate: float
    scale: float
    shift: float
    brightness: float
    contrast: float
    gamma: float
    aug_p: float
    threshold: float
    min_area: float
    min_lung_share: float
    seed: int
    device: str
    amp: bool
    workers: int
    threads: int

    def __post_init__(self) -> None:
        """The one rule that links two fields (the others are in ``_RULES``): each UNet level halves the side."""
        if self.imgsz % 2 ** (len(self.channels) - 1):
            raise ConfigError(CONFIG_DIR / "lungs.yaml", f"imgsz must be divisible by 2^(levels - 1) = "
                                                         f"{2 ** (len(self.channels) - 1)}, got {self.imgsz}")


JOBS: dict[str, type[JobConfig]] = {
    "prepare": PrepareConfig, "detector": DetectorConfig, "classifier": ClassifierConfig, "tune": TuneConfig,
    "lungs": LungsConfig,
}
#: Checks beyond the type: (job, key) -> (test, what it must be).
_RULES: dict[tuple[str, str], tuple[Any, str]] = {
    ("prepare", "size"): (lambda v: v >= 32, "at least 32"),
    ("prepare", "bits"): (lambda v: v in (8, 16), "8 or 16"),
    ("prepare", "iou"): (lambda v: 0 < v < 1, "between 0 and 1"),
    ("prepare", "split"): (lambda v: len(v) == 3 and min(v) >= 0 and abs(sum(v) - 1) < 1e-6,
                           "three fractions (train, val, test) summing to 1"),
    ("classifier", "groups"): (lambda v: bool(v) and set(v) <= {"yolo", "cnn", "lungs", "age", "sex"},
                               "a non-empty list of yolo, cnn, lungs, age, sex"),
    ("classifier", "findings"): (lambda v: v is None or (bool(v) and len(set(v)) == len(v)),
                                 "null or a non-empty list of distinct finding names"),
    ("classifier", "lr_factor"): (lambda v: 0 < v < 1, "between 0 and 1"),
    ("classifier", "crop_margin"): (lambda v: 0 <= v <= 0.5, "in [0, 0.5]"),
    ("classifier", "hidden"): (lambda v: all(0 < w <= 65536 for w in v), "widths between 1 and 65536"),
    ("classifier", "dropout"): (lambda v: 0 <= v < 1, "in [0, 1)"),
    ("classifier", "gcn_dim"): (lambda v: 0 < v <= 65536, "between 1 and 65536"),
    ("classifier", "gcn_tau"): (lambda v: 0 < v <= 1, "in (0, 1]"),
    ("classifier", "gcn_p"): (lambda v: 0 <= v < 1, "in [0, 1)"),
    ("classifier", "lr"): (lambda v: v > 0, "positive"),
    ("classifier", "backbone_size"): (lambda v: 32 <= v <= 2048, "between 32 and 2048"),
    ("classifier", "augment_views"): (lambda v: 0 <= v <= 64, "between 0 and 64"),
    ("classifier", "oversample_max"): (lambda v: 1 <= v <= 64, "between 1 and 64"),
    ("classifier", "aug_p"): (lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("classifier", "aug_rotate"): (lambda v: 0 <= v <= 30, "between 0 and 30 degrees"),
    ("classifier", "aug_scale"): (lambda v: 0 <= v <= 0.5, "in [0, 0.5]"),
    ("classifier", "aug_shift"): (lambda v: 0 <= v <= 0.3, "in [0, 0.3]"),
    ("classifier", "aug_brightness"): (lambda v: 0 <= v <= 0.5, "in [0, 0.5]"),
    ("classifier", "aug_contrast"): (lambda v: 0 <= v <= 0.5, "in [0, 0.5]"),
    ("classifier", "aug_gamma"): (lambda v: 0 <= v < 1, "in [0, 1)"),
    ("classifier", "aug_clahe"): (lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("classifier", "aug_noise"): (lambda v: 0 <= v <= 0.2, "in [0, 0.2]"),
    ("detector", "imgsz"): (lambda v: 32 <= v <= 4096, "between 32 and 4096"),
    ("detector", "conf"): (lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("lungs", "imgsz"): (lambda v: 32 <= v <= 2048, "between 32 and 2048"),
    ("lungs", "epochs"): (lambda v: v >= 1, "at least 1"),
    ("lungs", "batch"): (lambda v: v >= 1, "at least 1"),
    ("lungs", "lr"): (lambda v: v > 0, "positive"),
    ("lungs", "patience"): (lambda v: v >= 1, "at least 1"),
    ("lungs", "val_fraction"): (lambda v: 0 < v < 1, "between 0 and 1"),
    ("lungs", "channels"): (lambda v: 2 <= len(v) <= 7 and all(4 <= c <= 1024 for c in v),
                            "2 to 7 widths between 4 and 1024"),
    ("lungs", "res_units"): (lambda v: 0 <= v <= 4, "between 0 and 4"),
    ("lungs", "aug_p"): (lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("lungs", "threshold"): (lambda v: 0 < v < 1, "between 0 and 1"),
    ("lungs", "min_area"): (lambda v: 0 <= v < 1, "in [0, 1)"),
    ("lungs", "min_lung_share"): (lambda v: 0 <= v < 0.5, "in [0, 0.5)"),
    ("lungs", "workers"): (lambda v: v >= 0, "0 or more"),
    ("lungs", "threads"): (lambda v: v >= 0, "0 or more"),
}


def load_config(job: str, *, dataset: str | None = None, overrides: Mapping[str, Any] | None = None) -> JobConfig:
    """The validated settings of ``job``: ``configs/<job>.yaml``, then ``configs/datasets/<dataset>.yaml``'s
    ``<job>:`` section, then ``overrides`` (None values ignored, so unset CLI options keep the defaults).

    Raises InputError naming the key for an unknown key (with a did-you-mean), a wrong type or a bad choice.
    """
    job = look_up_option(job, JOBS, "job")
    where = CONFIG_DIR / f"{job}.yaml"
    config = _read(where)
    if dataset is not None:
        per_dataset = CONFIG_DIR / "datasets" / f"{dataset}.yaml"
        if per_dataset.is_file():
            for key, value in (_read(per_dataset).get(job) or {}).items():
                _set(config, key, value, per_dataset)
    for key, value in (overrides or {}).items():
        if value is not None:
            _set(config, key, to_plain(value), where)
    return build_config(job, config, where)


def build_config(job: str, values: Mapping[str, Any], where: str | Path) -> JobConfig:
    """Check ``values`` (every key of the job, nothing else) and build the job's dataclass."""
    cls = JOBS[look_up_option(job, JOBS, "job")]
    return _build(cls, values, where, job, prefix="")


def ensure_config(job: str, config: Mapping[str, Any] | None) -> JobConfig:
    """``config`` as the job's validated dataclass: itself when it already is one, the defaults when None, else
    a plain mapping of every key checked (library callers' edge; the CLI's is :func:`load_config`)."""
    cls = JOBS[look_up_option(job, JOBS, "job")]
    if isinstance(config, cls):
        return config
    if config is None:
        return load_config(job)
    return build_config(job, to_plain(config), f"{job} configuration")


def look_up_option(value: Any, choices: Any, name: str, where: str | Path = "configuration") -> Any:
    """``value`` if it is one of ``choices`` (a mapping's keys, an enum or a sequence); else InputError with the
    closest choice as a suggestion."""
    options = [c.value for c in choices] if isinstance(choices, type) and issubclass(choices, enum.Enum) \
        else list(choices)
    if value in options:
        return choices(value) if isinstance(choices, type) and issubclass(choices, enum.Enum) else value
    raise ConfigError(where, f"{name} {value!r} is not one of {', '.join(map(str, options))}{_did_you_mean(value, options)}")


def _did_you_mean(value: Any, options: list[Any]) -> str:
    close = difflib.get_close_matches(str(value), [str(o) for o in options], n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _build(cls: type[JobConfig], values: Mapping[str, Any], where: str | Path, job: str, prefix: str) -> JobConfig:
    """One dataclass from a mapping: unknown and missing keys refused, each value checked against its field."""
    if not isinstance(values, Mapping):
        raise ConfigError(where, f"{prefix.rstrip('.') or job} must be a mapping of key: value")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    for key in values:
        if key not in names:
            raise ConfigError(where, f"unknown key {prefix}{key!r}{_did_you_mean(key, names)}")
    missing = [n for n in names if n not in values]
    if missing:
        raise ConfigError(where, f"missing keys {[prefix + m for m in missing]}")
    checked = {name: _check(hints[name], values[name], prefix + name, where, job) for name in names}
    for name, value in checked.items():
        rule = _RULES.get((job, prefix + name))
        if rule is not None and not rule[0](value):
            raise ConfigError(where, f"{prefix}{name} must be {rule[1]}, got {value!r}")
    return cls(**checked)


def _check(hint: Any, value: Any, key: str, where: str | Path, job: str) -> Any:
    """``value`` converted to the field's type (int -> float where a float is asked), or InputError naming ``key``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _check(arg, value, key, where, job)
            except ConfigError as err:
                errors.append(err)
        raise errors[-1]
    if isinstance(hint, type) and issubclass(hint, JobConfig):
        return _build(hint, value, where, job, prefix=f"{key}.")
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return look_up_option(value, hint, key, where)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(where, f"{key} must be a list, got {value!r}")
        return [_check(args[0], v, f"{key}[{i}]", where, job) for i, v in enumerate(value)] if args else list(value)
    if hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(where, f"{key} must be a mapping, got {value!r}")
        return dict(value)
    return _scalar(hint, value, key, where)


def _scalar(hint: Any, value: Any, key: str, where: str | Path) -> Any:
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    ok = {bool: isinstance(value, bool),
          int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool),
          str: isinstance(value, str)}[hint]
    if not ok:
        raise ConfigError(where, f"{key} must be {_TYPE_NAMES[hint]}, got {value!r}")
    return float(value) if hint is float else value


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _set(config: dict[str, Any], key: str, value: Any, where: str | Path) -> None:
    """Set ``key`` (``section.key``, or a bare key unique across sections) in ``config``; unknown keys refused."""
    section, name = _locate(config, key)
    if section is None:
        raise ConfigError(where, f"unknown key {key!r}{_did_you_mean(key, _keys(config))}")
    section[name] = value


def _keys(config: Mapping[str, Any]) -> list[str]:
    """Every key a user may override: top-level ones and those of nested sections (``augment.fliplr``)."""
    keys = []
    for key, value in config.items():
        keys += [f"{key}.{k}" for k in value] + list(value) if isinstance(value, dict) and key != "space" else [key]
    return keys


def _locate(config: dict[str, Any], key: str) -> tuple[dict[str, Any] | None, str]:
    """The mapping that holds ``key`` (``section.key``, or a bare key unique across sections) and its name there."""
    if "." in key:
        head, _, name = key.partition(".")
        section = config.get(head)
        return (section, name) if isinstance(section, dict) and name in section else (None, key)
    if key in config and not (isinstance(config[key], dict) and key != "space"):
        return config, key
    holders = [v for k, v in config.items() if isinstance(v, dict) and k != "space" and key in v]
    return (holders[0], key) if len(holders) == 1 else (None, key)


def to_plain(value: Any) -> Any:
    """Enums as their strings, tuples as lists, configs and mappings as dicts (YAML- and JSON-safe).

    >>> to_plain({"hidden": (256, 64), "loss": Loss.focal})
    {'hidden': [256, 64], 'loss': 'focal'}
    """
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


def detector_config(overrides: Mapping[str, Any] | None = None) -> DetectorConfig:
    """Defaults from ``configs/detector.yaml`` with ``overrides`` applied (nested keys by bare name)."""
    return load_config("detector", overrides=overrides)  # type: ignore[return-value]


def classifier_config(overrides: Mapping[str, Any] | None = None) -> ClassifierConfig:
    """Defaults from ``configs/classifier.yaml`` with ``overrides`` applied."""
    return load_config("classifier", overrides=dict(overrides or {}))  # type: ignore[return-value]


def config_default(job: str, key: str) -> Any:
    """The YAML default of one setting (for CLI help texts, so no default is written twice)."""
    return _read(CONFIG_DIR / f"{job}.yaml")[key]


def parse_overrides(pairs: list[str], source: str = "command line") -> dict[str, Any]:
    """Parse ``key=value`` strings, each value as YAML (``lr=1e-3`` -> float, ``amp=false`` -> bool)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(source, f"expected key=value, got {pair!r}")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A user's YAML of settings (a mapping); raises InputError naming the file otherwise."""
    return _read(Path(path))


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(path, "no such configuration file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(path, f"not valid YAML ({str(err)[:200]})") from None
    if not isinstance(data, dict):
        raise ConfigError(path, "a configuration file must hold a mapping of key: value")
    return data
