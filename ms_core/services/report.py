"""One-patient report: header, visits, measurements, lesions, images, trends, prognosis and the
provenance of every number, rendered as self-contained HTML and as PDF.

Layers, as elsewhere in ``ms_core``:

1. :func:`build_report` reads the study and the *current* stored results (segmentation,
   tracking: see :mod:`ms_core.longitudinal.measurements`), scores the prognosis model and draws the
   figures as PNG bytes. It runs no segmentation or registration: a missing result is a
   section that says "not measured" and why (:attr:`Report.missing`).
2. :func:`render_html` and :func:`render_pdf` lay a :class:`Report` out; they read nothing.
3. :func:`write_report` writes both files and a provenance JSON atomically into
   ``derivatives/ms_dash/sub-X/report/``.

Images
------
Each lesion image is an axial plane of the world (RAS+) frame at the lesion's centroid height,
resampled from the visit's FLAIR (linear) and the stored lesion mask (nearest neighbour) at
1 mm pixels with :func:`ms_core.imaging.preprocess.resample_to_grid`, so every visit's voxel size,
orientation and field of view gives the same picture. Planes are shown in the *radiological*
convention: **left of image = patient right**, anterior at the top (letters R/L/A/P on each
image). The outline is the lesion mask's boundary; the chosen lesion is circled and numbered
with its ``lesion_id`` of ``lesions.csv``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import html
import io
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ms_core import __version__
from ms_core.clinical.patient_features import MRI_FEATURES, patient_feature_table
from ms_core.clinical.prognosis import PrognosisModel, load_prognosis_model, score
from ms_core.foundation.domain import Participant, Visit
from ms_core.foundation.errors import InputError
from ms_core.foundation.io import (
    atomic_write_bytes,
    atomic_write_text,
    load_lesion_mask,
    load_volume,
    sha256_file,
    write_json,
)
from ms_core.imaging.preprocess import Grid, resample_to_grid, working_grid
from ms_core.lesions.features import age_years
from ms_core.longitudinal.measurements import (
    McDonaldChecklist,
    interval_changes,
    mcdonald_checklist,
    measured_table,
    visit_lesion_table,
    volume_with_range,
)
from ms_core.longitudinal.timeline import dmt_periods
from ms_core.longitudinal.tracking import TrackParams, tracking_status
from ms_core.segmentation.model_store import MODELS_DIR, volume_ratio_range
from ms_core.segmentation.segment import segmentation_status
from ms_core.study.derivatives import derivatives_dir, patient_dir, tracking_dir
from ms_core.study.layout import load_study

__all__ = [
    "NOTICE",
    "REPORT_DIRNAME",
    "SECTIONS",
    "PatientHeader",
    "PrognosisSummary",
    "Report",
    "ReportImage",
    "Source",
    "build_report",
    "render_html",
    "render_pdf",
    "report_dir",
    "report_inputs",
    "write_report",
]

log = logging.getLogger(__name__)

#: Folder of a patient's reports under ``derivatives/ms_dash/sub-X``.
REPORT_DIRNAME = "report"
#: Shown at the top of every report, HTML and PDF.
NOTICE = ("Research use only. Not a medical device; not for diagnosis or treatment decisions. "
          "All measurements are automated: check them against the images.")
#: Report sections, in order: key -> title.
SECTIONS = {
    "patient": "Patient",
    "visits": "Visits",
    "measured": "Lesions measured per visit",
    "trends": "Trends",
    "lesions": "Lesions of the selected visit",
    "images": "Images of the selected visit",
    "mcdonald": "McDonald 2017 MRI checklist",
    "prognosis": "Prognosis",
}
#: Shown in table cells without a value.
BLANK = "–"
#: Lesion images per report (the largest lesions on distinct axial planes).
N_LESION_IMAGES = 3
#: Two chosen lesions closer than this along z would show nearly the same plane.
_MIN_PLANE_GAP_MM = 6.0
_TOP_CONTRIBUTIONS = 8


# ----------------------------------------------------------------------------- domain objects
@dataclass(frozen=True)
class Source:
    """One file (or model) that numbers of the report come from.

    ``sections`` are keys of :data:`SECTIONS`; ``path`` is relative to the study folder when
    inside it; ``model`` holds name, version and sha256; ``parameters`` the settings stored in
    the file's ``provenance.json``.
    """

    what: str
    path: str
    sections: tuple[str, ...]
    sha256: str | None = None
    tool: str | None = None
    created_utc: str | None = None
    model: Mapping[str, str] | None = None
    parameters: Mapping[str, Any] | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class PatientHeader:
    """Who the report is about (no names: the study has none)."""

    participant_id: str
    sex: str
    birth_year: int | None
    age_years: float | None
    ms_type: str
    onset_year: int | None
    trial_arm: str | None
    n_visits: int


@dataclass(frozen=True, eq=False)
class ReportImage:
    """A PNG figure with its title and caption."""

    title: str
    png: bytes
    caption: str


@dataclass(frozen=True, eq=False)
class PrognosisSummary:
    """The prognosis of the selected visit: probability, interval, top SHAP contributions.

    ``contributions`` has columns ``label``, ``value``, ``imputed``, ``shap`` (calibrated
    log-odds), the ``_TOP_CONTRIBUTIONS`` largest |SHAP| first.
    """

    task: str
    prob: float
    interval: tuple[float, float]
    threshold: float
    base_prob: float
    contributions: pd.DataFrame
    n_imputed: int
    mri_measured: int
    model: Mapping[str, str]
    metrics: Mapping[str, float]
    intended_use: str
    limits: str


@dataclass(frozen=True, eq=False)
class Report:
    """Everything the report shows; rendered by :func:`render_html` and :func:`render_pdf`.

    ``missing`` maps a section key to why it is not measured; ``sources`` say where each
    section's numbers come from.
    """

    root: Path
    header: PatientHeader
    session_id: str | None
    acq_date: dt.date | None
    visits: pd.DataFrame
    measured: pd.DataFrame
    lesions: pd.DataFrame | None
    mcdonald: McDonaldChecklist | None
    prognosis: PrognosisSummary | None
    images: tuple[ReportImage, ...]
    trends: tuple[ReportImage, ...]
    missing: Mapping[str, str]
    sources: tuple[Source, ...]
    created_utc: str
    app_version: str = __version__
    parameters: Mapping[str, Any] = field(default_factory=dict)
    #: Lowest and highest predicted / true lesion volume of the segmentation model on the real
    #: validation set (:func:`ms_core.segmentation.model_store.volume_ratio_range`): lesion loads
    #: carry the plausible range they give.
    volume_ratios: tuple[float, float] | None = None

    @property
    def stem(self) -> str:
        """File name stem: ``sub-X_ses-Y_report`` (``sub-X_report`` without a visit)."""
        parts = [self.header.participant_id, *([self.session_id] if self.session_id else [])]
        return "_".join([*parts, "report"])

    def sources_of(self, section: str) -> list[int]:
        """1-based numbers of the sources of ``section`` (as listed in the provenance)."""
        return [i for i, s in enumerate(self.sources, start=1) if section in s.sections]

    def provenance(self) -> dict[str, Any]:
        """The JSON provenance of the report: who made it, from what, with which settings."""
        return {
            "tool": "ms_core report", "version": self.app_version,
            "created_utc": self.created_utc, "study": str(self.root),
            "participant_id": self.header.participant_id, "session_id": self.session_id,
            "parameters": dict(self.parameters),
            "not_measured": dict(self.missing),
            "sources": [dataclasses.asdict(s) for s in self.sources],
        }


class _Sources:
    """Collects :class:`Source` entries, one per path, merging the sections that use them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._items: dict[str, Source] = {}

    def rel(self, path: Path | str) -> str:
        p = Path(path)
        try:
            return str(p.resolve().relative_to(self.root.resolve()))
        except ValueError:
            return str(p)

    def add(self, section: str, what: str, path: Path | str, **info: Any) -> None:
        key = self.rel(path)
        old = self._items.get(key)
        if old is None:
            self._items[key] = Source(what=what, path=key, sections=(section,), **info)
        elif section not in old.sections:
            self._items[key] = dataclasses.replace(old, sections=(*old.sections, section))

    def add_file(self, section: str, what: str, path: Path) -> None:
        """A plain input file: recorded with its sha256 and modification time."""
        if self.rel(path) in self._items:
            self.add(section, what, path)
            return
        stamp = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
        self.add(section, what, path, sha256=sha256_file(path),
                 created_utc=stamp.isoformat(timespec="seconds"),
                 notes=("created_utc is the file's modification time",))

    def add_result(self, section: str, what: str, path: Path, prov: Mapping[str, Any]) -> None:
        """A pipeline result: recorded with the tool, model and settings of its provenance."""
        model = prov.get("model")
        notes: list[str] = [f"provider {prov.get('provider')}"]
        inputs = prov.get("inputs")
        if isinstance(inputs, Mapping):
            notes += [f"input {k}: {self.rel(v.get('path', ''))} sha256 {v.get('sha256')}"
                      for k, v in inputs.items() if isinstance(v, Mapping)]
        registration = prov.get("registration")
        if isinstance(registration, Mapping) and "ncc" in registration:
            notes.append(f"registration QC (NCC) {float(registration['ncc']):.3f}")
        qc = prov.get("qc")
        if isinstance(qc, Mapping):
            notes += [f"protocol QC: {w}" for w in qc.get("protocol_warnings") or ()]
        self.add(section, what, path, sha256=sha256_file(path) if path.is_file() else None,
                 tool=f"{prov.get('tool')} {prov.get('version')}",
                 created_utc=str(prov.get("created_utc")),
                 model=dict(model) if isinstance(model, Mapping) else None,
                 parameters=dict(prov.get("parameters") or {}), notes=tuple(notes))

    def items(self) -> tuple[Source, ...]:
        return tuple(self._items.values())


