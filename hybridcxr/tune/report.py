"""A static report of a study: optuna's plots as PNGs (and interactive HTML where plotly is installed),
an offline ``study.html`` and ``trials.csv``; readable without a server, unlike the dashboard."""

from __future__ import annotations

import base64
import html
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState

from hybridcxr.files import atomic_path, write_csv, write_text


def _can_rank_importances(study: optuna.Study) -> bool:
    """Parameter importances need two complete trials and a parameter that took two values among them."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return False
    names = set.intersection(*(set(t.params) for t in complete))
    return any(len({repr(t.params[n]) for t in complete}) > 1 for n in names)


def write_study_report(study: optuna.Study, out_dir: str | Path) -> list[Path]:
    """A static report of the study in ``out_dir``; returns the files written.

    PNGs (optuna.visualization.matplotlib): optimisation history, per-epoch validation AUROC of every trial,
    parallel coordinates and, where they can be ranked, parameter importances. Where plotly is installed,
    the interactive versions as self-contained HTML (plotly.js inlined). Always ``study.html`` (the PNGs
    embedded, the top trials as a table; no network needed) and ``trials.csv``.
    """
    import optuna.visualization.matplotlib as vm

    from hybridcxr.report.plots import pyplot, save_figure

    pyplot()  # headless backend before optuna touches pyplot
    out = Path(out_dir)
    plots: dict[str, Callable[[optuna.Study], Any]] = {
        "optimization_history": vm.plot_optimization_history,
        "intermediate_values": vm.plot_intermediate_values,
        "parallel_coordinate": vm.plot_parallel_coordinate,
    }
    if _can_rank_importances(study):
        plots["param_importances"] = vm.plot_param_importances
    written: list[Path] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)  # cosmetic: e.g. a flat axis when one trial is complete
        for name, plot in plots.items():
            figure = plot(study).figure
            figure.set_size_inches(10, 6)
            figure.tight_layout()
            written.append(save_figure(figure, out / f"{name}.png"))
        interactive = _write_plotly(study, out, list(plots))
    written += interactive
    written.append(write_csv(out / "trials.csv", study.trials_dataframe()))
    written.append(write_text(out / "study.html", _study_html(study, [p for p in written if p.suffix == ".png"],
                                                                 interactive)))
    return written


def _write_plotly(study: optuna.Study, out: Path, names: list[str]) -> list[Path]:
    """The plotly versions of the named plots as standalone HTML; none where plotly is not installed."""
    import optuna.visualization as vp

    if not vp.is_available():
        return []
    written = []
    for name in names:
        figure = getattr(vp, f"plot_{name}")(study)
        with atomic_path(out / f"{name}.html") as tmp:
            figure.write_html(str(tmp), include_plotlyjs=True, full_html=True)
        written.append(out / f"{name}.html")
    return written


def _study_html(study: optuna.Study, pngs: list[Path], interactive: list[Path], top: int = 10) -> str:
    """One self-contained page: state counts, the PNGs (inline), links to interactive plots, the top trials."""
    trials = study.get_trials(deepcopy=False)
    counts = {s.name: sum(t.state == s for t in trials) for s in TrialState if any(t.state == s for t in trials)}
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value, reverse=True)
    names = sorted({k for t in complete[:top] for k in t.params})
    rows = []
    for t in complete[:top]:
        seconds = t.duration.total_seconds() if t.duration is not None else float("nan")
        cells = [str(t.number), f"{t.value:.4f}", str(t.user_attrs.get("best_epoch", "")), f"{seconds:.1f}"]
        cells += [_cell(t.params.get(k, "")) for k in names]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["trial", "val macro AUROC", "best epoch", "seconds", *names])
    images = "".join(
        f'<h2>{html.escape(p.stem.replace("_", " "))}</h2><img alt="{html.escape(p.stem)}" '
        f'src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">' for p in pngs)
    links = "".join(f'<li><a href="{html.escape(p.name)}">{html.escape(p.stem)}</a></li>' for p in interactive)
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>Optuna study {html.escape(study.study_name)}</title><style>"
        "body{font-family:sans-serif;margin:2em} table{border-collapse:collapse} td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:right} img{max-width:100%}</style></head><body>"
        f"<h1>Optuna study {html.escape(study.study_name)}</h1>"
        f"<p>{html.escape(', '.join(f'{v} {k}' for k, v in counts.items()) or 'no trials')}</p>"
        + (f"<h2>Interactive plots</h2><ul>{links}</ul>" if links else "")
        + f"<h2>Top {min(top, len(complete))} complete trials</h2><table><tr>{head}</tr>{''.join(rows)}</table>"
        + images + "</body></html>\n"
    )


def _cell(value: Any) -> str:
    """A parameter value as a table cell: floats to four significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
