"""The PACS job: find studies, skip those already answered, retrieve, analyze, store the answers back.

One pass (:func:`run_pacs`) over the studies a :class:`~hybridcxr.pacs.remote.Query` selects, through either
client (:class:`~hybridcxr.pacs.remote.Pacs`) and the same :class:`~hybridcxr.analyzer.Analyzer` the CLI and
the service use. Idempotent twice over: a study the local state lists for this model version is passed over
without a query, and one whose study already holds our SR is recorded and passed over. A study is marked done
only once everything made for it is stored (and seen in the PACS), and a pass with a failed study does not
move the "last run" mark, so that ``--since last`` and ``--watch`` try it again. A series that is not a radiograph is
skipped with the reason; a store the PACS refuses (or any other error of one study) fails that study (listed) and
the pass goes on; an unreachable PACS, refused credentials or a failed search for studies end the pass (with the
summary so far).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from pydicom.dataset import Dataset

from hybridcxr.dicom_out.identity import MANUFACTURER
from hybridcxr.errors import HybridCXRError, PacsAuthError, PacsError, PacsUnreachableError
from hybridcxr.pacs.remote import NON_IMAGE_MODALITIES, RADIOGRAPH_MODALITIES, Pacs, Query, Series
from hybridcxr.pacs.state import PacsState

if TYPE_CHECKING:
    from hybridcxr.analyzer import Analysis, Analyzer

AnyAnalyzer = Union["Analyzer", "LazyAnalyzer"]

OUTPUTS = ("sr", "sc")
"""What ``--store`` may name: the Structured Report (always wanted) and the Secondary Capture overlay."""


@dataclass
class PacsSummary:
    """What one pass did, study by study; ``skipped`` and ``failed`` are the lines the CLI lists."""

    server: str
    model: str
    stored: list[str] = field(default_factory=list)
    """Studies answered in this pass."""
    unchanged: list[str] = field(default_factory=list)
    """Studies already answered by this model version (local state, or our SR found in the study)."""
    objects: int = 0
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    aborted: str | None = None
    """Why the pass ended early (PACS unreachable, credentials refused), or None."""

    def __str__(self) -> str:
        lines = [f"PACS {self.server}, model {self.model}: {len(self.stored)} studies answered "
                 f"({self.objects} objects stored), {len(self.unchanged)} already answered, "
                 f"{len(self.skipped)} skipped, {len(self.failed)} failed"]
        lines += [f"  skipped: {line}" for line in self.skipped]
        lines += [f"  failed: {line}" for line in self.failed]
        if self.aborted:
            lines.append(f"  stopped early: {self.aborted}")
        return "\n".join(lines)


@dataclass(frozen=True)
class PacsJob:
    """The settings of a pass: which studies and what to store."""

    query: Query = Query()
    store: Sequence[str] = ("sr",)
    since_last_run: bool = False
    """Look only at studies dated from the day of the last run on (the state remembers it)."""


def run_pacs(pacs: Pacs, analyzer: AnyAnalyzer, state: PacsState, job: PacsJob,
             log: Callable[[str], None] = lambda line: None) -> PacsSummary:
    """One pass over the studies ``job`` selects; the summary (``aborted`` set when the PACS failed us)."""
    started = datetime.now(timezone.utc)
    model = analyzer.model_version
    summary = PacsSummary(pacs.server, model)
    query = job.query
    if job.since_last_run and query.study_uid is None:
        last = state.last_run(pacs.server, model)
        query = Query(since=last.date()) if last is not None else query
    try:
        for study in pacs.find_studies(query):
            try:
                _answer_study(pacs, analyzer, state, job, study.uid, summary, log)
            except (PacsUnreachableError, PacsAuthError):
                raise
            except (HybridCXRError, ValueError) as err:  # this study only: a refused store, a failed query, a
                summary.failed.append(f"study {study.uid}: {err}")  # source the writers cannot cite (ValueError)
    except (PacsUnreachableError, PacsAuthError, PacsError) as err:
        summary.aborted = str(err)
        return summary
    if not summary.failed:  # else the next "since the last run" must still see the studies that failed
        state.record_run(pacs.server, model, started)
    return summary


def _answer_study(pacs: Pacs, analyzer: AnyAnalyzer, state: PacsState, job: PacsJob, study_uid: str, summary: PacsSummary,
                  log: Callable[[str], None]) -> None:
    """Answer one study unless already answered; records the outcome in ``summary`` (and the state)."""
    model = analyzer.model_version
    if state.is_done(pacs.server, study_uid, model):
        summary.unchanged.append(study_uid)
        return
    series = pacs.series(study_uid)
    radiographs = _radiographs(series, study_uid, summary)
    if not radiographs:
        return
    if pacs.answered(study_uid, model):
        state.mark_done(pacs.server, study_uid, model, "found in the study", 0)
        summary.unchanged.append(study_uid)
        log(f"study {study_uid}: our SR is already there")
        return
    with tempfile.TemporaryDirectory(prefix="hybridcxr-pacs-") as tmp:
        outputs = _analyze_series(pacs, analyzer, radiographs, Path(tmp), job.store, summary)
        if not outputs:
            return
        pacs.store(outputs)  # a refusal fails this study (run_pacs lists it); nothing is marked
    state.mark_done(pacs.server, study_uid, model, "stored", len(outputs))
    summary.stored.append(study_uid)
    summary.objects += len(outputs)
    log(f"study {study_uid}: stored {len(outputs)} object(s)")


def _radiographs(series: Sequence[Series], study_uid: str, summary: PacsSummary) -> list[Series]:
    """The study's CR/DX series not written by us; other image series are listed as skipped, with the reason."""
    keep = []
    for s in series:
        if s.manufacturer == MANUFACTURER or s.modality in NON_IMAGE_MODALITIES:
            continue
        if s.modality in RADIOGRAPH_MODALITIES:
            keep.append(s)
        else:
            summary.skipped.append(f"study {study_uid} series {s.uid}: modality {s.modality or 'unknown'} is not "
                                   f"a projection radiograph ({', '.join(RADIOGRAPH_MODALITIES)})")
    return keep


