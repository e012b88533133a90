"""Every ultralytics quirk that matters offline, handled in one place.

Call :func:`setup_ultralytics` before the first ``import ultralytics`` (all of hybridcxr does, through
:func:`import_ultralytics`). It

- points ``YOLO_CONFIG_DIR`` at a folder of ours (``$HYBRIDCXR_HOME/ultralytics``, default
  ``~/.cache/hybridcxr``) and puts matplotlib's DejaVuSans in its ``Ultralytics/`` subfolder as ``Arial.ttf``
  and ``Arial.Unicode.ttf``, since ultralytics downloads those fonts otherwise;
- turns on ultralytics' restricted loading (``ULTRALYTICS_SAFE_LOAD=1``: no ``eval`` of yaml strings, only
  ``nn.Module`` layers, ``weights_only`` checkpoint loads with an allow-list of classes);
- sets ``YOLO_OFFLINE=1`` (no DNS look-ups or download attempts) unless the user set it,
  ``NO_ALBUMENTATIONS_UPDATE=1`` (no version check) and turns ultralytics' AutoUpdate off
  (``YOLO_AUTOINSTALL=False``: a missing requirement is an error, never a ``pip install`` at run time);
- keeps all CPU cores: ultralytics sets ``OMP_NUM_THREADS=1`` at import and ``torch.set_num_threads`` to
  ``cpu_count - 1`` when it picks the CPU, which halves speed on a 2-core laptop;
- lets its trainer run ``amp="bf16"`` on the CPU (its autocast helper refuses bfloat16 anywhere but CUDA):
  on a CPU with native bfloat16 (AVX512-BF16 or AMX) a training step takes about half the fp32 time.
  (Its trainer's other CPU habit, data-loading workers set to 0, is undone by our trainer subclass in
  :mod:`hybridcxr.detect.trainer`.)

:func:`export_onnx` runs ultralytics' own ONNX exporter on a model built from our safetensors (not a ``YOLO``
object from a ``.pt``), offline: no onnxslim (``simplify=False``, it would be pip-installed), the attributes
the exporter expects of a ``YOLO``-loaded model supplied, its output file named by us, its log kept quiet.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

from hybridcxr.device import cpu_threads
from hybridcxr.errors import guarded_warnings
from hybridcxr.files import atomic_path

_DONE = False


def hybridcxr_home() -> Path:
    """hybridcxr's own cache folder (``$HYBRIDCXR_HOME``, default ``~/.cache/hybridcxr``)."""
    return Path(os.environ.get("HYBRIDCXR_HOME") or Path.home() / ".cache" / "hybridcxr")


def setup_ultralytics() -> None:
    """Make ultralytics work offline and use every core; idempotent, cheap after the first call."""
    global _DONE
    if _DONE:
        return
    config_dir = Path(os.environ.get("YOLO_CONFIG_DIR") or hybridcxr_home() / "ultralytics")
    config_dir.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    # Restricted building: weights_only loads with a class allow-list, no eval() of a yaml's activation and
    # only nn.Module layers in parse_model. Read once when ultralytics is imported, so set before it; forced on.
    os.environ["ULTRALYTICS_SAFE_LOAD"] = "1"
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ["YOLO_AUTOINSTALL"] = "False"  # never pip-install a "missing" requirement (exporters ask for some)
    os.environ.setdefault("OMP_NUM_THREADS", str(cpu_threads()))
    import ultralytics.nn.tasks as tasks
    import ultralytics.utils.checks as checks
    import ultralytics.utils.torch_utils as torch_utils
    from ultralytics.utils import SETTINGS, USER_CONFIG_DIR

    _install_fonts(Path(USER_CONFIG_DIR))  # YOLO_CONFIG_DIR/Ultralytics: where check_font looks first

    torch_utils.NUM_THREADS = cpu_threads()
    tasks.SAFE_LOAD = True  # also when something imported ultralytics before this ran
    checks.AUTOINSTALL = False  # likewise
    if SETTINGS.get("sync"):
        SETTINGS.update({"sync": False})  # no usage analytics from a hospital's machine
    _patch_amp_check()
    _patch_cpu_bf16()
    _DONE = True


