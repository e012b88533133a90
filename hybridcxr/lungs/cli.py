"""The lung commands of the ``hybridcxr`` command line: ``train lungs`` and ``segment``.

They are plain functions; :func:`register` adds them to the main app (``hybridcxr/cli.py`` calls it) or to any
typer app, e.g. a test's. Conventions (``hybridcxr/commands.py``): hybridcxr's errors print their message and exit 1,
a bad setting exits 2, a batch that skipped files lists them and exits 3.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hybridcxr.commands import default, errors, finish_batch, out, show_progress


def train_lungs_cmd(
    data: Annotated[Path, typer.Option(help="Mask dataset folder: images/, masks/ (same stems), optional CSV with patient ids.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Run folder; an unfinished run there is resumed.")],
    imgsz: Annotated[int | None, typer.Option(help=f"Network input side (configs/lungs.yaml: {default('lungs', 'imgsz')}).")] = None,
    epochs: Annotated[int | None, typer.Option(help=f"Most training epochs ({default('lungs', 'epochs')}; early stopping may end sooner).")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value settings of configs/lungs.yaml, e.g. batch=16 channels=[16,32,64,128].")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Train the lung segmenter (MONAI UNet, from scratch) on lung masks: Dice and IoU per epoch, early stopping."""
    from hybridcxr.config import load_config, parse_overrides
    from hybridcxr.lungs.train import train_lungs

    with errors():
        settings = parse_overrides(overrides or [])
        settings.update({k: v for k, v in {"imgsz": imgsz, "epochs": epochs}.items() if v is not None})
        run = train_lungs(data, out_dir, load_config("lungs", overrides=settings),
                          progress=show_progress(progress))
    out.print(str(run), highlight=False)


def segment_cmd(
    inputs: Annotated[list[Path], typer.Argument(help="DICOM/PNG/JPEG files or folders (searched recursively).")],
    model: Annotated[Path, typer.Option(help="Lung segmenter run folder (from `hybridcxr train lungs`).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")],
    overlay: Annotated[bool, typer.Option(help="Write overlay PNGs with the lung contours.")] = False,
    dicom: Annotated[bool, typer.Option(help="Also write a DICOM Segmentation in the source's study (DICOM inputs).")] = False,
    allow_modality: Annotated[bool, typer.Option(help="Read DICOMs whose Modality is not a radiograph.")] = False,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N (default: CUDA when available).")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Lung masks at the original size, lungs.csv with areas, measurements and a quality flag, one JSON per image."""
    from hybridcxr.lungs.predict import Segmenter
    from hybridcxr.lungs.segment import segment_files

    with errors():
        segmenter = Segmenter.load(model, device=device)
        result = segment_files(inputs, segmenter, out_dir, overlay=overlay, dicom=dicom,
                               allow_modality=allow_modality, progress=show_progress(progress))
    finish_batch(result)


def register(app: typer.Typer, train_app: typer.Typer) -> None:
    """Add ``segment`` to ``app`` and ``lungs`` to its ``train`` group ``train_app``."""
    train_app.command("lungs")(train_lungs_cmd)
    app.command("segment")(segment_cmd)
