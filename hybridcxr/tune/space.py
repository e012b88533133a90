"""The declarative search space of ``configs/tune.yaml``: settings, parameters, and categorical labels.

Optuna stores only primitives, so a list-valued classifier setting (``hidden``, ``groups``) is searched through
labels: ``[256, 64]`` is stored as ``"256-64"``, ``["yolo", "cnn"]`` as ``"yolo+cnn"``, and decoded back before
a trial trains.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna

from hybridcxr.config import TuneConfig, classifier_config, to_plain
from hybridcxr.config import CONFIG_DIR, load_config
from hybridcxr.errors import InputError

#: The tuning defaults; errors in the search space name this file.
TUNE_YAML = CONFIG_DIR / "tune.yaml"


def tune_settings(overrides: Mapping[str, Any] | None = None) -> TuneConfig:
    """Defaults from ``configs/tune.yaml`` with ``overrides`` applied; a ``space`` given replaces the whole space.

    Other keys follow :func:`~hybridcxr.config.load_config` (``epochs``, ``space.lr``; unknown keys raise).
    """
    return load_config("tune", overrides=overrides)  # type: ignore[return-value]


@dataclass
class Param:
    """One searched (or fixed) classifier setting.

    ``kind`` is ``float``, ``int``, ``categorical`` or ``fixed``; categorical ``choices`` map the primitive label
    Optuna stores (``"256-64"``) to the value the classifier gets (``[256, 64]``).
    """

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: dict[Any, Any] | None = None
    value: Any = None


def choice_label(value: Any) -> str | int | float | bool | None:
    """The primitive Optuna stores for a categorical choice: lists become ``"256-64"`` / ``"yolo+cnn"``.

    >>> choice_label([512, 128]), choice_label(["cnn", "age", "sex"]), choice_label([]), choice_label("focal")
    ('512-128', 'cnn+age+sex', 'none', 'focal')
    """
    if isinstance(value, (list, tuple)):
        if not value:
            return "none"
        separator = "+" if any(isinstance(v, str) for v in value) else "-"
        return separator.join(str(v) for v in value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"a categorical choice must be a primitive or a list, not {type(value).__name__}")


def decode_label(label: str) -> list[Any]:
    """The list a label such as ``"256-64"`` or ``"yolo+cnn"`` stands for (``"none"``: the empty list).

    >>> decode_label("256-64"), decode_label("yolo+cnn"), decode_label("none")
    ([256, 64], ['yolo', 'cnn'], [])
    """
    if label in ("", "none"):
        return []
    parts = label.split("+") if "+" in label else label.split("-")
    return [int(p) if p.isdigit() else p for p in parts]


def load_space(config: Mapping[str, Any]) -> dict[str, Param]:
    """The search space of a tune config (its ``space``; a bare space mapping works too), checked against
    ``configs/classifier.yaml``.

    A spec that is not a mapping fixes that key for every trial (``lr: 1.0e-3``). For a key whose classifier
    default is a list (``hidden``, ``groups``), string choices are read as labels (``"256-64"``).
    Raises InputError naming the key for an unknown key or a malformed distribution.
    """
    space = config.get("space", config) if isinstance(config, Mapping) else None
    if not isinstance(space, Mapping) or not space:
        raise InputError(TUNE_YAML, "space must be a non-empty mapping of classifier keys to distributions")
    defaults = classifier_config()
    out: dict[str, Param] = {}
    for name, spec in space.items():
        if name not in defaults:
            raise InputError(TUNE_YAML, f"space: {name!r} is not a key of configs/classifier.yaml; "
                                        f"known keys: {sorted(defaults)}")
        if not isinstance(spec, Mapping):
            fixed = decode_label(spec) if isinstance(spec, str) and isinstance(defaults[name], list) else spec
            out[name] = Param(name, "fixed", value=copy.deepcopy(to_plain(fixed)))
            continue
        kind = spec.get("type")
        try:
            if kind in ("float", "int"):
                low, high = float(spec["low"]), float(spec["high"])
                step = None if spec.get("step") is None else float(spec["step"])
                is_log = bool(spec.get("log", False))
                if not (math.isfinite(low) and math.isfinite(high) and low <= high):
                    raise ValueError(f"needs finite low <= high, got {low}, {high}")
                if is_log and (low <= 0 or step is not None):
                    raise ValueError("log needs low > 0 and no step")
                if kind == "int" and not (low.is_integer() and high.is_integer()):
                    raise ValueError(f"int bounds must be integers, got {low}, {high}")
                out[name] = Param(name, kind, low, high, is_log, step)
            elif kind == "categorical":
                values = list(spec["choices"])
                if not values:
                    raise ValueError("needs at least one choice")
                if isinstance(defaults[name], list):
                    values = [decode_label(v) if isinstance(v, str) else v for v in values]
                choices = {choice_label(v): copy.deepcopy(list(v) if isinstance(v, tuple) else v) for v in values}
                if len(choices) != len(values):
                    raise ValueError(f"choices must be distinct, got {values}")
                out[name] = Param(name, kind, choices=choices)
            else:
                raise ValueError(f"type must be float, int or categorical, got {kind!r}")
        except (KeyError, TypeError, ValueError) as err:
            detail = f"missing {err}" if isinstance(err, KeyError) else str(err)
            raise InputError(TUNE_YAML, f"space.{name}: {detail}") from None
    return out


def suggest(trial: optuna.Trial, space: Mapping[str, Param]) -> dict[str, Any]:
    """Ask ``trial`` for every searched key; the classifier overrides (lists decoded, fixed keys included)."""
    out: dict[str, Any] = {}
    for name, p in space.items():
        if p.kind == "fixed":
            out[name] = copy.deepcopy(p.value)
        elif p.kind == "float":
            out[name] = trial.suggest_float(name, p.low, p.high, log=p.log, step=p.step)
        elif p.kind == "int":
            out[name] = trial.suggest_int(name, int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            label = trial.suggest_categorical(name, list(p.choices))
            out[name] = copy.deepcopy(p.choices[label])
    return out