# ----------------------------------------------------------------------------- paths
def report_dir(root: Path, participant_id: str) -> Path:
    """Where a patient's reports are written: ``derivatives/ms_dash/sub-X/report``."""
    return patient_dir(root, participant_id) / REPORT_DIRNAME


def report_inputs(root: Path, participant_id: str, models_dir: Path | str = MODELS_DIR
                  ) -> list[Path]:
    """Every file a report of this patient may read (existing or not), for cache keys.

    The clinical tables, the patient's derivatives (except earlier reports), the visit images
    (results count only while their inputs are unchanged) and the prognosis model files.
    """
    root = Path(root)
    files = [root / "participants.tsv", root / participant_id / f"{participant_id}_sessions.tsv"]
    files += sorted((root / participant_id).glob("ses-*/anat/*.nii*"))
    deriv = patient_dir(root, participant_id)
    files += sorted(p for p in deriv.rglob("*") if p.is_file()
                    and not p.name.startswith(".")  # lock and temporary files
                    and REPORT_DIRNAME not in p.relative_to(deriv).parts[:1])
    models = Path(models_dir)
    files += [models / "manifest.json", models / "prognosis" / "model.onnx",
              models / "prognosis" / "model.json"]
    return files


# ----------------------------------------------------------------------------- build
def build_report(root: Path, participant_id: str, *, session_id: str | None = None,
                 models_dir: Path | str = MODELS_DIR,
                 prognosis_model: PrognosisModel | None = None,
                 params: TrackParams = TrackParams()) -> Report:
    """Collect the report of one patient at one visit (default: the latest).

    Parameters
    ----------
    root
        The study folder.
    participant_id, session_id
        The patient and the selected visit (``None``: the latest visit).
    models_dir
        Folder with ``manifest.json`` and the prognosis model (used when ``prognosis_model``
        is not given).
    params
        Settings whose stored results count (the app's defaults).

    Raises
    ------
    InputError
        when the study cannot be opened, or the patient or visit is not in it.
    """
    root = Path(root)
    study = load_study(root)
    if participant_id not in study.participants:
        raise InputError(root / "participants.tsv", (
            f"no participant {participant_id!r}; known: {sorted(study.participants)}"))
    participant = study.participants[participant_id]
    visits = study.visits.get(participant_id, ())
    sessions_tsv = root / participant_id / f"{participant_id}_sessions.tsv"
    visit = _selected_visit(visits, session_id, sessions_tsv)
    sources = _Sources(root)
    missing: dict[str, str] = {}
    sources.add_file("patient", "participants table", root / "participants.tsv")
    if sessions_tsv.is_file():
        for section in ("visits", "trends", "prognosis"):
            sources.add_file(section, "sessions table", sessions_tsv)
    header = PatientHeader(
        participant_id=participant_id, sex=participant.sex, birth_year=participant.birth_year,
        age_years=age_years(participant, visit.acq_date) if visit else None,
        ms_type=participant.ms_type, onset_year=participant.onset_year,
        trial_arm=participant.trial_arm, n_visits=len(visits))
    if not visits:
        for key in ("visits", "measured", "trends", "lesions", "images", "mcdonald",
                    "prognosis"):
            missing[key] = f"not measured: {participant_id} has no visits"
    ratios = volume_ratio_range()
    measured = measured_table(root, visits, params, volume_ratios=ratios)
    _measured_sources(root, visits, params, sources)
    if visits and not measured["segmented"].any():
        missing["measured"] = ("not measured: no visit of this patient has been segmented with "
                               "the current model and settings")
    lesions = checklist = None
    images: tuple[ReportImage, ...] = ()
    if visit is not None:
        lesions, checklist, images = _visit_sections(root, visits, visit, params, sources,
                                                     missing)
    trends = _trend_figures(visits, measured) if visits else ()
    if visits and not any(t.title.startswith("Lesion") for t in trends):
        missing.setdefault("trends", "lesion trends not measured: no visit segmented")
    prognosis = None
    if visit is not None:
        prognosis = _prognosis(root, participant, visits, visit, models_dir, prognosis_model,
                               params, sources, missing)
    return Report(
        root=root, header=header, session_id=visit.session_id if visit else None,
        acq_date=visit.acq_date if visit else None, visits=_visits_frame(visits),
        measured=measured, lesions=lesions, mcdonald=checklist, prognosis=prognosis,
        images=images, trends=trends, missing=missing, sources=sources.items(),
        volume_ratios=ratios,
        created_utc=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        parameters={"session_id": session_id, "models_dir": str(models_dir),
                    "tracking": dataclasses.asdict(params)})


