"""Job configurations: YAML defaults in ``configs/`` (one file per job, one place), overridable per dataset
and from the command line.

>>> load_config("prepare")["fusion"]
'wbf'
>>> load_config("prepare", dataset="nih")["iou"]
0.3
>>> load_config("detector", overrides={"fliplr": 0.5, "epochs": 3})["augment"]["fliplr"]
0.5
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from hybridcxr.errors import InputError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def load_config(job: str, *, dataset: str | None = None, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Defaults of ``job`` from ``configs/<job>.yaml``, then ``configs/datasets/<dataset>.yaml``'s ``<job>:``
    section, then ``overrides`` (None values ignored, so unset CLI options keep the defaults).

    Raises InputError for an override key the job does not have (a typo would otherwise pass silently).
    """
    config = _read(CONFIG_DIR / f"{job}.yaml")
    if dataset is not None:
        per_dataset = CONFIG_DIR / "datasets" / f"{dataset}.yaml"
        if per_dataset.is_file():
            config.update(_read(per_dataset).get(job) or {})
    for key, value in (overrides or {}).items():
        section, name = _locate(config, key)
        if section is None:
            raise InputError(CONFIG_DIR / f"{job}.yaml", f"unknown key {key!r}; known keys: {sorted(_keys(config))}")
        if value is not None:
            section[name] = value
    return config


def _keys(config: Mapping[str, Any]) -> list[str]:
    """Every key a user may override: top-level ones and those of nested sections (``augment.fliplr``)."""
    keys = []
    for key, value in config.items():
        keys += [f"{key}.{k}" for k in value] if isinstance(value, dict) else [key]
    return keys


def _locate(config: dict[str, Any], key: str) -> tuple[dict[str, Any] | None, str]:
    """The mapping that holds ``key`` (``section.key``, or a bare key unique across sections) and its name there."""
    if "." in key:
        head, _, name = key.partition(".")
        section = config.get(head)
        return (section, name) if isinstance(section, dict) and name in section else (None, key)
    if key in config and not isinstance(config[key], dict):
        return config, key
    holders = [v for v in config.values() if isinstance(v, dict) and key in v]
    return (holders[0], key) if len(holders) == 1 else (None, key)


def parse_overrides(pairs: list[str], source: str = "command line") -> dict[str, Any]:
    """Parse ``key=value`` strings, each value as YAML (``lr=1e-3`` -> float, ``amp=false`` -> bool)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(source, f"expected key=value, got {pair!r}")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A user's YAML of settings (a mapping); raises InputError naming the file otherwise."""
    return _read(Path(path))


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(path, "no such configuration file")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise InputError(path, "a configuration file must hold a mapping of key: value")
    return data
