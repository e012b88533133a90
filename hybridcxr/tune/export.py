"""The best trial as a full ``configs/classifier.yaml``, ready for ``hybridcxr train classifier --config``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from hybridcxr.config import classifier_config, to_plain
from hybridcxr.errors import InputError
from hybridcxr.files import write_text


def export_best(study: optuna.Study, out_dir: str | Path, base_config: Mapping[str, Any] | None = None) -> Path:
    """Write ``best_config.yaml``: the full classifier config of the best trial (base config + its overrides).

    Every key is one of ``configs/classifier.yaml`` and lists stay lists, so the file can be given to
    ``hybridcxr train classifier`` unchanged; it reproduces the best trial (same epochs, patience and seed).
    """
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise InputError(f"study {study.study_name}", "has no complete trial yet: nothing to export")
    best = study.best_trial
    overrides = best.user_attrs.get("config")
    if not isinstance(overrides, Mapping):
        raise InputError(f"study {study.study_name}", f"trial {best.number} holds no classifier config "
                                                      "(user attribute 'config'): was it run by hybridcxr tune?")
    config = classifier_config({**to_plain(dict(base_config or classifier_config())), **overrides})
    header = (f"# Best trial {best.number} of Optuna study {study.study_name!r}: validation macro AUROC "
              f"{best.value:.4f} (epoch {best.user_attrs.get('best_epoch', '?')}).\n"
              "# A full configs/classifier.yaml: train with it as is to reproduce that trial.\n")
    return write_text(Path(out_dir) / "best_config.yaml", header + yaml.safe_dump(to_plain(config), sort_keys=False))