def _selected_visit(visits: Sequence[Visit], session_id: str | None, table: Path
                    ) -> Visit | None:
    if session_id is None:
        return visits[-1] if visits else None
    for v in visits:
        if v.session_id == session_id:
            return v
    raise InputError(table, (f"no visit {session_id!r}; known: "
                             f"{[v.session_id for v in visits]}"))


def _visits_frame(visits: Sequence[Visit]) -> pd.DataFrame:
    rows = [{"session_id": v.session_id, "acq_date": v.acq_date.isoformat(), "edss": v.edss,
             "relapses_since_last": v.relapses_since_last, "dmt": v.dmt, "scanner": v.scanner,
             "field_strength_t": v.field_strength_t, "modalities": ", ".join(sorted(v.images))}
            for v in visits]
    return pd.DataFrame(rows, columns=["session_id", "acq_date", "edss", "relapses_since_last",
                                       "dmt", "scanner", "field_strength_t", "modalities"])


def _previous(visits: Sequence[Visit], visit: Visit) -> Visit | None:
    i = [v.session_id for v in visits].index(visit.session_id)
    return visits[i - 1] if i > 0 else None


def _measured_sources(root: Path, visits: Sequence[Visit], params: TrackParams,
                      sources: _Sources) -> None:
    """Record the stored segmentations and comparisons that :func:`measured_table` used."""
    for i, visit in enumerate(visits):
        prov = segmentation_status(root, visit, params.segmentation)
        folder = derivatives_dir(root, visit.participant_id, visit.session_id)
        if prov is not None:
            for section in ("measured", "trends", "prognosis"):
                sources.add_result(section, f"segmentation of {visit.session_id}",
                                   folder / "lesions.csv", prov)
        if i == 0:
            continue
        prev = visits[i - 1]
        track = tracking_status(root, prev, visit, params)
        if track is not None:
            for section in ("measured", "trends", "prognosis"):
                sources.add_result(section, f"comparison {prev.session_id} → {visit.session_id}",
                                   tracking_dir(root, prev, visit) / "lesion_changes.csv", track)


def _visit_sections(root: Path, visits: Sequence[Visit], visit: Visit, params: TrackParams,
                    sources: _Sources, missing: dict[str, str]
                    ) -> tuple[pd.DataFrame | None, McDonaldChecklist | None,
                               tuple[ReportImage, ...]]:
    """Lesion table, McDonald checklist and lesion images of the selected visit."""
    if "FLAIR" not in visit.images:
        why = f"not measured: {visit.session_id} has no usable FLAIR image"
        missing.update(lesions=why, images=why, mcdonald=why)
        return None, None, ()
    try:
        lesions = visit_lesion_table(root, visit, params.segmentation)
    except InputError as e:
        lesions = None
        why = f"not measured: {e}"
    else:
        why = (f"not measured: {visit.session_id} has not been segmented with the current "
               "model and settings")
    if lesions is None:
        missing.update(lesions=why, images=why, mcdonald=why)
        return None, None, ()
    folder = derivatives_dir(root, visit.participant_id, visit.session_id)
    prov = segmentation_status(root, visit, params.segmentation) or {}
    for section in ("lesions", "mcdonald"):
        sources.add_result(section, f"segmentation of {visit.session_id}",
                           folder / "lesions.csv", prov)
    checklist = None
    previous = _previous(visits, visit)
    changes = None
    if previous is not None and "FLAIR" in previous.images:
        changes = interval_changes(root, previous, visit, params)
        if changes is not None:
            track = tracking_status(root, previous, visit, params) or {}
            sources.add_result("mcdonald", f"comparison {previous.session_id} → "
                               f"{visit.session_id}",
                               tracking_dir(root, previous, visit) / "lesion_changes.csv", track)
    try:
        checklist = mcdonald_checklist(lesions, changes, has_followup=previous is not None)
    except ValueError as e:
        missing["mcdonald"] = f"not measured: {e}"
    images: tuple[ReportImage, ...] = ()
    mask_path = folder / "lesion_mask.nii.gz"
    if len(lesions) == 0:
        missing["images"] = "no lesion found in this visit: no lesion image to show"
    else:
        try:
            images = lesion_images(visit.images["FLAIR"], mask_path, lesions)
        except InputError as e:
            missing["images"] = f"not shown: {e}"
        else:
            sources.add("images", f"FLAIR of {visit.session_id}", visit.images["FLAIR"],
                        sha256=sha256_file(visit.images["FLAIR"]))
            sources.add_result("images", f"lesion mask of {visit.session_id}", mask_path, prov)
    return lesions, checklist, images