def _analyze_series(pacs: Pacs, analyzer: AnyAnalyzer, series: Sequence[Series], folder: Path, kinds: Sequence[str],
                    summary: PacsSummary) -> list[Dataset]:
    """Retrieve the series into ``folder``, analyze every image, and make the objects to store."""
    from hybridcxr.dicom_out.study import read_source

    paths = [p for s in series for p in pacs.retrieve(s, folder)]
    bad: list[str] = []

    def on_error(path: Path, err: HybridCXRError) -> None:
        bad.append(f"{path.stem}: {getattr(err, 'problem', err)}")

    sources = {p.stem: p for p in paths}
    outputs: list[Dataset] = []
    for analysis in analyzer.analyze_paths(paths, on_error=on_error, image_ids={p: p.stem for p in paths}):
        source = read_source(sources[analysis.image_id])
        outputs += [make_output(kind, analysis, source, analyzer.model_version) for kind in kinds]
    study = series[0].study_uid if series else "?"
    summary.skipped += [f"study {study} instance {line}" for line in bad]
    return outputs


def make_output(kind: str, analysis: Analysis, source: Dataset, model: str) -> Dataset:
    """The DICOM object of ``kind`` ("sr" or "sc") answering ``analysis`` of ``source``, in its study."""
    if kind == "sr":
        from hybridcxr.dicom_out.sr import sr_from_analysis

        return sr_from_analysis(analysis, source, model=model)
    if kind == "sc":
        from hybridcxr.dicom_out.secondary_capture import sc_from_analysis

        return sc_from_analysis(analysis, source, model=model)
    raise ValueError(f"unknown output {kind!r}; expected one of {', '.join(OUTPUTS)}")


class LazyAnalyzer:
    """An :class:`~hybridcxr.analyzer.Analyzer` loaded on first use: a pass with nothing new to answer (the
    usual poll) reads only the run's card, for its model version, and loads no model."""

    def __init__(self, run: str | Path, device: str | None = None) -> None:
        from hybridcxr.dicom_out.identity import model_version
        from hybridcxr.layout import ClassifierLayout

        self.run, self.device = run, device
        self.model_version: str = model_version(ClassifierLayout(run).require().card)
        self._analyzer: Analyzer | None = None

    def analyze_paths(self, paths: Sequence[Path], **options: Any) -> Iterator[Analysis]:
        """:meth:`Analyzer.analyze_paths <hybridcxr.analyzer.Analyzer.analyze_paths>`, loading the models first."""
        if self._analyzer is None:
            from hybridcxr.analyzer import Analyzer

            self._analyzer = Analyzer(self.run, device=self.device)
        return self._analyzer.analyze_paths(paths, **options)
