"""The ``hybridcxr pacs`` command: answer a PACS's radiograph studies with our SR (and Secondary Capture).

:func:`register_pacs` adds it to the main app (``hybridcxr/cli.py`` calls it). Exit codes as everywhere
(``hybridcxr/commands.py``): 0 done; 1 the PACS failed us (unreachable, credentials refused, a store refused:
what was not stored is not marked done); 2 a usage error; 3 done, but some series were skipped (not a
radiograph, unreadable), listed in the summary.
"""

from __future__ import annotations

import time
from datetime import date, datetime
from pathlib import Path
from typing import Annotated

import typer

from hybridcxr.commands import EXIT_INPUT, EXIT_SKIPPED, console, errors, out

_ENV = "HYBRIDCXR_PACS_"


def _since(text: str | None) -> tuple[date | None, bool]:
    """``--since``: a date (YYYY-MM-DD or YYYYMMDD), or ``last`` for "since the last run"."""
    if text is None:
        return None, False
    if text.strip().lower() == "last":
        return None, True
    for form in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return datetime.strptime(text.strip(), form).date(), False
        except ValueError:
            pass
    raise typer.BadParameter(f"--since wants a date (2024-05-31 or 20240531) or 'last', not {text!r}")


def _outputs(text: str) -> tuple[str, ...]:
    """``--store sr,sc`` as a tuple; the SR is always among them (it is what marks a study answered)."""
    from hybridcxr.pacs.job import OUTPUTS

    kinds = tuple(dict.fromkeys(k.strip().lower() for k in text.split(",") if k.strip()))
    unknown = [k for k in kinds if k not in OUTPUTS]
    if unknown or "sr" not in kinds:
        raise typer.BadParameter(f"--store takes sr or sr,sc (the SR always), not {text!r}")
    return kinds


def _client(dicomweb: str | None, dimse: str | None, aet: str, called_aet: str, user: str | None,
            password: str | None, token: str | None):
    """The PACS client the options name: exactly one of --dicomweb and --dimse."""
    from hybridcxr.pacs.dicomweb import DicomWebPacs
    from hybridcxr.pacs.dimse import DimsePacs

    if (dicomweb is None) == (dimse is None):
        raise typer.BadParameter("give exactly one of --dicomweb URL and --dimse HOST:PORT")
    if dicomweb is not None:
        return DicomWebPacs(dicomweb, user=user, password=password, token=token)
    host, _, port = dimse.rpartition(":")  # type: ignore[union-attr]
    if not host or not port.isdigit():
        raise typer.BadParameter(f"--dimse wants HOST:PORT, not {dimse!r}")
    return DimsePacs(host, int(port), aet=aet, called_aet=called_aet)


def _default_state() -> Path:
    from hybridcxr.detect.ultralytics_env import hybridcxr_home

    return hybridcxr_home() / "pacs-state.sqlite"


def pacs_cmd(
    model: Annotated[Path, typer.Option(help="Classifier run folder (from `hybridcxr train classifier`).")],
    dicomweb: Annotated[str | None, typer.Option(help="DICOMweb root URL, e.g. http://pacs:8042/dicom-web.")] = None,
    dimse: Annotated[str | None, typer.Option(help="DICOM node HOST:PORT (C-FIND, C-GET, C-STORE).")] = None,
    aet: Annotated[str, typer.Option(help="Our AE title (DIMSE); the PACS must know it.")] = "HYBRIDCXR",
    called_aet: Annotated[str, typer.Option(help="The PACS's AE title (DIMSE).")] = "ANY-SCP",
    study: Annotated[str | None, typer.Option(help="Only this Study Instance UID.")] = None,
    since: Annotated[str | None, typer.Option(help="Studies dated from this day on (2024-05-31), or 'last': since the last run.")] = None,
    store: Annotated[str, typer.Option(help="What to store back: sr, or sr,sc (also the Secondary Capture overlay).")] = "sr",
    watch: Annotated[bool, typer.Option(help="Poll the PACS until interrupted (Ctrl-C).")] = False,
    interval: Annotated[float, typer.Option(min=0, help="Seconds between polls with --watch.")] = 60.0,
    passes: Annotated[int | None, typer.Option(min=1, help="With --watch: stop after this many passes.")] = None,
    user: Annotated[str | None, typer.Option(envvar=f"{_ENV}USER", help="DICOMweb basic-auth user.")] = None,
    password: Annotated[str | None, typer.Option(envvar=f"{_ENV}PASSWORD", show_default=False, help="DICOMweb basic-auth password (better in the environment).")] = None,
    token: Annotated[str | None, typer.Option(envvar=f"{_ENV}TOKEN", show_default=False, help="DICOMweb bearer token (better in the environment).")] = None,
    state: Annotated[Path | None, typer.Option(help="SQLite state of answered studies [$HYBRIDCXR_HOME/pacs-state.sqlite].")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N (default: CUDA when available).")] = None,
) -> None:
    """Find CR/DX studies in a PACS, analyze them, store our SR (and Secondary Capture) back; idempotent."""
    from hybridcxr.pacs.job import LazyAnalyzer, PacsJob, run_pacs
    from hybridcxr.pacs.remote import Query
    from hybridcxr.pacs.state import PacsState

    day, since_last = _since(since)
    if study is not None and since is not None:
        raise typer.BadParameter("give --study or --since, not both")
    job = PacsJob(Query(study_uid=study, since=day), _outputs(store), since_last_run=since_last or (watch and not study))
    with errors():
        pacs = _client(dicomweb, dimse, aet, called_aet, user, password, token)
        analyzer = LazyAnalyzer(model, device=device)
        db = PacsState(state or _default_state())
        n = 0
        while True:
            summary = run_pacs(pacs, analyzer, db, job, log=lambda line: console.print(line, highlight=False))
            n += 1
            if not watch or (passes is not None and n >= passes):
                break
            if summary.stored or summary.failed or summary.aborted:
                out.print(str(summary), highlight=False)
            try:
                time.sleep(interval)
            except KeyboardInterrupt:
                break
    _finish(summary)


def _finish(summary) -> None:
    """Print the summary; exit 1 when something failed, 3 when something was skipped."""
    out.print(str(summary), highlight=False)
    if summary.failed or summary.aborted:
        raise typer.Exit(EXIT_INPUT)
    if summary.skipped:
        raise typer.Exit(EXIT_SKIPPED)


def register_pacs(app: typer.Typer) -> None:
    """Add ``pacs`` to ``app``."""
    app.command("pacs")(pacs_cmd)
