"""One-patient report: header, visits, measurements, lesions, images, trends, prognosis and the
provenance of every number, rendered as self-contained HTML and as PDF.

1. :func:`build_report` reads the study and the *current* stored results (segmentation,
   tracking: see :mod:`ms_core.longitudinal.measurements`), scores the prognosis model and draws
   the figures (:mod:`ms_core.services.report_figures`). It runs no segmentation or
   registration: a missing result is a section that says "not measured" and why
   (:attr:`~ms_core.services.report_model.Report.missing`).
2. :mod:`ms_core.services.report_render` lays the :class:`~ms_core.services.report_model.Report`
   out as HTML and PDF; it reads nothing.
3. :func:`write_report` writes both files and a provenance JSON atomically into
   ``derivatives/ms_dash/sub-X/report/``.

How the lesion images are drawn (world-frame planes, radiological convention): ``docs/report.md``
and :func:`ms_core.services.report_figures.lesion_images`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ms_core.clinical.patient_features import patient_feature_table
from ms_core.clinical.prognosis import PrognosisModel, load_prognosis_model, score
from ms_core.foundation.domain import Participant, Visit
from ms_core.foundation.errors import InputError
from ms_core.foundation.io import (
    atomic_write_bytes,
    atomic_write_text,
    sha256_file,
    write_json,
)
from ms_core.lesions.features import age_years
from ms_core.longitudinal.measurements import (
    McDonaldChecklist,
    interval_changes,
    mcdonald_checklist,
    measured_table,
    visit_lesion_table,
)
from ms_core.longitudinal.tracking import TrackParams, tracking_status
from ms_core.segmentation.model_store import MODELS_DIR, volume_ratio_range
from ms_core.segmentation.segment import segmentation_status
from ms_core.services.report_figures import lesion_images, trend_figures
from ms_core.services.report_model import (
    PatientHeader,
    PrognosisSummary,
    Report,
    ReportImage,
    Source,
)
from ms_core.services.report_render import render_html, render_pdf
from ms_core.study.derivatives import derivatives_dir, patient_dir, tracking_dir
from ms_core.study.layout import load_study

__all__ = [
    "REPORT_DIRNAME",
    "build_report",
    "report_dir",
    "report_inputs",
    "write_report",
]

#: Folder of a patient's reports under ``derivatives/ms_dash/sub-X``.
REPORT_DIRNAME = "report"
_TOP_CONTRIBUTIONS = 8


# ----------------------------------------------------------------------------- sources
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
    trends = trend_figures(visits, measured) if visits else ()
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


# ----------------------------------------------------------------------------- table text


# ----------------------------------------------------------------------------- HTML


# ----------------------------------------------------------------------------- PDF


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
