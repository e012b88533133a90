"""The ``hybridcxr`` command line: a thin face over the library, one command per job.

Exit codes: 0 done; 1 bad input (the message names the file and the problem); 2 usage error, including a
setting that is unknown, mistyped or not one of its choices; 3 finished, but some inputs were skipped (listed
at the end).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from hybridcxr import __version__
from hybridcxr.commands import console, default, errors, fail, finish_batch, open_detector, out, show_progress
from hybridcxr.config import Fusion, LabelRule, Runtime
from hybridcxr.findings import VINDR_PCXR_VIEWS
from hybridcxr.lungs.cli import register as register_lungs
from hybridcxr.pacs.cli import register_pacs

app = typer.Typer(
    name="hybridcxr",
    help="Chest X-ray AI: YOLOv8 finding detection fused with CNN embeddings and demographics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        out.print(f"hybridcxr {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
    max_pixels: Annotated[int | None, typer.Option("--max-pixels", min=1, help="Largest image decoded, width x height \\[64,000,000; env HYBRIDCXR_MAX_PIXELS]; larger files are skipped.")] = None,
) -> None:
    """Chest X-ray AI: YOLOv8 finding detection fused with CNN embeddings and demographics."""
    if max_pixels is not None:  # the environment carries it into worker processes too
        os.environ["HYBRIDCXR_MAX_PIXELS"] = str(max_pixels)


def _fractions(text: str) -> list[float]:
    """``0.8,0.1,0.1`` as numbers (their sum and count are checked with the other prepare settings)."""
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise typer.BadParameter(f"expected three fractions for train,val,test, got {text!r}") from None


@app.command()
def prepare(
    source: Annotated[str, typer.Argument(help="Dataset adapter: vindr-cxr, vindr-pcxr, nih, chestx-det10, pneumonia, coco.")],
    root: Annotated[Path, typer.Option(help="The dataset's folder, in its official layout.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the prepared dataset.")],
    labels: Annotated[Path | None, typer.Option(help="Label table, where not at its official place under --root.")] = None,
    boxes: Annotated[Path | None, typer.Option(help="Box table, where not at its official place under --root.")] = None,
    extra_boxes: Annotated[list[Path] | None, typer.Option("--extra-boxes", help="More box files from other readers (nih: ChestX-Det10 JSON).")] = None,
    size: Annotated[int | None, typer.Option(help=f"Long side of the cached images in pixels \\[{default('prepare', 'size')}].")] = None,
    bits: Annotated[int | None, typer.Option(help=f"Bit depth of the cached PNGs: 8 or 16 \\[{default('prepare', 'bits')}].")] = None,
    workers: Annotated[int | None, typer.Option(help="Decoding processes \\[all cores; 0 = in this process].")] = None,
    fusion: Annotated[Fusion | None, typer.Option(help=f"Reader fusion \\[{default('prepare', 'fusion')}].")] = None,
    iou: Annotated[float | None, typer.Option(help=f"IoU above which readers' boxes of one finding are fused \\[{default('prepare', 'iou')}; configs/datasets/ may differ].")] = None,
    label_rule: Annotated[LabelRule | None, typer.Option(help=f"Image label from readers \\[{default('prepare', 'label_rule')}].")] = None,
    split: Annotated[str | None, typer.Option(help=f"Train,val,test fractions, patient-grouped and stratified \\[{default('prepare', 'split')}].")] = None,
    seed: Annotated[int | None, typer.Option(help=f"Seed of the split \\[{default('prepare', 'seed')}].")] = None,
    keep_official_test: Annotated[bool | None, typer.Option("--keep-official-test/--resplit-test", help="Keep the dataset's own test split \\[configs/prepare.yaml].")] = None,
    split_tables: Annotated[str | None, typer.Option(help="Your own split tables, train,val,test (or train,test: val carved from train's patients), e.g. train-small.csv,valid-small.csv,test.csv; refused when a patient is in two.")] = None,
    patient_column: Annotated[str | None, typer.Option(help="The split tables' patient column \\[found by its usual names: Patient ID, PatientId, patient_id].")] = None,
    split_from: Annotated[Path | None, typer.Option(help="A prepared folder of the same images whose splits to take (e.g. vindr-pcxr's lesion view for its diagnosis view), so one image is in one split in both.")] = None,
    findings: Annotated[str | None, typer.Option(help="vindr-pcxr only: diagnoses (image level, no boxes: for the classifier), lesions (the 36 boxed paediatric lesions: for the detector) or lesions-adult (the lesions as VinDr-CXR's 14 findings, the rest left out: to test an adult detector on children) \\[diagnoses].")] = None,
    allow_modality: Annotated[bool, typer.Option(help="Read DICOMs whose Modality is not a radiograph.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Decode, split (patient-grouped) and fuse readers' boxes into a YOLO dataset plus manifest."""
    if findings is not None and (source != "vindr-pcxr" or findings not in VINDR_PCXR_VIEWS):
        raise typer.BadParameter(f"--findings is {', '.join(VINDR_PCXR_VIEWS)}, for vindr-pcxr only "
                                 f"(got {findings!r} for {source})")
    from hybridcxr.data.prepare import PrepareOptions
    from hybridcxr.data.prepare import prepare as run_prepare
    from hybridcxr.data.sources import load_source

    with errors():
        options = PrepareOptions(
            size=size, bits=bits, fusion=fusion, iou=iou, label_rule=label_rule,
            split=_fractions(split) if split is not None else None, seed=seed, keep_official_test=keep_official_test,
            dataset=source, allow_modality=allow_modality, progress=show_progress(progress),
            split_tables=[Path(p) for p in split_tables.split(",")] if split_tables else None,
            patient_column=patient_column, split_from=split_from, **({"workers": workers} if workers is not None else {}))
        extra = {"extra_boxes": list(extra_boxes)} if extra_boxes else {}
        extra |= {"findings": findings} if findings is not None else {}
        tables = load_source(source, root, labels=labels, boxes=boxes, label_rule=options.label_rule, **extra)
        result = run_prepare(tables, out_dir, options)
    finish_batch(result)