def _prognosis(root: Path, participant: Participant, visits: Sequence[Visit], visit: Visit,
               models_dir: Path | str, model: PrognosisModel | None, params: TrackParams,
               sources: _Sources, missing: dict[str, str]) -> PrognosisSummary | None:
    if model is None:
        try:
            model = load_prognosis_model(models_dir)
        except InputError as e:
            missing["prognosis"] = f"not measured: the prognosis model cannot be used ({e})"
            return None
    table = patient_feature_table(root, participant, visits, params)
    row = table.set_index("session_id").loc[visit.session_id]
    names = list(model.card["input"]["features"])
    features = {f: (None if pd.isna(row[f]) else float(row[f])) for f in names}
    result = score(model, features)
    card = model.card
    verified = model.verified
    sources.add("prognosis", "prognosis model", verified.onnx_path, sha256=verified.sha256,
                tool=f"onnxruntime ({model.provider})",
                created_utc=str(card.get("training", {}).get("date")),
                model={"name": str(card["name"]), "version": str(card["version"]),
                       "sha256": verified.sha256},
                parameters={"family": card.get("family"), "threshold": card.get("threshold"),
                            "calibration": card.get("calibration"),
                            "training_commit": card.get("training", {}).get("commit"),
                            "training_command": card.get("training", {}).get("command")},
                notes=(f"model card {sources.rel(verified.card_path)}",
                       f"explainer {card['explainer'].get('path')} sha256 "
                       f"{card['explainer'].get('sha256')} ({model.kind} SHAP)",
                       f"data: {card.get('data', {}).get('description')}"))
    top = result.table().head(_TOP_CONTRIBUTIONS)[["label", "value", "imputed", "shap"]]
    test = card.get("metrics", {}).get("test", {})
    return PrognosisSummary(
        task=str(card.get("task", "probability of confirmed disability worsening")),
        prob=result.prob, interval=result.interval, threshold=result.threshold,
        base_prob=1.0 / (1.0 + math.exp(-result.base_value)),
        contributions=top.reset_index(drop=True), n_imputed=int(sum(result.imputed)),
        mri_measured=int(row["mri_measured"]),
        model={"name": str(card["name"]), "version": str(card["version"]),
               "sha256": verified.sha256, "family": str(card.get("family")),
               "provider": model.provider},
        metrics={k: float(test[k]) for k in ("auc", "ece", "brier") if k in test},
        intended_use=str(card.get("intended_use", "")), limits=str(card.get("limits", "")))


# ----------------------------------------------------------------------------- figures
def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def axial_plane(data: np.ndarray, affine: np.ndarray, grid: Grid, z_mm: float, *, order: int
                ) -> np.ndarray:
    """An axial (RAS+) plane at world height ``z_mm`` on ``grid``'s x-y pixels, for display.

    ``grid`` is an axis-aligned RAS+ grid (:func:`ms_core.imaging.preprocess.working_grid`). Returns
    (rows, cols) in the radiological convention: row 0 is the most anterior, column 0 the
    patient's right (left of image = patient right).

    >>> from ms_core.imaging.preprocess import Grid
    >>> vol = np.zeros((4, 3, 2)); vol[3, 0, :] = 1  # voxel at the right, posterior corner
    >>> plane = axial_plane(vol, np.eye(4), Grid((4, 3, 2), np.eye(4)), 0.0, order=0)
    >>> plane.shape, int(plane[-1, 0])  # bottom row (posterior), first column (right)
    ((3, 4), 1)
    """
    plane_affine = grid.affine.copy()
    plane_affine[2, 3] = z_mm
    plane = resample_to_grid(data, affine, Grid((grid.shape[0], grid.shape[1], 1), plane_affine),
                             order=order)[:, :, 0]
    return np.ascontiguousarray(plane[::-1, ::-1].T)


def _choose_lesions(lesions: pd.DataFrame, n: int) -> list[pd.Series]:
    """The ``n`` largest lesions whose centroids are on distinct axial planes."""
    chosen: list[pd.Series] = []
    for _, row in lesions.sort_values("volume_ml", ascending=False).iterrows():
        if all(abs(float(row.centroid_z_mm) - float(c.centroid_z_mm)) >= _MIN_PLANE_GAP_MM
               for c in chosen):
            chosen.append(row)
        if len(chosen) == n:
            break
    return chosen


def lesion_images(flair_path: Path, mask_path: Path, lesions: pd.DataFrame,
                  n: int = N_LESION_IMAGES) -> tuple[ReportImage, ...]:
    """Axial FLAIR planes through the ``n`` largest lesions with the lesion mask outlined.

    See the module docstring for the orientation. Raises :class:`InputError` naming an
    unreadable image.
    """
    from matplotlib.figure import Figure

    flair = load_volume(flair_path, "FLAIR")
    mask = load_lesion_mask(mask_path)
    grid = working_grid(flair, 1.0)
    x0, y0 = float(grid.affine[0, 3]), float(grid.affine[1, 3])
    nx, ny = grid.shape[0], grid.shape[1]
    out = []
    for row in _choose_lesions(lesions, n):
        z = float(row.centroid_z_mm)
        img = axial_plane(flair.data, flair.affine, grid, z, order=1)
        lab = axial_plane((mask.labels > 0).astype(np.uint8), mask.affine, grid, z, order=0)
        # display pixel of the centroid: column 0 = largest x, row 0 = largest y
        col = (nx - 1) - (float(row.centroid_x_mm) - x0)
        rrow = (ny - 1) - (float(row.centroid_y_mm) - y0)
        inside = img > 0.05 * float(np.percentile(img, 99.5)) if img.any() else img > 0
        rows_in, cols_in = np.nonzero(inside)
        if rows_in.size:
            r0, r1 = max(rows_in.min() - 4, 0), min(rows_in.max() + 5, img.shape[0])
            c0, c1 = max(cols_in.min() - 4, 0), min(cols_in.max() + 5, img.shape[1])
        else:
            r0, r1, c0, c1 = 0, img.shape[0], 0, img.shape[1]
        img, lab = img[r0:r1, c0:c1], lab[r0:r1, c0:c1]
        vmax = float(np.percentile(img[img > 0], 99.5)) if np.any(img > 0) else 1.0
        fig = Figure(figsize=(3.3, 3.6))
        ax = fig.add_subplot()
        ax.imshow(img, cmap="gray", vmin=0.0, vmax=vmax, interpolation="nearest")
        if lab.any():
            ax.imshow(np.ma.masked_equal(lab, 0), cmap="autumn", alpha=0.35,
                      interpolation="nearest")
            ax.contour(lab, levels=[0.5], colors="red", linewidths=0.7)
        ax.add_patch(_circle((col - c0, rrow - r0), 9.0))
        ax.annotate(str(int(row.lesion_id)), (col - c0 + 8, rrow - r0 - 8), color="yellow",
                    fontsize=9, fontweight="bold")
        h, w = img.shape
        for text, xy in (("R", (3, h / 2)), ("L", (w - 10, h / 2)), ("A", (w / 2, 10)),
                         ("P", (w / 2, h - 3))):
            ax.text(xy[0], xy[1], text, color="cyan", fontsize=9, fontweight="bold")
        ax.set_axis_off()
        location = str(row.get("location", "")).replace("_", " ")
        ax.set_title(f"lesion {int(row.lesion_id)}: {location}, {float(row.volume_ml):.2f} ml",
                     fontsize=8)
        out.append(ReportImage(
            title=f"Lesion {int(row.lesion_id)}", png=_png(fig),
            caption=(f"Axial FLAIR at z = {z:.1f} mm (RAS+), 1 mm pixels; left of image = "
                     f"patient right. Red: lesion mask outline; yellow: lesion "
                     f"{int(row.lesion_id)}.")))
    return tuple(out)


