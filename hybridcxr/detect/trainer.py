"""The detector's trainer: ultralytics' own, writing its checkpoints atomically.

Ultralytics writes ``last.pt``/``best.pt`` in place, so a kill mid-write leaves a file resume cannot read.
:class:`AtomicDetectionTrainer` writes them under temporary names and renames, so ``weights/last.pt`` is always
a whole checkpoint. It is passed as ``YOLO.train(trainer=...)`` (resume builds the same class), and it lives at
module level so ultralytics' multi-GPU launcher can import it by name.
"""

from __future__ import annotations

import os

from hybridcxr.detect.ultralytics_env import setup_ultralytics

setup_ultralytics()  # before ultralytics' first import

from ultralytics.models.yolo.detect import DetectionTrainer  # noqa: E402
from ultralytics.utils import DEFAULT_CFG  # noqa: E402


class AtomicDetectionTrainer(DetectionTrainer):
    """``DetectionTrainer`` whose checkpoints are written to a temporary file, then renamed into place, and
    which keeps the data-loading workers it is given on the CPU (ultralytics sets them to 0 there)."""

    def __init__(self, cfg=DEFAULT_CFG, overrides=None, _callbacks=None):  # type: ignore[no-untyped-def]
        super().__init__(cfg, overrides, _callbacks)
        if self.device.type == "cpu" and overrides and "workers" in overrides:
            self.args.workers = int(overrides["workers"])

    def save_model(self):  # type: ignore[no-untyped-def]
        """Save ``last.pt`` (and ``best.pt``) through temporary names: a reader never sees half a file."""
        final = {"last": self.last, "best": self.best}
        temp = {k: v.with_name(f".{v.name}.{os.getpid()}.tmp") for k, v in final.items()}
        self.last, self.best = temp["last"], temp["best"]
        try:
            result = super().save_model()
        finally:
            self.last, self.best = final["last"], final["best"]
        for key, tmp in temp.items():
            if tmp.exists():
                os.replace(tmp, final[key])
        return result