def setup_torch_threads() -> None:
    """Let torch use every core on the CPU (ultralytics would leave it at one on a 2-core laptop)."""
    import torch

    if torch.get_num_threads() < cpu_threads():
        torch.set_num_threads(cpu_threads())


def _patch_amp_check() -> None:
    """Ultralytics' AMP check on CUDA downloads yolo26n.pt; offline, trust AMP instead of trying to fetch it."""
    import ultralytics.engine.trainer as trainer
    from ultralytics.utils import WEIGHTS_DIR

    original = trainer.check_amp

    def check_amp(model):  # type: ignore[no-untyped-def]
        if not (WEIGHTS_DIR / "yolo26n.pt").is_file() and os.environ.get("YOLO_OFFLINE", "") not in ("", "0", "false"):
            return True
        return original(model)

    trainer.check_amp = check_amp


def _patch_cpu_bf16() -> None:
    """Ultralytics' trainer enters ``autocast(torch.bfloat16, device="cpu")`` for ``amp="bf16"``, which its
    helper refuses off CUDA; give the trainer torch's own CPU autocast for that one case."""
    import torch
    import ultralytics.engine.trainer as trainer

    original = trainer.autocast

    def autocast(enabled, device: str = "cuda"):  # type: ignore[no-untyped-def]
        if device == "cpu" and enabled is torch.bfloat16:
            return torch.amp.autocast("cpu", dtype=torch.bfloat16)
        return original(enabled, device=device)

    trainer.autocast = autocast


def export_onnx(model: Any, dest: Path, imgsz: int, opset: int | None = None) -> Path:
    """Write ``model`` (a detection model in eval mode, maybe returning extra outputs) as ONNX at ``dest`` with
    ultralytics' exporter: dynamic batch (and image size), fp32, no embedded NMS, no onnxslim, on the CPU.

    The exporter's own metadata (ultralytics' version, stride, names, ...) stays in the file; its wall-clock
    ``date`` is dropped by the caller for a reproducible file. ``dest`` is written directly: pass a temporary path.
    """
    import logging

    setup_ultralytics()
    from ultralytics.engine.exporter import Exporter
    from ultralytics.utils import LOGGER

    # What YOLO(...) would have set on a model it loaded: the exporter reads these.
    model.task = "detect"
    model.args = {**dict(getattr(model, "args", {}) or {}), "imgsz": imgsz, "data": ""}
    model.pt_path = str(Path(dest).with_suffix(".pt"))  # the exporter names its file after this, suffix .onnx
    overrides = {"format": "onnx", "imgsz": imgsz, "dynamic": True, "simplify": False, "nms": False, "batch": 1,
                 "device": "cpu", "opset": opset, "verbose": False}
    level = LOGGER.level
    LOGGER.setLevel(logging.WARNING)  # its banner, "Results saved" and "Predict: yolo predict ..." hints
    try:
        with guarded_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)  # torch's "legacy TorchScript-based export"
            written = Exporter(overrides=overrides)(model=model)
    finally:
        LOGGER.setLevel(level)
    if Path(written) != Path(dest).with_suffix(".onnx"):
        raise RuntimeError(f"ultralytics' exporter wrote {written}, not {dest}")
    return Path(written)


def import_ultralytics() -> ModuleType:
    """Return the ``ultralytics`` module, set up by :func:`setup_ultralytics`."""
    setup_ultralytics()
    import ultralytics

    return ultralytics


def _install_fonts(config_dir: Path) -> None:
    """Copy matplotlib's DejaVuSans into the config dir under the names ultralytics looks for."""
    targets = [config_dir / "Arial.ttf", config_dir / "Arial.Unicode.ttf"]
    if all(t.exists() for t in targets):
        return
    import matplotlib

    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for target in targets:
        if not target.exists():
            with atomic_path(target) as tmp:
                shutil.copyfile(font, tmp)