def _circle(xy: tuple[float, float], radius: float) -> Any:
    from matplotlib.patches import Circle

    return Circle(xy, radius, fill=False, edgecolor="yellow", linewidth=1.0)


def _dates(values: Iterable[Any]) -> np.ndarray:
    """(N,) datetime64[D] for matplotlib's date axis."""
    return np.array([pd.Timestamp(v).to_datetime64() for v in values], dtype="datetime64[D]")


def _date_axis(ax: Any, dates: np.ndarray) -> None:
    """Same date range (all visits, 4 months' margin) and concise ticks on every trend panel."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    margin = np.timedelta64(120, "D")
    ax.set_xlim(dates.min() - margin, dates.max() + margin)
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)


def _trend_figures(visits: Sequence[Visit], measured: pd.DataFrame) -> tuple[ReportImage, ...]:
    """EDSS step plot (with relapses and DMT bands) and measured lesion trends, as PNGs."""
    from matplotlib.figure import Figure

    out = []
    dates = _dates(v.acq_date for v in visits)
    edss = [np.nan if v.edss is None else float(v.edss) for v in visits]
    if any(not math.isnan(e) for e in edss):
        fig = Figure(figsize=(7.2, 2.6))
        ax = fig.add_subplot()
        palette = ("#66c2a5", "#fc8d62", "#8da0cb", "#e78ac3", "#a6d854", "#ffd92f")
        for i, period in enumerate(dmt_periods(visits).itertuples(index=False)):
            start, end = pd.Timestamp(period.start), pd.Timestamp(period.end)
            ax.axvspan(start.to_pydatetime(), end.to_pydatetime(),
                       color=palette[i % len(palette)], alpha=0.25, lw=0)
            ax.text(start.to_pydatetime(), 0.98, f" {period.dmt}", fontsize=7, va="top",
                    transform=ax.get_xaxis_transform())
        filled = pd.Series(edss).ffill().to_numpy()
        ax.step(dates, filled, where="post", color="#1f77b4", lw=1.5)
        ax.plot(dates, edss, "o", color="#1f77b4", ms=4, label="EDSS")
        counts = np.array([v.relapses_since_last or 0 for v in visits])
        hit = counts > 0
        if hit.any():
            ax.scatter(dates[hit], filled[hit], marker="*", s=60 + 40 * counts[hit],
                       color="crimson", zorder=3, label="relapses since last visit")
        ax.set_ylim(max(0.0, np.nanmin(edss) - 1.0), min(10.0, np.nanmax(edss) + 1.5))
        ax.set_ylabel("EDSS", fontsize=8)
        ax.legend(loc="lower right", fontsize=7)
        _date_axis(ax, dates)
        out.append(ReportImage(
            title="EDSS", png=_png(fig),
            caption=("EDSS per visit (steps hold the last value), relapses since the previous "
                     "visit (stars) and disease-modifying therapy (bands, from the visit it was "
                     "recorded at); from the sessions table.")))
    seg = measured[measured["segmented"]]
    if len(seg):
        fig = Figure(figsize=(7.2, 2.3))
        axes = [fig.add_subplot(1, 3, i) for i in (1, 2, 3)]
        mdates = _dates(seg["acq_date"])
        axes[0].plot(mdates, seg["lesion_volume_ml"], "o-", color="crimson")
        if seg["lesion_volume_low_ml"].notna().any():  # the plausible range, as a band
            axes[0].fill_between(mdates, seg["lesion_volume_low_ml"],
                                 seg["lesion_volume_high_ml"], color="crimson", alpha=0.15,
                                 linewidth=0)
        axes[0].set_title("Lesion volume (ml)", fontsize=8)
        axes[1].plot(mdates, seg["lesion_count"], "s-", color="#555555")
        axes[1].set_title("Lesion count", fontsize=8)
        comp = measured[measured["new"].notna()]
        if len(comp):
            cdates = _dates(comp["acq_date"])
            axes[2].bar(cdates, comp["new"], width=80, color="crimson", label="new")
            axes[2].bar(cdates, comp["enlarging"], width=80, bottom=comp["new"],
                        color="orange", label="enlarging")
            axes[2].legend(fontsize=7)
        else:
            axes[2].text(0.5, 0.5, "no interval compared", ha="center", va="center",
                         transform=axes[2].transAxes, fontsize=8)
        axes[2].set_title("New or enlarging since previous visit", fontsize=8)
        for ax in axes:
            _date_axis(ax, dates)
            ax.set_ylim(bottom=0)
        fig.tight_layout()
        out.append(ReportImage(
            title="Lesion trends", png=_png(fig),
            caption=("Network segmentation per visit and lesion matching against the previous "
                     "visit; visits or intervals not analysed are left out.")))
    return tuple(out)


# ----------------------------------------------------------------------------- table text
def _fmt(value: Any, digits: int = 2) -> str:
    """A table cell: ``BLANK`` for missing values, fixed digits for floats."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return BLANK
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, float | np.floating):
        return f"{float(value):.{digits}f}"
    if value is pd.NA or value is pd.NaT:
        return BLANK
    return str(value)


def _rows(table: pd.DataFrame, columns: Mapping[str, tuple[str, int]]) -> list[list[str]]:
    """Header and text rows of ``table``: ``columns`` maps column -> (title, float digits)."""
    cols = [c for c in columns if c in table.columns]
    out = [[columns[c][0] for c in cols]]
    for rec in table.to_dict("records"):
        out.append([_fmt(rec[c], columns[c][1]) for c in cols])
    return out


_VISIT_COLS = {"session_id": ("visit", 0), "acq_date": ("date", 0), "edss": ("EDSS", 1),
               "relapses_since_last": ("relapses since last", 0), "dmt": ("DMT", 0),
               "scanner": ("scanner", 0), "field_strength_t": ("field (T)", 1),
               "modalities": ("images", 0)}
_MEASURED_COLS = {"session_id": ("visit", 0), "lesion_count": ("lesions", 0),
                  "lesion_volume_ml": ("volume (ml)", 2),
                  "lesion_volume_low_ml": ("plausible from (ml)", 1),
                  "lesion_volume_high_ml": ("plausible to (ml)", 1),
                  "compared_with": ("compared with", 0),
                  "new": ("new", 0), "enlarging": ("enlarging", 0),
                  "shrinking": ("shrinking", 0), "disappeared": ("disappeared", 0)}