@app.command("demo-data")
def demo_data(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the phantom dataset into.")],
    n: Annotated[int, typer.Option("--n", help="Number of phantom radiographs.")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same files).")] = 0,
    layout: Annotated[str, typer.Option(help="Dataset layout: vindr-cxr (PhysioNet DICOMs), vindr-cxr-kaggle (train.csv), vindr-pcxr, nih (PNGs and tables) or pneumonia (JPEG folders).")] = "vindr-cxr",
) -> None:
    """Write synthetic phantom chest radiographs in a dataset's own layout (default VinDr-CXR DICOMs; no downloads)."""
    from hybridcxr.data.phantom_layouts import LAYOUTS, make_layout_dataset

    if layout not in LAYOUTS:
        raise typer.BadParameter(f"--layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    with errors():
        summary = make_layout_dataset(out_dir, layout, n=n, seed=seed, progress=show_progress(True))
    parts = [f"{count} {split}" for split, count in summary.splits.items()]
    splits = " and ".join([", ".join(parts[:-1]), parts[-1]] if len(parts) > 1 else parts)
    what = "phantom DICOMs" if layout.startswith("vindr") else "phantom images"
    where = "" if layout == "vindr-cxr" else f" in the {layout} layout"
    out.print(f"Wrote {splits} {what} ({summary.n_patients} synthetic patients) to {out_dir}{where}", highlight=False)
    out.print(f"Prepare them with: {summary.prepare_command}", highlight=False)


@app.command("check-leakage")
def check_leakage(
    tables: Annotated[list[Path], typer.Argument(help="Split tables (CSV), e.g. train.csv valid.csv test.csv.")],
    patient_column: Annotated[str | None, typer.Option(
        help="The patient column (default: found by its usual names: Patient ID, PatientId, patient_id).")] = None,
) -> None:
    """Refuse split tables that share a patient: list the patients and exit 1; exit 0 when none does."""
    from hybridcxr.data.leakage import read_split_tables, shared_patients

    with errors():
        frames = read_split_tables(tables)
        shared = shared_patients(frames, patient_column)
    for name, frame in frames.items():
        out.print(f"{name}: {len(frame)} rows", highlight=False)
    if not shared:
        out.print(f"no patient is in more than one of the {len(frames)} tables", highlight=False)
        return
    console.print(f"[red]leakage:[/] {len(shared)} patients are in more than one table:", highlight=False)
    for patient, names in list(shared.items())[:50]:
        console.print(f"  {patient}: {', '.join(names)}", highlight=False)
    if len(shared) > 50:
        console.print(f"  ... and {len(shared) - 50} more", highlight=False)
    raise typer.Exit(1)


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for everything the demo writes (re-running resumes).")] = Path("demo-out"),
    size: Annotated[str, typer.Option(help="small (about 3 minutes on 2 CPU cores) or medium (600 images, 60 detector epochs, 30 trials).")] = "small",
    seed: Annotated[int, typer.Option(help="Seed of the phantoms, the split and the training.")] = 0,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """The main job on built-in phantom data: prepare, train, tune, detect, classify, evaluate; no downloads."""
    from rich.table import Table

    from hybridcxr.demo import SIZES, run_demo

    if size not in SIZES:
        raise typer.BadParameter(f"--size must be one of {', '.join(SIZES)}, not {size!r}")
    with errors():
        result = run_demo(out_dir, size, seed=seed, progress=show_progress(progress),  # type: ignore[arg-type]
                          log=lambda line: console.print(line, highlight=False))
    metrics = Table(title=f"hybridcxr demo ({size}): phantom data, models trained from scratch for minutes")
    metrics.add_column("metric")
    metrics.add_column("value", justify="right")
    for name, value in result.metrics.items():
        metrics.add_row(name, f"{value:.3f}")
    stages = Table(title="time per stage")
    stages.add_column("stage")
    stages.add_column("seconds", justify="right")
    for s in result.stages:
        stages.add_row(s.name, "done before" if s.skipped else f"{s.seconds:.1f}")
    stages.add_row("total", f"{result.seconds:.1f}")
    outputs = Table(title="outputs")
    outputs.add_column("what")
    outputs.add_column("where")
    for name, path in result.outputs.items():
        outputs.add_row(name, str(path))
    for table in (metrics, stages, outputs):
        out.print(table)
    out.print(f"Summary: {out_dir / 'summary.md'}", highlight=False)


train_app = typer.Typer(help="Train a model: the detector, the fusion classifier or the lung segmenter.",
                        no_args_is_help=True)
evaluate_app = typer.Typer(help="Score predictions against ground truth, the way the field reports them.",
                           no_args_is_help=True)
app.add_typer(train_app, name="train")
app.add_typer(evaluate_app, name="evaluate")
register_lungs(app, train_app)  # `train lungs` and `segment` live beside their package (hybridcxr/lungs/cli.py)
register_pacs(app)  # `pacs` lives beside its package (hybridcxr/pacs/cli.py)


@train_app.command("detector")
def train_detector_cmd(
    data: Annotated[Path, typer.Option(help="Prepared dataset folder (from `hybridcxr prepare`) or its data.yaml.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Run folder; an unfinished run there is resumed.")],
    model: Annotated[str | None, typer.Option(help="yolov8{n,s,m,l,x}.yaml (from scratch) or a local .pt \\[yolov8n.yaml].")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs \\[configs/detector.yaml: 100].")] = None,
    imgsz: Annotated[int | None, typer.Option(help="Image size for training and inference \\[512].")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value settings of configs/detector.yaml, e.g. fliplr=0.5 batch=32.")] = None,
) -> None:
    """Train the YOLOv8 finding detector on fused reader boxes (CUDA+AMP when present, else all CPU cores)."""
    from hybridcxr.config import parse_overrides
    from hybridcxr.detect.train import detector_config, train_detector

    with errors():
        settings = parse_overrides(overrides or [])
        settings.update({k: v for k, v in {"model": model, "epochs": epochs, "imgsz": imgsz}.items() if v is not None})
        run = train_detector(data, out_dir, detector_config(settings))
    out.print(str(run), highlight=False)


@train_app.command("classifier")
def train_classifier_cmd(
    data: Annotated[Path, typer.Option(help="Prepared dataset folder (from `hybridcxr prepare`).")],
    detector: Annotated[Path, typer.Option(help="Detector run folder or its .safetensors weights.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Run folder (self-contained: holds the detector and CNN too).")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value settings of configs/classifier.yaml, e.g. lr=3e-4 groups=\\[cnn,age,sex].")] = None,
    config_file: Annotated[Path | None, typer.Option("--config", help="YAML of classifier settings, e.g. `tune`'s best_config.yaml.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train the fusion classifier (detector features + ResNet-18 + age/sex) with weighted BCE."""
    from hybridcxr.classify.train import classifier_config, train_classifier
    from hybridcxr.config import parse_overrides, read_config_file

    with errors():
        settings = read_config_file(config_file) if config_file is not None else {}
        config = classifier_config({**settings, **parse_overrides(overrides or [])})
        card = train_classifier(data, detector, out_dir, config, progress=show_progress(progress))
    from hybridcxr.detect.gating import gating_summary

    out.print(f"Classifier trained: validation macro AUROC {card['val_macro_auroc']:.4f} at epoch "
              f"{card['best_epoch']}; run folder {out_dir}", highlight=False)
    out.print(gating_summary(card.get("gating") or {}), highlight=False)


@app.command()
def classify(
    inputs: Annotated[list[Path], typer.Argument(help="DICOM/PNG/JPEG files or folders (searched recursively).")],
    model: Annotated[Path, typer.Option(help="Classifier run folder (from `hybridcxr train classifier`).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")],
    age: Annotated[str | None, typer.Option(help="Patient age for every input (e.g. 62 or 062Y); default: the DICOM header.")] = None,
    sex: Annotated[str | None, typer.Option(help="Patient sex for every input (M or F); default: the DICOM header.")] = None,
    demographics: Annotated[Path | None, typer.Option(help="CSV with image_id, age, sex per image (overrides headers).")] = None,
    overlay: Annotated[bool, typer.Option(help="Write box-overlay PNGs with the probabilities.")] = False,
    dicom: Annotated[bool, typer.Option(help="Also write each overlay as a DICOM Secondary Capture in the source's study (needs --overlay).")] = False,
    truth: Annotated[Path | None, typer.Option(help="Ground-truth boxes to draw dashed on the overlays: a prepared folder or a box table CSV.")] = None,
    heatmap: Annotated[bool, typer.Option(help="Add a Grad-CAM panel of the most likely finding to each overlay (needs --overlay).")] = False,
    sr: Annotated[bool, typer.Option(help="Write a DICOM Structured Report (TID 1500: boxes, probabilities) per DICOM input as sr/ID.dcm.")] = False,
    allow_modality: Annotated[bool, typer.Option(help="Read DICOMs whose Modality is not a radiograph.")] = False,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N \\[CUDA when available].")] = None,
    runtime: Annotated[Runtime, typer.Option(help="torch; onnx: onnxruntime on the CPU, every core, on the run's `hybridcxr export` files; onnx-int8: the same with the detector in int8 (`export --int8`).")] = Runtime.torch,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Probability and decision per finding: predictions.csv (+ JSON and overlays), one decode per image."""
    from hybridcxr.detect.evaluate import read_truth
    from hybridcxr.io.demographics import parse_age, parse_sex
    from hybridcxr.pipeline import Analyzer, classify_files, collect_inputs, read_demographics, unique_ids

    if demographics is not None and (age is not None or sex is not None):
        raise typer.BadParameter("give either --demographics or --age/--sex, not both")
    if heatmap and not overlay:
        raise typer.BadParameter("--heatmap draws on the overlays: add --overlay")
    if dicom and not overlay:
        raise typer.BadParameter("--dicom exports the overlays: add --overlay")
    if truth is not None and not overlay:
        raise typer.BadParameter("--truth is drawn on the overlays: add --overlay")
    with errors():
        table = read_demographics(demographics) if demographics is not None else None
        if age is not None or sex is not None:
            given_age = parse_age(age, source="--age") if age is not None else None
            given_sex = parse_sex(sex) if sex is not None else None
            if sex is not None and given_sex is None:
                raise typer.BadParameter(f"--sex must be M or F, not {sex!r}")
            table = {i: (given_age, given_sex) for i in unique_ids(collect_inputs(inputs)).values()}
        analyzer = Analyzer(model, device=device, runtime=runtime)
        if heatmap and "cnn" not in analyzer.config.groups:
            raise typer.BadParameter(f"{model}: this classifier does not use the CNN: no Grad-CAM heatmap")
        boxes = read_truth(truth, None)[0] if truth is not None else None
        if analyzer.unlearned:
            console.print(f"[yellow]no decision[/] for {', '.join(analyzer.unlearned)}: no positive image in the "
                          "training split, so the model has not learned them (their probabilities are not "
                          "calibrated evidence)", highlight=False)
        result = classify_files(inputs, analyzer, out_dir, demographics=table, overlay=overlay, heatmap=heatmap,
                                dicom=dicom, truth=boxes, sr=sr, allow_modality=allow_modality,
                                progress=show_progress(progress))
    finish_batch(result)


@app.command()
def serve(
    model: Annotated[Path, typer.Option(help="Classifier run folder (from `hybridcxr train classifier`).")],
    host: Annotated[str, typer.Option(help="Address to listen on (keep 127.0.0.1 unless behind a proxy).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    max_upload_mb: Annotated[float, typer.Option(help="Largest accepted upload in MiB (larger ones get 413).")] = 50.0,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N \\[CUDA when available].")] = None,
    allowed_host: Annotated[list[str] | None, typer.Option("--allowed-host", help="A Host name clients use, besides the --host address's own (repeatable; needed with --host 0.0.0.0). Other Host headers get 400.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds a client may take over its request headers or stall in its body (then 408).")] = 30.0,
    max_decodes: Annotated[int, typer.Option(help="Uploads decoded at once; decoded images waiting for or in the networks hold at most this many full-size images' pixels.")] = 2,
    batch_window_ms: Annotated[float, typer.Option(help="Milliseconds a batch waits for more requests after its first (0 to 10000).")] = 10.0,
    max_batch: Annotated[int, typer.Option(help="Requests analyzed together in one batch at most (1 to 64; 1: one at a time, batching off).")] = 8,
    runtime: Annotated[Runtime, typer.Option(help="torch; onnx: onnxruntime on the CPU, every core, on the run's `hybridcxr export` files; onnx-int8: the same with the detector in int8 (`export --int8`).")] = Runtime.torch,
) -> None:
    """Serve the classifier over HTTP (FastAPI): POST /v1/analyze, overlays, a viewer page at /, docs at /docs.

    Set env HYBRIDCXR_API_KEY to require header X-API-Key on /v1/*. Requests that arrive together are analyzed
    as one batch (--max-batch, --batch-window-ms); GET /healthz counts the batches.
    """
    from hybridcxr.serve.app import serve as run_server
    from hybridcxr.serve.guards import trusted_hosts

    if max_upload_mb <= 0:
        raise typer.BadParameter(f"--max-upload-mb must be positive, not {max_upload_mb}")
    if timeout <= 0 or max_decodes < 1:
        raise typer.BadParameter(f"--timeout and --max-decodes must be positive, not {timeout}, {max_decodes}")
    from hybridcxr.serve.batching import check_batching

    try:
        trusted_hosts(host, allowed_host)
        check_batching(batch_window_ms, max_batch)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    with errors():
        run_server(model, host=host, port=port, max_upload_bytes=int(max_upload_mb * (1 << 20)), device=device,
                   allowed_hosts=allowed_host, timeout=timeout, max_decodes=max_decodes,
                   batch_window_ms=batch_window_ms, max_batch=max_batch, runtime=runtime)


@app.command()
def tune(
    data: Annotated[Path, typer.Option(help="Prepared dataset folder.")],
    detector: Annotated[Path, typer.Option(help="Detector run folder or its .safetensors weights.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Run folder: study.db, features, best_config.yaml, report.")],
    trials: Annotated[int, typer.Option(help="Finished trials the study should hold (a re-run continues it).")] = 50,
    storage: Annotated[str | None, typer.Option(help="SQLAlchemy URL, e.g. postgresql+psycopg://u:p@host/db \\[sqlite in --out].")] = None,
    study: Annotated[str | None, typer.Option(help="Study name \\[configs/tune.yaml: hybridcxr-fusion].")] = None,
    workers: Annotated[int, typer.Option(help="Local worker processes on the same storage.")] = 1,
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value settings of configs/classifier.yaml every trial starts from.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar while caching features.")] = True,
    features_from: Annotated[Path | None, typer.Option(
        help="A classifier run (same detector and settings) whose CNN and feature cache seed this run.")] = None,
    config_file: Annotated[Path | None, typer.Option("--config", help="YAML of classifier settings every trial starts from, e.g. a recipe's (configs/recipes/).")] = None,
) -> None:
    """Tune the fusion head with Optuna on cached features (pruning, SQLite or PostgreSQL, many workers)."""
    from hybridcxr.config import parse_overrides, read_config_file
    from hybridcxr.tune import tune_fusion

    with errors():
        settings = read_config_file(config_file) if config_file is not None else {}
        result = tune_fusion(data, detector, out_dir, trials=trials, storage=storage, study_name=study,
                             workers=workers, overrides={**settings, **parse_overrides(overrides or [])},
                             progress=show_progress(progress), features_from=features_from)
    out.print(result, highlight=False)


@app.command()
def dashboard(
    storage: Annotated[str, typer.Option(help="The study storage: sqlite:///RUN/study.db or a PostgreSQL URL.")],
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8080,
    host: Annotated[str, typer.Option(help="Address to listen on (keep 127.0.0.1 unless behind a proxy).")] = "127.0.0.1",
) -> None:
    """Serve optuna-dashboard for a study storage on 127.0.0.1 and print its address."""
    from hybridcxr.errors import HybridCXRError
    from hybridcxr.tune import dashboard_url, start_dashboard, wait_until_up

    import signal

    server = start_dashboard(storage, host=host, port=port)

    def stop(signum: int, _frame: object) -> None:  # SIGTERM to this command stops the dashboard too
        server.terminate()
        raise typer.Exit(0)

    signal.signal(signal.SIGTERM, stop)
    try:
        wait_until_up(dashboard_url(host, port), timeout=60, process=server)
        out.print(f"Optuna dashboard: {dashboard_url(host, port)} (pid {server.pid}; Ctrl-C stops it)", highlight=False)
        server.wait()
    except (HybridCXRError, TimeoutError) as err:
        server.terminate()
        fail(err)
    except KeyboardInterrupt:
        server.terminate()


@app.command()
def detect(
    inputs: Annotated[list[Path], typer.Argument(help="DICOM/PNG/JPEG files or folders (searched recursively).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")],
    weights: Annotated[Path | None, typer.Option(help="Detector run folder or its .safetensors weights \\[the --classifier run's detector].")] = None,
    classifier: Annotated[Path | None, typer.Option(help="A classifier run: gate the boxes by its probabilities with the rule it chose on validation (detections_ungated.csv keeps the detector's own).")] = None,
    conf: Annotated[float | None, typer.Option(help="Lowest score kept \\[configs/detector.yaml: 0.05].")] = None,
    tta: Annotated[bool, typer.Option(help="Also run the flipped image and merge boxes by WBF.")] = False,
    overlay: Annotated[bool, typer.Option(help="Write box-overlay PNGs for radiologists.")] = False,
    dicom: Annotated[bool, typer.Option(help="Also write each overlay as a DICOM Secondary Capture in the source's study (needs --overlay).")] = False,
    truth: Annotated[Path | None, typer.Option(help="Ground-truth boxes to draw dashed on the overlays: a prepared folder or a box table CSV.")] = None,
    sr: Annotated[bool, typer.Option(help="Write a DICOM Structured Report (TID 1500: the boxes) per DICOM input as sr/ID.dcm.")] = False,
    allow_modality: Annotated[bool, typer.Option(help="Read DICOMs whose Modality is not a radiograph.")] = False,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N \\[CUDA when available].")] = None,
    runtime: Annotated[Runtime, typer.Option(help="torch; onnx: onnxruntime on the CPU, every core, on the run's `hybridcxr export` files; onnx-int8: the same with the detector in int8 (`export --int8`).")] = Runtime.torch,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Detect findings: detections.csv, one JSON per image and a VinDr/Kaggle submission.csv."""
    if dicom and not overlay:
        raise typer.BadParameter("--dicom exports the overlays: add --overlay")
    if truth is not None and not overlay:
        raise typer.BadParameter("--truth is drawn on the overlays: add --overlay")
    if weights is None and classifier is None:
        raise typer.BadParameter("give the detector (--weights) or a classifier run holding one (--classifier)")
    if tta and classifier is not None:
        raise typer.BadParameter("--tta is not combined with --classifier (the gating rule was chosen without it)")
    from hybridcxr.detect.evaluate import read_truth
    from hybridcxr.pipeline import detect_files

    with errors():
        detector, analyzer = open_detector(weights, classifier, device, runtime)
        boxes = read_truth(truth, None)[0] if truth is not None else None
        result = detect_files(inputs, detector, out_dir, conf=conf, tta=tta, overlay=overlay, dicom=dicom, truth=boxes,
                              sr=sr, allow_modality=allow_modality, progress=show_progress(progress),
                              analyzer=analyzer)
    finish_batch(result)


@app.command("export")
def export_cmd(
    run: Annotated[Path, typer.Argument(help="A classifier run (its detector, CNN and head) or a detector run.")],
    fmt: Annotated[str, typer.Option("--format", help="onnx (the only format so far).")] = "onnx",
    int8: Annotated[bool, typer.Option("--int8", help="Also the detector in int8 (for --runtime onnx-int8), calibrated and checked on real images.")] = False,
    calibration: Annotated[Path | None, typer.Option(help="With --int8: a folder of images to calibrate and check on (default: the detector's prepared train and val images).")] = None,
) -> None:
    """Write the run's networks as ONNX beside their cards, each checked against PyTorch (see --runtime onnx)."""
    from hybridcxr.export.onnx import export_run

    if calibration is not None and not int8:
        raise typer.BadParameter("--calibration is for --int8: add --int8")
    with errors():
        result = export_run(run, fmt, int8=int8, calibration=calibration)
    out.print(str(result), highlight=False)


@evaluate_app.command("detector")
def evaluate_detector_cmd(
    pred: Annotated[Path, typer.Option(help="detections.csv or submission.csv, or the `detect` output folder.")],
    truth: Annotated[Path, typer.Option(help="Prepared dataset folder (its boxes.csv and manifest) or a box table CSV.")],
    split: Annotated[str | None, typer.Option(help="Evaluate the images of this split of a prepared dataset \\[those predicted].")] = None,
    iou: Annotated[float, typer.Option(help="IoU a prediction must exceed to match (VinDr: 0.4).")] = 0.4,
    interpolation: Annotated[str, typer.Option(help="voc2010 (the competition's) or coco101 (pycocotools').")] = "voc2010",
    report: Annotated[Path | None, typer.Option(help="Also write the report as Markdown here.")] = None,
) -> None:
    """VinDr-CXR mAP@0.4 per finding and mean (Kaggle's metric), plus FROC at 0.5/1/2/4 FP per image; a folder of
    `detect --classifier` is scored gated and ungated, side by side."""
    from hybridcxr.detect.evaluate import comparison_markdown, evaluate_gating
    from hybridcxr.files import write_text

    if interpolation not in ("voc2010", "coco101"):
        raise typer.BadParameter(f"--interpolation must be voc2010 or coco101, not {interpolation!r}")
    with errors():
        results = evaluate_gating(pred, truth, split=split, iou_thr=iou, interpolation=interpolation)
    parts = [(f"## {name}\n\n" if len(results) > 1 else "") + r.to_markdown() for name, r in results.items()]
    if len(results) > 1:
        parts.append("## side by side\n\n" + comparison_markdown(results))
    text = "\n\n".join(parts)
    out.print(text.replace("**", ""), highlight=False)
    if report is not None:
        write_text(report, text + "\n")


@evaluate_app.command("classifier")
def evaluate_classifier_cmd(
    model: Annotated[Path, typer.Option(help="Classifier run folder.")],
    data: Annotated[Path, typer.Option(help="Prepared dataset folder.")],
    split: Annotated[str, typer.Option(help="Split to score (never the one thresholds were chosen on).")] = "test",
    out_dir: Annotated[Path | None, typer.Option("--out", help="Report folder \\[RUN/report-SPLIT].")] = None,
    ablation: Annotated[bool, typer.Option(help="Retrain the head without demographics / detector / CNN features.")] = True,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for the 95% confidence intervals.")] = 1000,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Per-finding AUROC with bootstrap CIs, F1 at the stored thresholds, ROC/PR plots, subgroups, ablations; a one-finding run adds accuracy, sensitivity, specificity and a confusion matrix."""
    from hybridcxr.classify.evaluate import evaluate_classifier

    with errors():
        report = evaluate_classifier(model, data, split=split, out=out_dir, ablation=ablation, n_boot=n_boot,
                                     progress=show_progress(progress))
    out.print(f"Report: {report}", highlight=False)


if __name__ == "__main__":  # pragma: no cover
    app()
