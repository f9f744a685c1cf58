"""Batch processing of a whole study: segment, track, measure atrophy, compute features.

``python -m ms_core batch STUDY [--workers N] [--backend local|ray] [--ray-address ADDR]``.

Two phases: first one task per visit segments it (the costly, evenly sized step, so the
workers stay busy), then one task per patient tracks its consecutive visits, measures atrophy and
builds its feature rows (these need the patient's visits in order). Every task skips each result
that is already current, i.e. whose stored
provenance names the same input and model sha256 and settings
(:func:`ms_core.segmentation.segment.segmentation_status`,
:func:`ms_core.longitudinal.tracking.tracking_status`,
:func:`ms_core.longitudinal.atrophy.volumes_status` /
:func:`~ms_core.longitudinal.atrophy.pbvc_status`); results are written atomically under per-visit
locks, so a killed batch is resumed by running it again. A failing visit (or pair) is recorded with
its error and does not stop the rest. At the end the patients' feature rows
(``ms_core.clinical.patient_features``), measurements and prognosis score are merged into
``derivatives/ms_dash/cohort/cohort_table.{csv,parquet}`` with ``batch_report.json``.

:func:`analyse_patient` does the same work for one patient in this process, stopping at the
first error and reporting ``progress(fraction, text)``: the app's "Analyse this patient", run as
a background job (:mod:`ms_core.foundation.jobs`).

Backends: ``local`` runs the tasks in a process pool (``spawn``; each worker limited to
``threads`` CPU threads in onnxruntime, SimpleITK and BLAS); ``ray`` submits the same task as a
Ray remote function with resource hints (``num_cpus=threads``, ``num_gpus``) to a local or
remote Ray cluster, whose workers must see the study folder at the same path (shared storage).
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import os
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from ms_core import __version__
from ms_core.foundation.errors import InputError
from ms_core.foundation.io import atomic_open, atomic_write_text, write_json
from ms_core.study.derivatives import pipeline_dir

if TYPE_CHECKING:
    from ms_core.foundation.domain import Visit

__all__ = [
    "STAGES",
    "BatchConfig",
    "BatchResult",
    "PatientOutcome",
    "analyse_patient",
    "analyse_study",
    "cohort_dir",
    "limit_threads",
    "process_patient",
    "run_batch",
    "segment_visit_task",
]

log = logging.getLogger(__name__)

#: Pipeline stages, in the order they run for a patient.
STAGES = ("segment", "track", "atrophy", "features")
Backend = Literal["local", "ray"]
#: ``(tasks done, tasks in all, label of the last one)``.
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class BatchConfig:
    """Settings of a batch run (recorded in ``batch_report.json``)."""

    workers: int = 2
    threads: int = 1
    backend: Backend = "local"
    ray_address: str | None = None
    gpus_per_task: float = 0.0
    stages: tuple[str, ...] = STAGES
    participants: tuple[str, ...] = ()
    seg_method: str = "network"

    def __post_init__(self) -> None:
        if self.workers < 1 or self.threads < 1:
            raise ValueError(f"workers and threads must be >= 1, got {self.workers}, "
                             f"{self.threads}")
        if self.backend not in ("local", "ray"):
            raise ValueError(f"backend must be local or ray, not {self.backend!r}")
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown or not self.stages:
            raise ValueError(f"unknown stages {unknown}; choose from {STAGES}")
        if self.seg_method not in ("network", "baseline"):
            raise ValueError(f"seg_method must be network or baseline, not {self.seg_method!r}")


@dataclass
class PatientOutcome:
    """What one patient task did: counts per stage, failures, feature rows, seconds."""

    participant_id: str
    done: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    worker: str = ""


@dataclass(frozen=True)
class BatchResult:
    """The merged outcome of a batch run."""

    outcomes: tuple[PatientOutcome, ...]
    table: pd.DataFrame
    table_paths: tuple[Path, ...]
    report_path: Path
    seconds: float

    @property
    def failures(self) -> list[dict[str, str]]:
        return [f for o in self.outcomes for f in o.failures]


def cohort_dir(root: Path) -> Path:
    """Where the merged cohort table and the batch report go."""
    return pipeline_dir(root) / "cohort"


def limit_threads(threads: int) -> None:
    """Limit this process to ``threads`` CPU threads (onnxruntime, SimpleITK, BLAS/OpenMP)."""
    os.environ["MS_DASH_THREADS"] = str(threads)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    import SimpleITK as sitk
    from threadpoolctl import threadpool_limits

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    threadpool_limits(threads)


def _failure(outcome: PatientOutcome, stage: str, where: str, error: BaseException) -> None:
    message = str(error) if isinstance(error, InputError | ValueError) else (
        f"{type(error).__name__}: {error}")
    outcome.failures.append({"participant_id": outcome.participant_id, "stage": stage,
                             "visit": where, "error": message})
    log.warning("%s %s %s failed: %s", outcome.participant_id, stage, where, message)
    if not isinstance(error, InputError | ValueError):
        log.debug("%s", traceback.format_exc())


def _count(outcome: PatientOutcome, stage: str, did: bool) -> None:
    target = outcome.done if did else outcome.skipped
    target[stage] = target.get(stage, 0) + 1


def _worker_name() -> str:
    return f"{os.uname().nodename}:{os.getpid()}"


def _segment_one(root: Path, visit: Any, seg: Any, outcome: PatientOutcome) -> None:
    """Segment one visit unless its stored segmentation is current; record what happened."""
    from ms_core.segmentation.segment import segment_visit, segmentation_status

    try:
        current = segmentation_status(root, visit, seg) is not None
        if not current:
            segment_visit(root, visit, seg)
        _count(outcome, "segment", not current)
    except Exception as e:  # one visit's failure must not stop the batch
        _failure(outcome, "segment", visit.session_id, e)


def segment_visit_task(root: str, participant_id: str, session_id: str, config: BatchConfig
                       ) -> PatientOutcome:
    """The segmentation of one visit as a task of its own (the first, per-visit phase)."""
    from ms_core.segmentation.segment import SegmentParams
    from ms_core.study.layout import load_study

    start = time.perf_counter()
    outcome = PatientOutcome(participant_id, worker=_worker_name())
    try:
        visit = load_study(Path(root)).visit(participant_id, session_id)
    except (InputError, KeyError, OSError) as e:
        _failure(outcome, "segment", session_id, e)
    else:
        _segment_one(Path(root), visit, SegmentParams(method=config.seg_method),  # type: ignore[arg-type]
                     outcome)
    outcome.seconds = time.perf_counter() - start
    return outcome


def process_patient(root: str, participant_id: str, config: BatchConfig) -> PatientOutcome:
    """Run the configured stages for one patient (the unit of work of every backend).

    Errors of one visit or pair are recorded in the outcome; the other visits go on. Never
    raises for pipeline errors (a study that cannot be read at all is recorded too).
    """
    from ms_core.clinical.patient_features import patient_feature_table
    from ms_core.longitudinal.atrophy import (
        measure_interval_pbvc,
        measure_visit_volumes,
        pbvc_status,
        pending_atrophy,
        read_atrophy,
        volumes_status,
    )
    from ms_core.longitudinal.measurements import measured_table
    from ms_core.longitudinal.tracking import TrackParams, track_visits, tracking_status
    from ms_core.segmentation.segment import SegmentParams
    from ms_core.study.layout import load_study

    start = time.perf_counter()
    outcome = PatientOutcome(participant_id, worker=_worker_name())
    study_root = Path(root)
    try:
        study = load_study(study_root)
        participant = study.participants[participant_id]
        visits = sorted(study.visits.get(participant_id, ()),
                        key=lambda v: (v.acq_date, v.session_id))
    except (InputError, KeyError, OSError) as e:
        _failure(outcome, "load", "-", e)
        outcome.seconds = time.perf_counter() - start
        return outcome
    seg = SegmentParams(method=config.seg_method)  # type: ignore[arg-type]
    track = TrackParams(segmentation=seg)
    usable = [v for v in visits if "FLAIR" in v.images]
    for v in visits:
        if "FLAIR" not in v.images:
            why = [str(i) for i in study.issues_for(participant_id) if v.session_id in str(i.path)]
            reason = "; ".join(why) or "none listed in the sessions table"
            _failure(outcome, "segment", v.session_id,
                     InputError(None, f"no usable FLAIR image: {reason}"))
    if "segment" in config.stages:
        for v in usable:
            _segment_one(study_root, v, seg, outcome)
    if "track" in config.stages:
        for a, b in itertools.pairwise(usable):
            try:
                current = tracking_status(study_root, a, b, track) is not None
                if not current:
                    track_visits(study_root, a, b, track)
                _count(outcome, "track", not current)
            except Exception as e:
                _failure(outcome, "track", f"{a.session_id}->{b.session_id}", e)
    if "atrophy" in config.stages:
        todo_volumes, todo_pairs = pending_atrophy(study_root, visits)
        for v in todo_volumes:
            try:
                measure_visit_volumes(study_root, v)
                _count(outcome, "atrophy", True)
            except Exception as e:
                _failure(outcome, "atrophy", v.session_id, e)
        for a, b in todo_pairs:
            try:
                if volumes_status(study_root, a) is None or volumes_status(study_root, b) is None:
                    raise InputError(None, "visit volumes missing (failed above)")
                measure_interval_pbvc(study_root, a, b)
                _count(outcome, "atrophy", True)
            except Exception as e:
                _failure(outcome, "atrophy", f"{a.session_id}->{b.session_id}", e)
        outcome.skipped["atrophy"] = sum(
            volumes_status(study_root, v) is not None for v in visits) + sum(
            pbvc_status(study_root, a, b) is not None for a, b in itertools.pairwise(visits)
        ) - outcome.done.get("atrophy", 0)
    if "features" in config.stages:
        try:
            features = patient_feature_table(study_root, participant, visits, track,
                                             atrophy=read_atrophy)
            measured = measured_table(study_root, visits, track).drop(
                columns=["acq_date"], errors="ignore")
            merged = features.merge(measured, on="session_id", how="left",
                                    suffixes=("", "_measured"))
            dates = {v.session_id: v.acq_date.isoformat() for v in visits}
            for rec in merged.to_dict("records"):
                outcome.rows.append({"participant_id": participant_id,
                                     "trial_arm": participant.trial_arm or "",
                                     "ms_type": participant.ms_type,
                                     "acq_date": dates[str(rec["session_id"])], **rec})
        except Exception as e:
            _failure(outcome, "features", "-", e)
    outcome.seconds = time.perf_counter() - start
    return outcome


def analyse_patient(root: Path, visits: Sequence[Visit],
                    progress: Callable[[float, str], None] | None = None) -> None:
    """Bring one patient up to date: the app's "Analyse this patient" (Timeline page).

    Segments every visit not yet segmented, compares each visit with the previous one, then
    measures the brain volumes (lesions filled) and the PBVC of each interval (about 20-30 s
    each on 2 cores). Results that are still current are not made again
    (:func:`ms_core.longitudinal.measurements.pending_analysis`,
    :func:`ms_core.longitudinal.atrophy.pending_atrophy`). Unlike :func:`process_patient` it stops
    at the first error, which it raises.

    Parameters
    ----------
    root
        The study folder.
    visits
        The patient's :class:`~ms_core.foundation.domain.Visit` objects, in any order.
    progress
        ``progress(fraction, text)`` with the fraction of the steps done, in [0, 1].
    """
    from ms_core.longitudinal.atrophy import (
        measure_interval_pbvc,
        measure_visit_volumes,
        pending_atrophy,
    )
    from ms_core.longitudinal.measurements import pending_analysis
    from ms_core.longitudinal.tracking import track_visits
    from ms_core.segmentation.segment import segment_visit

    def report(fraction: float, text: str) -> None:
        if progress is not None:
            progress(min(fraction, 1.0), text)

    todo_seg, pairs = pending_analysis(root, visits)
    todo_vol, todo_pbvc = pending_atrophy(root, visits)
    steps = max(1, len(todo_seg) + len(pairs) + len(todo_vol) + len(todo_pbvc))
    report(0.0, "Analysing visits…")
    def segmenting(i: int, visit: Visit) -> Callable[[float], None]:
        return lambda f: report((i + f) / steps,
                                f"Segmenting {visit.session_id}… {min(f, 1.0):.0%}")

    for i, v in enumerate(todo_seg):
        segment_visit(root, v, progress=segmenting(i, v))
    done = len(todo_seg)
    for a, b in pairs:
        report(done / steps, f"Comparing {b.session_id} with {a.session_id}…")
        track_visits(root, a, b)
        done += 1
    # Segmenting changes which lesions are filled: ask again what is out of date.
    todo_vol, todo_pbvc = pending_atrophy(root, visits)
    steps = max(steps, done + len(todo_vol) + len(todo_pbvc))
    for v in todo_vol:
        report(done / steps, f"Measuring the brain volume of {v.session_id}…")
        measure_visit_volumes(root, v)
        done += 1
    for a, b in todo_pbvc:
        report(done / steps,
               f"Measuring the brain volume change {a.session_id} → {b.session_id}…")
        measure_interval_pbvc(root, a, b)
        done += 1
    report(1.0, "Analysis finished")


def analyse_study(root: Path, visits_by_patient: Mapping[str, Sequence[Visit]],
                  progress: Callable[[float, str], None] | None = None, *,
                  label: str = "analysing the study") -> list[str]:
    """Bring every patient up to date with :func:`analyse_patient`, one after another in the
    order given (the app's demo autorun: the first patient first, so its pages fill first).

    Resumable: results that are still current are kept, so a run stopped and started again
    goes on where it stopped. A patient that fails is logged and skipped. Progress reads
    ``"<label>: 3 of 12 patients (sub-03: Segmenting ses-02… 40 %)"``. Returns the patients
    that failed.
    """
    pids = list(visits_by_patient)
    failed: list[str] = []
    for i, pid in enumerate(pids):
        def report(fraction: float, text: str, i: int = i, pid: str = pid) -> None:
            if progress is not None:
                progress((i + min(fraction, 1.0)) / len(pids),
                         f"{label}: {i + 1} of {len(pids)} patients ({pid}: {text})")

        try:
            analyse_patient(root, visits_by_patient[pid], report)
        except (InputError, ValueError, OSError) as e:
            log.error("%s: analysis failed: %s", pid, e)
            failed.append(pid)
    if progress is not None:
        progress(1.0, f"{label}: {len(pids) - len(failed)} of {len(pids)} patients done")
    return failed


def _local_worker_init(threads: int) -> None:
    limit_threads(threads)
    logging.basicConfig(level=logging.WARNING)


#: A unit of work: the function (a module-level one, so it pickles), its arguments, a label.
Task = tuple[Callable[..., PatientOutcome], tuple[Any, ...], str]
#: Runs tasks and yields (task, outcome) in completion order.
Runner = Callable[[Sequence[Task]], Iterator[tuple[Task, PatientOutcome]]]


def _lost(task: Task, error: BaseException) -> PatientOutcome:
    """The outcome of a task whose worker died (killed, out of memory, Ray node lost)."""
    lost = PatientOutcome(str(task[1][1]))
    _failure(lost, "worker", task[2], error)
    return lost


@contextmanager
def _local_runner(config: BatchConfig) -> Iterator[Runner]:
    if config.workers == 1:
        limit_threads(config.threads)

        def serial(tasks: Sequence[Task]) -> Iterator[tuple[Task, PatientOutcome]]:
            for task in tasks:
                yield task, task[0](*task[1])

        yield serial
        return
    with ProcessPoolExecutor(max_workers=config.workers, mp_context=get_context("spawn"),
                             initializer=_local_worker_init, initargs=(config.threads,)) as pool:

        def parallel(tasks: Sequence[Task]) -> Iterator[tuple[Task, PatientOutcome]]:
            futures = {pool.submit(task[0], *task[1]): task for task in tasks}
            for fut in as_completed(futures):
                task = futures[fut]
                try:
                    yield task, fut.result()
                except Exception as e:  # a worker process that died
                    yield task, _lost(task, e)

        yield parallel


def _ray_call(fn: Callable[..., PatientOutcome], args: tuple[Any, ...], threads: int
              ) -> PatientOutcome:
    limit_threads(threads)
    return fn(*args)


@contextmanager
def _ray_runner(config: BatchConfig) -> Iterator[Runner]:
    try:
        import ray
    except ImportError as e:
        raise InputError(None, "the ray backend needs Ray: pip install 'ray[default]' "
                               "(see README, 'Batch processing')") from e
    started_here = not ray.is_initialized()
    if started_here:
        if config.ray_address:
            ray.init(address=config.ray_address, log_to_driver=False)
        else:
            ray.init(num_cpus=config.workers * config.threads, include_dashboard=False,
                     log_to_driver=False)
    remote = ray.remote(num_cpus=config.threads, num_gpus=config.gpus_per_task,
                        max_retries=1)(_ray_call)

    def run(tasks: Sequence[Task]) -> Iterator[tuple[Task, PatientOutcome]]:
        pending = {remote.remote(task[0], task[1], config.threads): task for task in tasks}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            task = pending.pop(ready[0])
            try:
                yield task, ray.get(ready[0])
            except Exception as e:  # ray.exceptions.RayError and task errors
                yield task, _lost(task, e)

    try:
        yield run
    finally:
        if started_here:
            ray.shutdown()


def _merge(outcomes: Sequence[PatientOutcome]) -> PatientOutcome:
    """One patient's outcomes from several tasks, summed."""
    merged = PatientOutcome(outcomes[0].participant_id)
    workers = []
    for o in outcomes:
        for stage, n in o.done.items():
            merged.done[stage] = merged.done.get(stage, 0) + n
        for stage, n in o.skipped.items():
            merged.skipped[stage] = merged.skipped.get(stage, 0) + n
        merged.failures += o.failures
        merged.rows += o.rows
        merged.seconds += o.seconds
        workers.append(o.worker)
    merged.worker = ",".join(sorted({w for w in workers if w}))
    return merged


def _write_table(root: Path, table: pd.DataFrame) -> tuple[Path, ...]:
    out = cohort_dir(root)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, parquet_path = out / "cohort_table.csv", out / "cohort_table.parquet"
    atomic_write_text(csv_path, table.to_csv(index=False))
    with atomic_open(parquet_path, "wb") as fh:
        table.to_parquet(fh, index=False)
    return csv_path, parquet_path


def _add_prognosis(table: pd.DataFrame) -> pd.DataFrame:
    """The shipped prognosis model's risk per row (NaN when the model cannot be used)."""
    from ms_core.clinical.prognosis import load_prognosis_model, score
    from ms_core.lesions.features import PROGNOSIS_FEATURES

    if table.empty:
        return table.assign(worsening_risk_2y=pd.Series(dtype="float64"))
    try:
        model = load_prognosis_model()
    except InputError as e:
        log.warning("prognosis not added: %s", e)
        return table.assign(worsening_risk_2y=float("nan"))
    risks = [score(model, {f: (None if pd.isna(r[f]) else float(r[f]))
                           for f in PROGNOSIS_FEATURES}).prob
             for r in table[list(PROGNOSIS_FEATURES)].to_dict("records")]
    return table.assign(worsening_risk_2y=risks, prognosis_model=model.version)


def run_batch(root: Path | str, config: BatchConfig = BatchConfig(),
              progress: Progress | None = None) -> BatchResult:
    """Process every participant (or ``config.participants``) of the study at ``root``.

    Raises
    ------
    InputError
        when the study cannot be loaded or a requested participant does not exist.
    """
    from ms_core.study.layout import load_study

    start = time.perf_counter()
    study_root = Path(root).resolve()
    study = load_study(study_root)
    pids = list(config.participants) or list(study.participants)
    unknown = [p for p in pids if p not in study.participants]
    if unknown:
        raise InputError(study_root / "participants.tsv", f"no participants {unknown}")
    root_s = str(study_root)
    phase1: list[Task] = [
        (segment_visit_task, (root_s, pid, v.session_id, config), f"{pid} {v.session_id}")
        for pid in pids for v in study.visits.get(pid, ()) if "FLAIR" in v.images
    ] if "segment" in config.stages else []
    later = tuple(st for st in config.stages if st != "segment")
    phase2: list[Task] = [(process_patient, (root_s, pid, replace(config, stages=later)), pid)
                          for pid in pids] if later else []
    total = len(phase1) + len(phase2)
    by_patient: dict[str, list[PatientOutcome]] = {pid: [] for pid in pids}
    make_runner = _ray_runner if config.backend == "ray" else _local_runner
    with make_runner(config) as run:
        done = 0
        for phase in (phase1, phase2):  # every segmentation first: tracking reuses them
            for task, outcome in run(phase):
                by_patient[str(task[1][1])].append(outcome)
                done += 1
                if progress is not None:
                    progress(done, total, task[2])
    outcomes = [_merge(by_patient[pid]) if by_patient[pid] else PatientOutcome(pid)
                for pid in pids]
    rows = [r for o in outcomes for r in o.rows]
    table = pd.DataFrame(rows)
    if "features" in config.stages:
        table = _add_prognosis(table)
    paths = _write_table(study_root, table) if "features" in config.stages else ()
    seconds = time.perf_counter() - start
    report = {
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "app_version": __version__, "study": str(study_root), "config": asdict(config),
        "seconds": round(seconds, 2), "patients": len(pids),
        "visits": sum(len(study.visits.get(p, ())) for p in pids),
        "done": {s: sum(o.done.get(s, 0) for o in outcomes) for s in STAGES},
        "skipped_current": {s: sum(o.skipped.get(s, 0) for o in outcomes) for s in STAGES},
        "failures": [f for o in outcomes for f in o.failures],
        "per_patient_seconds": {o.participant_id: round(o.seconds, 2) for o in outcomes},
        "workers_used": sorted({o.worker for o in outcomes if o.worker}),
        "outputs": [str(p) for p in paths],
    }
    report_path = cohort_dir(study_root) / "batch_report.json"
    report_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(report_path, report)
    return BatchResult(tuple(outcomes), table, tuple(paths), report_path, seconds)