_LESION_COLS = {"lesion_id": ("id", 0), "location": ("location", 0),
                "volume_ml": ("volume (ml)", 3), "n_voxels": ("voxels", 0),
                "centroid_x_mm": ("x (mm)", 1), "centroid_y_mm": ("y (mm)", 1),
                "centroid_z_mm": ("z (mm)", 1), "mean_prob": ("mean p", 2),
                "max_prob": ("max p", 2)}
_CHECKLIST_COLS = {"item": ("item", 0), "satisfied": ("met", 0), "lesions": ("lesions", 0),
                   "note": ("note", 0)}
_SHAP_COLS = {"label": ("input", 0), "value": ("value", 2), "imputed": ("imputed", 0),
              "shap": ("SHAP (log-odds)", 3)}


def _measured_text(table: pd.DataFrame) -> pd.DataFrame:
    out = table.copy()
    out["acq_date"] = out["acq_date"].dt.date.astype(str) if len(out) else out["acq_date"]
    out["compared_with"] = out["compared_with"].replace("", None)
    return out


def _checklist_text(checklist: McDonaldChecklist) -> pd.DataFrame:
    met = {True: "yes", False: "no"}
    return pd.DataFrame([{**r, "satisfied": met.get(r["satisfied"], "not assessable")}  # type: ignore[call-overload]
                         for r in checklist.rows])


def _header_pairs(report: Report) -> list[tuple[str, str]]:
    h = report.header
    return [("Participant", h.participant_id), ("Sex", h.sex),
            ("Age at selected visit", _fmt(h.age_years, 0) + (" years" if h.age_years else "")),
            ("MS type", h.ms_type), ("Onset year", _fmt(h.onset_year)),
            ("Trial arm", h.trial_arm or BLANK), ("Visits", str(h.n_visits)),
            ("Selected visit", f"{report.session_id} ({report.acq_date})"
             if report.session_id else BLANK)]


def _prognosis_pairs(p: PrognosisSummary) -> list[tuple[str, str]]:
    lo, hi = p.interval
    interval = (f"{lo:.0%} – {hi:.0%}" if not (math.isnan(lo) or math.isnan(hi)) else BLANK)
    model = p.model
    return [("Question", p.task), ("Probability", f"{p.prob:.0%}"),
            ("Observed in similar test patients (Wilson 95 %)", interval),
            ("High-risk threshold", f"{p.threshold:.0%} "
             f"({'above' if p.prob >= p.threshold else 'below'})"),
            ("Average patient", f"{p.base_prob:.0%}"),
            ("Imputed inputs", f"{p.n_imputed} (MRI inputs measured: {p.mri_measured} of "
                               f"{len(MRI_FEATURES)})"),
            ("Model", f"{model['name']} v{model['version']} ({model['family']}) on "
                      f"{model['provider']}"),
            ("Model sha256", model["sha256"]),
            ("Held-out metrics", ", ".join(f"{k.upper()} {v:.3f}"
                                           for k, v in p.metrics.items()) or BLANK)]


def _source_lines(s: Source) -> list[str]:
    """Plain-text detail lines of a source, shared by HTML and PDF."""
    lines = []
    if s.sha256:
        lines.append(f"sha256 {s.sha256}")
    if s.tool:
        lines.append(f"made by {s.tool}")
    if s.created_utc:
        lines.append(f"created {s.created_utc}")
    if s.model:
        lines.append("model " + ", ".join(f"{k} {v}" for k, v in s.model.items()))
    if s.parameters:
        lines.append("parameters " + _flat(s.parameters))
    lines += list(s.notes)
    return lines


def _flat(obj: Mapping[str, Any], prefix: str = "") -> str:
    parts = []
    for k, v in obj.items():
        if isinstance(v, Mapping):
            parts.append(_flat(v, f"{prefix}{k}."))
        else:
            parts.append(f"{prefix}{k}={json.dumps(v, default=str)}")
    return ", ".join(parts)


def _section_note(report: Report, key: str) -> str:
    ids = report.sources_of(key)
    return ("Sources: " + ", ".join(f"[{i}]" for i in ids)) if ids else ""


# ----------------------------------------------------------------------------- HTML
_CSS = """
html{background:#fff;color-scheme:light}
body{font-family:"DejaVu Sans",Helvetica,Arial,sans-serif;font-size:13px;color:#222;
max-width:1000px;margin:1.5em auto;padding:0 1em}
h1{font-size:22px;margin-bottom:.2em}h2{font-size:17px;border-bottom:1px solid #ccc;
margin-top:1.6em}
.notice{background:#fff3cd;border:1px solid #e0c36b;padding:.6em .8em;border-radius:4px}
.missing{color:#8a5a00;font-style:italic}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 6px;
text-align:left;vertical-align:top}th{background:#f2f2f2}
table.kv th{width:16em}.src{font-size:11px;color:#555}
.imgs{display:flex;flex-wrap:wrap;gap:10px}figure{margin:0 0 .6em 0}
figcaption{font-size:11px;color:#555}
.prov td{font-size:11px;word-break:break-all}
"""


def _e(text: object) -> str:
    return html.escape(str(text))


