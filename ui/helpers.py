"""Streamlit glue shared by app.py and the pages: routing, cached loaders, the current selection,
access and the background work of the Patient and Timeline pages (figures: :mod:`ui.figures`).

Cached loaders are keyed on the file path plus its modification time and size (``_stamp``), so
an edited or replaced file is read again and an unchanged one is read once. A loader that
raises (:class:`~ms_core.foundation.errors.InputError` naming the file) caches nothing: the
error is raised again on the next run and the page shows it.

The study itself is cached on a signature of every file under the study folder that
``load_study`` may read (all but ``derivatives/``, see ``_tree_signature``).
"""

from __future__ import annotations

import contextlib
import os
import runpy
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from ms_core.foundation import state_keys
from ms_core.foundation.domain import Visit
from ms_core.foundation.errors import InputError, StudyError
from ms_core.foundation.io import load_lesion_mask, load_volume, probability_viewer_bytes, read_json
from ms_core.foundation.jobs import Progress
from ms_core.foundation.settings import read_only, study_roots
from ms_core.lesions.visits import (
    ImageGeometry,
    binary_overlay_bytes,
    image_geometry,
    truth_lesion_table,
)
from ms_core.longitudinal.atrophy import pending_atrophy
from ms_core.longitudinal.measurements import (
    history_by_lesion,
    lesion_history,
    measured_table,
    pending_analysis,
)
from ms_core.longitudinal.tracking import track_visits, tracking_status
from ms_core.segmentation.model_store import (
    SEGMENTATION_MODEL,
    is_shipped_folder,
    load_segmentation_card,
    models_dir_for,
    volume_ratio_range,
)
from ms_core.segmentation.segment import (
    other_model_segmentation,
    segment_visit,
    segmentation_status,
)
from ms_core.services import batch
from ms_core.study import access, audit
from ms_core.study.derivatives import (
    ATROPHY_FOLDER,
    PROVENANCE,
    derivatives_dir,
    patient_dir,
    tracking_dir,
    truth_dir,
)
from ms_core.study.layout import Study, confine_study, image_path, lesion_overlay_path, load_study