def _html_table(rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _html_kv(pairs: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in pairs)
    return f'<table class="kv"><tbody>{body}</tbody></table>'


def _html_image(img: ReportImage, width: int) -> str:
    import base64

    data = base64.b64encode(img.png).decode("ascii")
    return (f'<figure style="max-width:{width}px"><img alt="{_e(img.title)}" '
            f'style="width:100%" src="data:image/png;base64,{data}">'
            f"<figcaption>{_e(img.caption)}</figcaption></figure>")


def _html_section(report: Report, key: str, body: str, title_extra: str = "") -> str:
    parts = [f'<h2 id="{key}">{_e(SECTIONS[key] + title_extra)}</h2>']
    if key in report.missing:
        parts.append(f'<p class="missing">{_e(report.missing[key])}</p>')
    parts.append(body)
    note = _section_note(report, key)
    if note:
        links = ", ".join(f'<a href="#src-{i}">[{i}]</a>' for i in report.sources_of(key))
        parts.append(f'<p class="src">Sources: {links}</p>')
    return "\n".join(parts)


def _lesion_sentence(report: Report) -> str:
    """The lesion section's first line: count and total volume with its plausible range."""
    lesions = report.lesions if report.lesions is not None else pd.DataFrame()
    total = float(lesions["volume_ml"].sum()) if len(lesions) else 0.0
    return (f"{len(lesions)} lesion(s), total volume "
            f"{volume_with_range(total, report.volume_ratios)}.")


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page (images embedded, no external resources)."""
    h = report.header
    sections = [_html_section(report, "patient", _html_kv(_header_pairs(report)))]
    if len(report.visits):
        sections.append(_html_section(report, "visits", _html_table(
            _rows(report.visits, _VISIT_COLS))))
    else:
        sections.append(_html_section(report, "visits", ""))
    measured = ""
    if len(report.measured) and report.measured["segmented"].any():
        measured = (_html_table(_rows(_measured_text(report.measured), _MEASURED_COLS))
                    + f'<p class="src">{BLANK}: not measured (visit not segmented, or interval '
                      "not compared, with the current model and settings).</p>")
    sections.append(_html_section(report, "measured", measured))
    sections.append(_html_section(report, "trends", "".join(
        _html_image(t, 760) for t in report.trends)))
    title = f" ({report.session_id})" if report.session_id else ""
    lesions = ""
    if report.lesions is not None:
        lesions = (f"<p>{html.escape(_lesion_sentence(report))}</p>"
                   + (_html_table(_rows(report.lesions, _LESION_COLS))
                      if len(report.lesions) else ""))
    sections.append(_html_section(report, "lesions", lesions, title))
    sections.append(_html_section(report, "images", '<div class="imgs">' + "".join(
        _html_image(i, 310) for i in report.images) + "</div>"))
    checklist = ""
    if report.mcdonald is not None:
        checklist = (_html_table(_rows(_checklist_text(report.mcdonald), _CHECKLIST_COLS))
                     + "<ul>" + "".join(f"<li>{_e(n)}</li>" for n in report.mcdonald.notes)
                     + "</ul>")
    sections.append(_html_section(report, "mcdonald", checklist))
    prognosis = ""
    if report.prognosis is not None:
        p = report.prognosis
        warn = ("<p class=\"missing\">No MRI measurement of this patient is stored: lesion and "
                "brain-volume inputs are imputed with the training medians.</p>"
                if p.mri_measured == 0 else "")
        prognosis = (_html_kv(_prognosis_pairs(p)) + warn
                     + "<p>Largest contributions (SHAP values in calibrated log-odds; positive "
                       "raises the risk):</p>"
                     + _html_table(_rows(p.contributions, _SHAP_COLS))
                     + f'<p class="src">Intended use: {_e(p.intended_use)}. Limits: '
                       f"{_e(p.limits)}.</p>")
    sections.append(_html_section(report, "prognosis", prognosis))
    prov_rows = "".join(
        f'<tr id="src-{i}"><td>[{i}]</td><td>{_e(s.what)}</td><td>{_e(s.path)}</td>'
        f"<td>{_e(', '.join(SECTIONS.get(k, k) for k in s.sections))}</td>"
        f"<td>{'<br>'.join(_e(line) for line in _source_lines(s))}</td></tr>"
        for i, s in enumerate(report.sources, start=1))
    provenance = (
        "<h2 id=\"provenance\">Provenance</h2>"
        f"<p>Report made {_e(report.created_utc)} by ms_core report {_e(report.app_version)} "
        f"from study {_e(report.root)}; parameters {_e(_flat(report.parameters))}. Each "
        "section lists the sources of its numbers.</p>"
        '<table class="prov"><thead><tr><th>#</th><th>what</th><th>file</th><th>sections</th>'
        f"<th>details</th></tr></thead><tbody>{prov_rows}</tbody></table>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>MS MRI report {_e(h.participant_id)}{_e(title)}</title>"
        f"<style>{_CSS}</style></head><body>"
        f"<h1>MS MRI report: {_e(h.participant_id)}{_e(title)}</h1>"
        f'<p class="notice"><strong>{_e(NOTICE)}</strong></p>'
        + "\n".join(sections) + provenance
        + f'<p class="src">ms_core {_e(report.app_version)} · {_e(report.created_utc)}</p>'
        "</body></html>\n")


# ----------------------------------------------------------------------------- PDF
@functools.cache
def _pdf_fonts() -> tuple[str, str]:
    """Register DejaVu Sans (shipped with matplotlib; covers ≥, –, →) with reportlab."""
    import matplotlib
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFError, TTFont

    ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    try:
        pdfmetrics.registerFont(TTFont("DejaVuSans", str(ttf / "DejaVuSans.ttf")))
        pdfmetrics.registerFont(TTFont("DejaVuSans-Bold", str(ttf / "DejaVuSans-Bold.ttf")))
    except (TTFError, OSError) as e:
        log.warning("DejaVu Sans not usable for the PDF (%s); using Helvetica", e)
        return "Helvetica", "Helvetica-Bold"
    return "DejaVuSans", "DejaVuSans-Bold"


def render_pdf(report: Report) -> bytes:
    """The report as PDF bytes (A4, reportlab), with the same content as :func:`render_html`."""
    from xml.sax.saxutils import escape

    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle
    from reportlab.lib.units import cm
    from reportlab.platypus import (
        Image,
        KeepTogether,
        Paragraph,
        SimpleDocTemplate,
        Spacer,
        Table,
        TableStyle,
    )

    font, bold = _pdf_fonts()
    body = ParagraphStyle("body", fontName=font, fontSize=8.5, leading=11)
    small = ParagraphStyle("small", parent=body, fontSize=7, leading=8.6,
                           textColor=colors.HexColor("#444444"))
    cell = ParagraphStyle("cell", parent=body, fontSize=7, leading=8.4)
    head_cell = ParagraphStyle("head", parent=cell, fontName=bold)
    h1 = ParagraphStyle("h1", parent=body, fontName=bold, fontSize=15, leading=19)
    h2 = ParagraphStyle("h2", parent=body, fontName=bold, fontSize=11, leading=14,
                        spaceBefore=10, spaceAfter=4)
    notice = ParagraphStyle("notice", parent=body, fontName=bold, backColor="#fff3cd",
                            borderColor="#e0c36b", borderWidth=0.5, borderPadding=4)
    missing_style = ParagraphStyle("missing", parent=body, textColor="#8a5a00")
    width = A4[0] - 3.2 * cm

    def para(text: object, style: ParagraphStyle = body) -> Paragraph:
        return Paragraph(escape(str(text)), style)

    def table(rows: list[list[str]], col_widths: list[float] | None = None) -> Table:
        data = [[para(c, head_cell) for c in rows[0]]]
        data += [[para(c, cell) for c in r] for r in rows[1:]]
        t = Table(data, colWidths=col_widths, repeatRows=1, hAlign="LEFT")
        t.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.3, colors.grey),
                               ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#eeeeee")),
                               ("VALIGN", (0, 0), (-1, -1), "TOP"),
                               ("LEFTPADDING", (0, 0), (-1, -1), 3),
                               ("RIGHTPADDING", (0, 0), (-1, -1), 3)]))
        return t

    def kv(pairs: list[tuple[str, str]]) -> Table:
        t = Table([[para(k, head_cell), para(v, cell)] for k, v in pairs],
                  colWidths=[5.5 * cm, width - 5.5 * cm], hAlign="LEFT")
        t.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.3, colors.grey),
                               ("VALIGN", (0, 0), (-1, -1), "TOP")]))
        return t

    def image(img: ReportImage, w: float) -> list[Any]:
        from PIL import Image as PILImage

        with PILImage.open(io.BytesIO(img.png)) as im:
            px_w, px_h = im.size
        return [Image(io.BytesIO(img.png), width=w, height=w * px_h / px_w),
                para(img.caption, small)]

    story: list[Any] = []

    def section(key: str, *flowables: Any, title_extra: str = "") -> None:
        head = [para(SECTIONS[key] + title_extra, h2)]
        if key in report.missing:
            head.append(para(report.missing[key], missing_style))
        story.append(KeepTogether(head + list(flowables[:1])))
        story.extend(flowables[1:])
        note = _section_note(report, key)
        if note:
            story.append(para(note, small))

    h = report.header
    title = f" ({report.session_id})" if report.session_id else ""
    story += [para(f"MS MRI report: {h.participant_id}{title}", h1), Spacer(1, 4),
              para(NOTICE, notice), Spacer(1, 6)]
    section("patient", kv(_header_pairs(report)))
    section("visits", *([table(_rows(report.visits, _VISIT_COLS))]
                        if len(report.visits) else []))
    if len(report.measured) and report.measured["segmented"].any():
        section("measured", table(_rows(_measured_text(report.measured), _MEASURED_COLS)),
                para(f"{BLANK}: not measured (visit not segmented, or interval not compared, "
                     "with the current model and settings).", small))
    else:
        section("measured")
    trend_flow = [f for t in report.trends for f in image(t, width)]
    section("trends", *trend_flow)
    lesion_flow: list[Any] = []
    if report.lesions is not None:
        lesion_flow.append(para(_lesion_sentence(report)))
        if len(report.lesions):
            lesion_flow.append(table(_rows(report.lesions, _LESION_COLS)))
    section("lesions", *lesion_flow, title_extra=title)
    if report.images:
        w = (width - 0.6 * cm) / N_LESION_IMAGES
        cells = [image(i, w) for i in report.images]
        grid = Table([cells], colWidths=[w + 0.2 * cm] * len(cells), hAlign="LEFT")
        grid.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP")]))
        section("images", grid)
    else:
        section("images")
    if report.mcdonald is not None:
        section("mcdonald", table(_rows(_checklist_text(report.mcdonald), _CHECKLIST_COLS),
                                  [6.2 * cm, 2.0 * cm, 2.0 * cm, width - 10.2 * cm]),
                *[para(f"• {n}", small) for n in report.mcdonald.notes])
    else:
        section("mcdonald")
    if report.prognosis is not None:
        p = report.prognosis
        flow: list[Any] = [kv(_prognosis_pairs(p))]
        if p.mri_measured == 0:
            flow.append(para("No MRI measurement of this patient is stored: lesion and "
                             "brain-volume inputs are imputed with the training medians.",
                             missing_style))
        flow += [Spacer(1, 4), para("Largest contributions (SHAP values in calibrated "
                                    "log-odds; positive raises the risk):"),
                 table(_rows(p.contributions, _SHAP_COLS)),
                 para(f"Intended use: {p.intended_use}. Limits: {p.limits}.", small)]
        section("prognosis", *flow)
    else:
        section("prognosis")
    story.append(para("Provenance", h2))
    story.append(para(f"Report made {report.created_utc} by ms_core report "
                      f"{report.app_version} from study {report.root}; parameters "
                      f"{_flat(report.parameters)}. Each section lists the sources of its "
                      "numbers.", small))
    for i, s in enumerate(report.sources, start=1):
        sections = ", ".join(SECTIONS.get(k, k) for k in s.sections)
        story.append(Paragraph(f"<b>[{i}] {escape(s.what)}</b>: {escape(s.path)} "
                               f"<i>({escape(sections)})</i>", cell))
        for line in _source_lines(s):
            story.append(para(f"    {line}", small))
        story.append(Spacer(1, 3))

    def footer(canvas: Any, doc: Any) -> None:
        canvas.saveState()
        canvas.setFont(font, 7)
        canvas.drawString(1.6 * cm, 1.0 * cm, f"{h.participant_id}{title} · research use only, "
                                              "not a medical device")
        canvas.drawRightString(A4[0] - 1.6 * cm, 1.0 * cm,
                               f"page {doc.page} · ms_core {report.app_version} · "
                               f"{report.created_utc}")
        canvas.restoreState()

    buf = io.BytesIO()
    doc = SimpleDocTemplate(buf, pagesize=A4, leftMargin=1.6 * cm, rightMargin=1.6 * cm,
                            topMargin=1.5 * cm, bottomMargin=1.6 * cm,
                            title=f"MS MRI report {h.participant_id}{title}",
                            author=f"ms_core {report.app_version}",
                            subject="research use only, not a medical device")
    doc.build(story, onFirstPage=footer, onLaterPages=footer)
    return buf.getvalue()


# ----------------------------------------------------------------------------- writing
def write_report(report: Report, out_dir: Path | None = None) -> tuple[Path, Path]:
    """Write the HTML, the PDF and a provenance JSON atomically; provenance last.

    ``out_dir`` defaults to :func:`report_dir`. Returns ``(html_path, pdf_path)``.
    """
    folder = Path(out_dir) if out_dir is not None else report_dir(
        report.root, report.header.participant_id)
    folder.mkdir(parents=True, exist_ok=True)
    html_text, pdf = render_html(report), render_pdf(report)
    html_path, pdf_path = folder / f"{report.stem}.html", folder / f"{report.stem}.pdf"
    atomic_write_text(html_path, html_text)
    atomic_write_bytes(pdf_path, pdf)
    prov = report.provenance()
    prov["outputs"] = {p.name: {"sha256": sha256_file(p)} for p in (html_path, pdf_path)}
    write_json(folder / f"{report.stem}_provenance.json", prov)
    return html_path, pdf_path