__all__ = [
    "REPO_ROOT",
    "STUDY_ENV",
    "VIEW_MODALITIES",
    "Overlay",
    "Pending",
    "Selection",
    "analyse_patient",
    "cached_study",
    "change_overlay",
    "check_images",
    "current_selection",
    "default_study_root",
    "ensure_routed",
    "image_file_bytes",
    "lesion_histories",
    "lesion_overlay",
    "load_truth",
    "measured",
    "pending",
    "previous_visit",
    "probability_overlay",
    "routed_run",
    "run_segmentation",
    "run_tracking",
    "segmentation_by_other_model",
    "segmentation_result",
    "tracking_result",
    "truths_for",
    "visit_lesions",
    "visit_truth",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Environment variable naming the study folder the sidebar starts with.
STUDY_ENV = "MS_DASH_STUDY"
#: Images the patient page can show, in the order of its switch.
VIEW_MODALITIES = ("FLAIR", "T1w")
#: Per script-thread flag: True while app.run() is running this thread's script run.
_ROUTER = threading.local()
#: The router script (its ``run`` is called when it runs as ``__main__``).
APP_SCRIPT = REPO_ROOT / "app.py"


def default_study_root() -> str:
    """The study folder to start with: ``$MS_DASH_STUDY`` or ``data/demo`` in the repository."""
    return os.environ.get(STUDY_ENV) or str(REPO_ROOT / "data" / "demo")


def file_stamp(path: Path) -> tuple[int, int]:
    """(mtime_ns, size) of a file, or (0, 0) when absent: a cache key that changes with it."""
    return _stamp(path)


def _stamp(path: Path) -> tuple[int, int]:
    """(mtime in ns, size in bytes) of ``path``; (0, -1) when it does not exist."""
    try:
        st_ = path.stat()
    except OSError:
        return (0, -1)
    return (st_.st_mtime_ns, st_.st_size)


def _tree_signature(root: Path) -> tuple[tuple[str, int, int], ...]:
    """(relative path, mtime_ns, size) of every file :func:`ms_core.study.layout.load_study` may
    read.

    That is every file under ``root`` except the top-level ``derivatives/`` folder: results and
    ground truth, which ``load_study`` never reads and which hold most of a processed study's
    files (about ten per visit), so they are not walked on every rerun. Symbolic links to
    folders are not followed (as ``os.walk``); links to files are stamped by their target.
    Sorted.
    """
    out: list[tuple[str, int, int]] = []
    stack = [(str(root), "")]
    while stack:
        folder, rel = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            name = rel + entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    if name != "derivatives":
                        stack.append((entry.path, name + os.sep))
                    continue
                st_ = entry.stat()
                out.append((name, st_.st_mtime_ns, st_.st_size))
            except OSError:  # gone meanwhile, or a broken link
                out.append((name, 0, -1))
    return tuple(sorted(out))


# ----------------------------------------------------------------------------- routing
@contextlib.contextmanager
def routed_run() -> Iterator[None]:
    """Mark the current script run as started by app.py's router (see :func:`ensure_routed`)."""
    _ROUTER.active = True
    try:
        yield
    finally:
        _ROUTER.active = False


def ensure_routed() -> None:
    """Run app.py's router when Streamlit started this page without it, then stop.

    Streamlit treats a folder named ``pages/`` beside the main script as an old-style (v1)
    multipage app until ``st.navigation`` has been called once in the server process (and on
    every run under ``AppTest``). Until then a request for ``/timeline`` runs
    ``pages/timeline.py`` on its own: no page config, no sidebar, no selection. Each page calls
    this first; the router then runs the page itself (nested) and the outer run stops here.
    """
    if getattr(_ROUTER, "active", False):
        return
    # app.py runs as the script it is (as Streamlit runs it), not imported: app.py imports this
    # module, and importing it back would make an import cycle.
    runpy.run_path(str(APP_SCRIPT), run_name="__main__")
    st.stop()


# ----------------------------------------------------------------------------- cached loaders
@st.cache_data(max_entries=4, show_spinner="Loading study…")
def _load_study(root: str, signature: int) -> Study:
    # ``signature`` is only part of the cache key: a changed file gives a new entry.
    return load_study(root)


def cached_study(root: str | Path) -> Study:
    """:func:`ms_core.study.layout.load_study`, cached until a file it may read changes (any file
    under ``root`` outside ``derivatives/``, see :func:`_tree_signature`).

    Raises
    ------
    StudyError
        when ``root`` is not a study folder, or lies outside the study roots
        (``MS_DASH_STUDY_ROOTS``, default: the study the app starts with; checked on every call,
        before the cache).
    """
    confine_study(root, study_roots(Path(default_study_root())))
    if study_access(root) == "none":
        raise StudyError(Path(root), "you have no access to this study (MS_DASH_ACCESS_FILE; "
                                     "sign in with an account it names)")
    path = Path(root).expanduser()
    signature = hash(_tree_signature(path)) if path.is_dir() else 0
    return _load_study(str(path), signature)


@st.cache_data(max_entries=64, show_spinner=False)
def _checked_geometry(path: str, modality: str, stamp: tuple[int, int]) -> ImageGeometry:
    volume = load_volume(path, modality)  # reads all voxels: truncated data fails here
    return image_geometry(modality, volume.shape, volume.affine)


@st.cache_data(max_entries=8, show_spinner=False)
def _file_bytes(path: str, stamp: tuple[int, int]) -> bytes:
    return Path(path).read_bytes()


@st.cache_data(max_entries=16, show_spinner=False)
def _overlay_bytes(path: str, stamp: tuple[int, int]) -> bytes:
    return binary_overlay_bytes(load_lesion_mask(path))


@st.cache_data(max_entries=256, show_spinner=False)
def _read_json(path: str, stamp: tuple[int, int]) -> Any:
    return read_json(path)


def image_file_bytes(path: Path) -> bytes:
    """Raw bytes of an image file (for the viewer), cached on path, mtime and size."""
    return _file_bytes(str(path), _stamp(path))


def load_truth(path: Path) -> dict[str, Any]:
    """A ``truth.json`` as a dict; raises :class:`InputError` naming a bad file."""
    truth = _read_json(str(path), _stamp(path))
    if not isinstance(truth, dict):
        raise InputError(path, f"expected a JSON object, got {type(truth).__name__}")
    return truth


# ----------------------------------------------------------------------------- selection
@dataclass(frozen=True)
class Selection:
    """What the sidebar picked: the study, a participant and (when it has visits) a visit."""

    study: Study
    participant_id: str
    visit: Visit | None

    @property
    def visits(self) -> tuple[Visit, ...]:
        return self.study.visits.get(self.participant_id, ())


def current_selection() -> Selection:
    """The study, participant and visit chosen in app.py's sidebar; stops the page if none."""
    root = st.session_state.get(state_keys.STUDY_ROOT)
    pid = st.session_state.get(state_keys.PARTICIPANT)
    if not root or not pid:
        st.info("Pick a study and a patient in the sidebar.")
        st.stop()
    study = cached_study(root)
    if pid not in study.participants:
        st.info(f"{pid} is not in study {study.root}; pick a patient in the sidebar.")
        st.stop()
    sid = st.session_state.get(state_keys.SESSION)
    visit = next((v for v in study.visits.get(pid, ()) if v.session_id == sid), None)
    return Selection(study=study, participant_id=pid, visit=visit)


# ----------------------------------------------------------------------------- patient page
def _visit_image_files(root: Path, visit: Visit) -> dict[str, Path]:
    """Image files of the visit the viewer can show, including files the study loader rejected
    (so the page can say why they cannot be shown)."""
    files = {}
    for modality in VIEW_MODALITIES:
        path = visit.images.get(modality) or image_path(
            root, visit.participant_id, visit.session_id, modality)
        if path.exists():
            files[modality] = path
    return files


def check_images(root: Path, visit: Visit
                 ) -> tuple[dict[str, Path], dict[str, ImageGeometry | None], dict[str, str]]:
    """Open every viewable image of a visit.

    Returns
    -------
    files
        modality -> image file, for the images present on disk.
    geometries
        modality -> geometry, ``None`` for an image that cannot be read.
    problems
        modality -> error message (naming the file) for each unreadable image.
    """
    files = _visit_image_files(root, visit)
    geometries: dict[str, ImageGeometry | None] = {}
    problems: dict[str, str] = {}
    for modality, path in files.items():
        try:
            geometries[modality] = _checked_geometry(str(path), modality, _stamp(path))
        except InputError as e:
            geometries[modality] = None
            problems[modality] = str(e)
    return files, geometries, problems


@dataclass(frozen=True)
class Overlay:
    """The lesion overlay of a visit: viewer bytes, source file and where it comes from."""

    data: bytes
    path: Path
    source: str


def lesion_overlay(root: Path, visit: Visit) -> Overlay | None:
    """Binary uint8 lesion overlay of a visit, or ``None`` when there is none.

    Raises
    ------
    InputError
        naming the mask file when it cannot be read.
    """
    found = lesion_overlay_path(root, visit.participant_id, visit.session_id)
    if found is None:
        return None
    path, source = found
    return Overlay(_overlay_bytes(str(path), _stamp(path)), path, source)


def visit_truth(root: Path, visit: Visit) -> dict[str, Any] | None:
    """The visit's ground truth (``truth.json``), or ``None`` when it has none.

    Raises
    ------
    InputError
        naming the file when it exists but cannot be read.
    """
    path = truth_dir(root, visit.participant_id, visit.session_id) / "truth.json"
    return load_truth(path) if path.exists() else None


def visit_lesions(root: Path, visit: Visit) -> pd.DataFrame | None:
    """The visit's ground-truth lesion table (:func:`ms_core.lesions.visits.truth_lesion_table`), or
    ``None`` when the visit has no ``truth.json``.

    Raises
    ------
    InputError
        naming ``truth.json`` when it cannot be read or its lesion list is malformed.
    """
    truth = visit_truth(root, visit)
    if truth is None:
        return None
    try:
        return truth_lesion_table(truth)
    except (ValueError, TypeError) as e:
        path = truth_dir(root, visit.participant_id, visit.session_id) / "truth.json"
        raise InputError(path, f"malformed lesion list ({e})") from e


def truths_for(root: Path, visits: Sequence[Visit]
               ) -> tuple[dict[str, dict[str, Any] | None], list[str]]:
    """Each visit's ``truth.json`` (``None`` when absent) and messages for unreadable ones."""
    truths: dict[str, dict[str, Any] | None] = {}
    problems: list[str] = []
    for v in visits:
        try:
            truths[v.session_id] = visit_truth(root, v)
        except InputError as e:
            truths[v.session_id] = None
            problems.append(str(e))
    return truths, problems


# ----------------------------------------------------------------------------- tables and figures


# ----------------------------------------------------------------------------- segmentation
@st.cache_data(max_entries=64, show_spinner=False)
def _segmentation_status(root: str, pid: str, sid: str,
                         stamps: tuple[tuple[int, int], ...]) -> dict[str, Any] | None:
    study = cached_study(root)
    return segmentation_status(Path(root), study.visit(pid, sid))


def _segmentation_stamps(root: Path, visit: Visit) -> tuple[tuple[int, int], ...]:
    out = derivatives_dir(root, visit.participant_id, visit.session_id)
    files = [out / PROVENANCE, *visit.images.values()]
    return tuple(_stamp(p) for p in files)


def segmentation_by_other_model(root: Path, visit: Visit) -> str | None:
    """Why the visit's stored segmentation is not current when another segmentation model made
    it (a line for the Patient page), else ``None``."""
    stored = other_model_segmentation(root, visit)
    if stored is None:
        return None
    folder = models_dir_for(SEGMENTATION_MODEL)
    try:
        card = load_segmentation_card()
        active = f"{card.name} v{card.version} (sha256 {card.sha256[:12]}…)"
    except InputError as e:
        active = f"the model in {folder}, which cannot be loaded ({e.problem})"
    where = "shipped" if is_shipped_folder(folder) else f"from {folder}"
    return (f"The stored segmentation was made by {stored.get('name')} v{stored.get('version')} "
            f"(sha256 {str(stored.get('sha256'))[:12]}…); the active model is {active}, "
            f"{where}. Segment the visit again to use it.")


def segmentation_result(root: Path, visit: Visit) -> tuple[dict[str, Any], pd.DataFrame] | None:
    """Provenance and lesion table of the visit's current network segmentation, or ``None``.

    Cached on the files' modification times; a segmentation made from other inputs or
    parameters does not count (see :func:`ms_core.segmentation.segment.segmentation_status`).
    """
    prov = _segmentation_status(str(root), visit.participant_id, visit.session_id,
                                _segmentation_stamps(root, visit))
    if prov is None:
        return None
    table_path = derivatives_dir(root, visit.participant_id, visit.session_id) / "lesions.csv"
    return prov, pd.read_csv(table_path)


# ----------------------------------------------------------------------------- access
def user_claims() -> dict[str, Any] | None:
    """The signed-in person's identity-token claims, or None without sign-in."""
    try:
        if st.user.is_logged_in:
            return dict(st.user.to_dict())
    except (AttributeError, KeyError, RuntimeError):
        pass
    return None


def study_access(root: Path | str) -> str:
    """What this session may do with the study: ``write`` without an access file
    (``MS_DASH_ACCESS_FILE``), else the file's level for the signed-in person (``none`` when
    nobody is signed in); see :mod:`ms_core.study.access`."""
    path = access.access_file()
    if path is None:
        return "write"
    return access.load_policy(path).level(root, user_claims() or {})


def can_write(root: Path | str) -> bool:
    """Whether this session may change the study (segment, compare, analyse, save a report,
    import): not the read-only demo mode, and write access when there is an access file."""
    return not read_only() and study_access(root) == "write"


# ----------------------------------------------------------------------------- audit trail
def audit_user() -> str:
    """Who acts in this session: the signed-in identity (e-mail, else subject) or
    ``local:<OS user>`` without sign-in. Call it in the page's script run (a background job
    has no session), and pass the result to the job."""
    claims = user_claims()
    if claims is None:
        return audit.local_user()
    return str(claims.get("email") or claims.get("sub") or "signed-in user")


def audit_event(action: str, root: Path, participant_id: str | None = None,
                session_id: str | None = None, detail: str = "",
                user: str | None = None) -> None:
    """Append to the audit trail as this session's user (:func:`ms_core.study.audit.record_or_log`:
    a log that cannot be written is logged as an error and the action goes on)."""
    audit.record_or_log(action, user=user or audit_user(), study=root,
                        participant_id=participant_id, session_id=session_id, detail=detail)


def audit_opened(root: Path, participant_id: str, session_id: str) -> None:
    """Record that this session opened a visit, once per session and visit."""
    seen = st.session_state.setdefault(state_keys.AUDIT_OPENED, set())
    key = (str(root), participant_id, session_id)
    if key not in seen:
        seen.add(key)
        audit_event("opened", root, participant_id, session_id)


def run_segmentation(root: Path, visit: Visit, progress: Progress,
                     user: str | None = None) -> None:
    """Segment the visit with the network unless its segmentation is current (a background
    job's work: no Streamlit here; see :mod:`ui.jobs`); recorded in the audit trail as
    ``user`` (from :func:`audit_user`, taken in the page's run)."""
    if segmentation_status(root, visit) is None:  # a queued job may find it done meanwhile
        progress(0.0, "Reading the images and loading the model…")
        segment_visit(root, visit, progress=lambda f: progress(
            f, f"Segmenting lesions… {min(f, 1.0):.0%}"))
        audit_event("segmented", root, visit.participant_id, visit.session_id,
                    user=user or audit.local_user())


def probability_overlay(root: Path, visit: Visit) -> bytes | None:
    """The stored lesion probability map as compact uint8 NIfTI bytes (0-255), or ``None``."""
    path = derivatives_dir(root, visit.participant_id, visit.session_id) / "lesion_prob.nii.gz"
    return _probability_bytes(str(path), _stamp(path)) if path.exists() else None


@st.cache_data(max_entries=8, show_spinner=False)
def _probability_bytes(path: str, stamp: tuple[int, int]) -> bytes:
    return probability_viewer_bytes(path)


# ----------------------------------------------------------------------------- tracking
def previous_visit(visits: Sequence[Visit], visit: Visit) -> Visit | None:
    """The visit before ``visit`` in date order, or ``None`` for the first one."""
    ordered = sorted(visits, key=lambda v: (v.acq_date, v.session_id))
    i = next(i for i, v in enumerate(ordered) if v.session_id == visit.session_id)
    return ordered[i - 1] if i > 0 else None


def _tracking_stamps(root: Path, baseline: Visit, followup: Visit) -> tuple[tuple[int, int], ...]:
    files = [tracking_dir(root, baseline, followup) / PROVENANCE,
             *baseline.images.values(), *followup.images.values()]
    return tuple(_stamp(p) for p in files)


@st.cache_data(max_entries=64, show_spinner=False)
def _tracking_status(root: str, pid: str, base_sid: str, follow_sid: str,
                     stamps: tuple[tuple[int, int], ...]) -> dict[str, Any] | None:
    study = cached_study(root)
    return tracking_status(Path(root), study.visit(pid, base_sid), study.visit(pid, follow_sid))


def tracking_result(root: Path, baseline: Visit, followup: Visit
                    ) -> tuple[dict[str, Any], pd.DataFrame] | None:
    """Provenance and ``lesion_changes.csv`` of the current comparison, or ``None``."""
    prov = _tracking_status(str(root), followup.participant_id, baseline.session_id,
                            followup.session_id, _tracking_stamps(root, baseline, followup))
    if prov is None:
        return None
    return prov, pd.read_csv(tracking_dir(root, baseline, followup) / "lesion_changes.csv")


def run_tracking(root: Path, baseline: Visit, followup: Visit, progress: Progress,
                 user: str | None = None) -> None:
    """Compare two visits (reusing stored segmentations) unless the comparison is current
    (a background job's work: no Streamlit here; see :mod:`ui.jobs`); audited as
    :func:`run_segmentation`."""
    if tracking_status(root, baseline, followup) is None:
        progress(0.0, "Reading the images…")
        track_visits(root, baseline, followup, progress=lambda f: progress(
            f, f"Comparing visits… {min(f, 1.0):.0%}"))
        audit_event("compared", root, followup.participant_id, followup.session_id,
                    f"{baseline.session_id} -> {followup.session_id}",
                    user=user or audit.local_user())


def change_overlay(root: Path, baseline: Visit, followup: Visit) -> bytes | None:
    """Gzipped NIfTI bytes of the stored change mask (1 new/enlarging, 2 shrinking)."""
    path = tracking_dir(root, baseline, followup) / "change_mask.nii.gz"
    return _file_bytes(str(path), _stamp(path)) if path.exists() else None


def measured(root: Path, visits: Sequence[Visit]) -> pd.DataFrame:
    """:func:`ms_core.longitudinal.measurements.measured_table`, cached on the derivatives'
    files."""
    stamps = tuple(_stamp(p) for v in visits for p in (
        derivatives_dir(root, v.participant_id, v.session_id) / PROVENANCE,
        *v.images.values()))
    patient = patient_dir(root, visits[0].participant_id) if visits else None
    changes = tuple((str(p), *_stamp(p)) for p in sorted(
        [*patient.glob(f"*/change_from_*/{PROVENANCE}"),
         *patient.glob(f"*/{ATROPHY_FOLDER}/*.json")])) if patient else ()
    return _measured(str(root), visits[0].participant_id if visits else "", stamps, changes)


def lesion_histories(root: Path, visits: Sequence[Visit]) -> pd.DataFrame:
    """:func:`ms_core.longitudinal.measurements.history_by_lesion` for a patient, cached like
    :func:`measured`."""
    stamps = tuple(_stamp(p) for v in visits for p in (
        derivatives_dir(root, v.participant_id, v.session_id) / PROVENANCE,
        *v.images.values()))
    return _lesion_history(str(root), visits[0].participant_id if visits else "", stamps)


@st.cache_data(max_entries=32, show_spinner=False)
def _lesion_history(root: str, pid: str, stamps: tuple[tuple[int, int], ...]) -> pd.DataFrame:
    study = cached_study(root)
    return history_by_lesion(lesion_history(Path(root), study.visits.get(pid, ())))


@st.cache_data(max_entries=32, show_spinner=False)
def _measured(root: str, pid: str, stamps: tuple[tuple[int, int], ...],
              derived: tuple[tuple[str, int, int], ...]) -> pd.DataFrame:
    # ``stamps`` and ``derived`` (comparison and atrophy files) are only part of the cache key.
    study = cached_study(root)
    return measured_table(Path(root), study.visits.get(pid, ()),
                          volume_ratios=volume_ratio_range())


@dataclass(frozen=True)
class Pending:
    """What "Analyse this patient" still has to do for a patient."""

    segment: list[Visit]
    compare: list[tuple[Visit, Visit]]
    volumes: list[Visit]
    pbvc: list[tuple[Visit, Visit]]

    @property
    def any(self) -> bool:
        return bool(self.segment or self.compare or self.volumes or self.pbvc)

    @property
    def label(self) -> str:
        """The button label, counting each kind of work."""
        return (f"Analyse this patient ({len(self.segment)} visit(s) to segment, "
                f"{len(self.compare)} interval(s) to compare, {len(self.volumes)} brain "
                f"volume(s) and {len(self.pbvc)} PBVC interval(s) to measure)")

    @property
    def atrophy_note(self) -> str | None:
        """Which brain volumes and PBVC intervals are not measured yet, or ``None``."""
        parts = []
        if self.volumes:
            parts.append("brain volume of " + ", ".join(v.session_id for v in self.volumes))
        if self.pbvc:
            parts.append("PBVC of " + ", ".join(f"{a.session_id} → {b.session_id}"
                                                for a, b in self.pbvc))
        return ("Brain atrophy pending (not measured yet): " + "; ".join(parts) + "."
                if parts else None)


def pending(root: Path, visits: Sequence[Visit]) -> Pending:
    """:func:`ms_core.longitudinal.measurements.pending_analysis` and
    :func:`ms_core.longitudinal.atrophy.pending_atrophy`
    (not cached: they are cheap and must be fresh)."""
    to_segment, to_compare = pending_analysis(root, visits)
    volumes, pbvc = pending_atrophy(root, visits)
    return Pending(to_segment, to_compare, volumes, pbvc)


def analyse_patient(root: Path, visits: Sequence[Visit], progress: Progress,
                    user: str | None = None) -> None:
    """:func:`ms_core.services.batch.analyse_patient`: segment, compare and measure the brain
    volumes of every visit still pending (a background job's work; see :mod:`ui.jobs`); audited as
    one
    ``segmented`` record of the patient."""
    batch.analyse_patient(root, visits, progress)
    if visits:
        audit_event("segmented", root, visits[0].participant_id, None,
                    "analyse patient: segment, compare, brain volumes",
                    user=user or audit.local_user())


