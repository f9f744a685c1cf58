"""Streamlit helpers of the Cohort / trial and Models & QC pages: cached end points, figures,
exports and the model overview.

All computing is in :mod:`ms_core.clinical.trial` (end points, Kaplan-Meier, intervals, QC rules)
and :mod:`ms_core.segmentation.model_store` / :mod:`ms_core.segmentation.inference` (model checks,
sessions). The caches are keyed on the (mtime, size) of every file the results depend on: the
clinical tables, the ground truth, the pipeline's stored results and the images (a stored result
only counts while its input images are unchanged).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import pyarrow as pa
import pyarrow.parquet as pq
import streamlit as st
from plotly.colors import hex_to_rgb, qualitative

from ms_core import __version__
from ms_core.clinical.statistics import KaplanMeier
from ms_core.clinical.trial import (
    GROUND_TRUTH,
    MEASURED,
    NO_SOURCE,
    TrialEndpoints,
    study_endpoints,
)
from ms_core.clinical.trial_qc import study_qc_table
from ms_core.foundation import state_keys
from ms_core.foundation.errors import InputError
from ms_core.foundation.io import read_json, sha256_file
from ms_core.longitudinal.atrophy import read_atrophy
from ms_core.segmentation.inference import OnnxModel, available_providers, load_onnx_model
from ms_core.segmentation.model_store import (
    MODELS_DIR,
    MODELS_ENV,
    SEGMENTATION_MODEL,
    is_shipped_folder,
    load_segmentation_card,
    models_dir_for,
    verify_model,
)
from ms_core.study.layout import Study
from ui.helpers import cached_study, file_stamp

__all__ = [
    "KEY_METRICS",
    "SOURCE_LABELS",
    "ModelInfo",
    "RuntimeInfo",
    "arm_colours",
    "export_files",
    "export_provenance",
    "km_figure",
    "lesion_rate_figure",
    "model_infos",
    "neda_figure",
    "open_patient",
    "patient_table_config",
    "pbvc_figure",
    "qc_table",
    "runtime_info",
    "source_note",
    "summary_display",
    "trial_endpoints",
    "valid_choices",
]

#: Labels of the source choices of :func:`ms_core.clinical.trial.study_endpoints`.
SOURCE_LABELS: dict[str, str] = {
    "auto": "Measured where every interval is, else ground truth",
    MEASURED: "Measured by the pipeline only",
    GROUND_TRUTH: "Ground truth only (synthetic studies)",
}
_PALETTE = qualitative.D3


# ----------------------------------------------------------------------------- cached results
def _study_files(study: Study) -> list[Path]:
    """Every file the end points and QC of ``study`` are computed from."""
    root = study.root
    files = [root / "participants.tsv", *sorted(root.glob("sub-*/sub-*_sessions.tsv"))]
    derivatives = root / "derivatives"
    files += sorted((derivatives / "ground_truth").glob("sub-*/ses-*/truth.json"))
    ours = derivatives / "ms_dash"
    for pattern in ("sub-*/ses-*/provenance.json", "sub-*/ses-*/lesions.csv",
                    "sub-*/ses-*/change_from_*/provenance.json",
                    "sub-*/ses-*/change_from_*/lesion_changes.csv", "sub-*/ses-*/atrophy/*.json"):
        files += sorted(ours.glob(pattern))
    files += [p for visits in study.visits.values() for v in visits for p in v.images.values()]
    return files


def _stamps(study: Study) -> tuple[tuple[str, int, int], ...]:
    return tuple((str(p), *file_stamp(p)) for p in _study_files(study))


@st.cache_data(max_entries=8, show_spinner="Computing the trial end points…")
def _endpoints(root: str, source: str, stamps: tuple[tuple[str, int, int], ...]
               ) -> TrialEndpoints:
    return study_endpoints(cached_study(root), source=source,  # type: ignore[arg-type]
                           atrophy=read_atrophy)


def trial_endpoints(study: Study, source: str = "auto") -> TrialEndpoints:
    """:func:`ms_core.clinical.trial.study_endpoints`, cached until a file it reads changes.

    ``source`` is one of :data:`ms_core.clinical.trial.SOURCES` (others raise ``ValueError``)."""
    return _endpoints(str(study.root), source, _stamps(study))


@st.cache_data(max_entries=8, show_spinner="Collecting QC…")
def _qc(root: str, stamps: tuple[tuple[str, int, int], ...]
        ) -> tuple[pd.DataFrame, tuple[str, ...]]:
    return study_qc_table(cached_study(root))


def qc_table(study: Study) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """:func:`ms_core.clinical.trial_qc.study_qc_table`, cached like :func:`trial_endpoints`."""
    return _qc(str(study.root), _stamps(study))


# ----------------------------------------------------------------------------- widgets
def valid_choices(key: str, options: Sequence[str]) -> None:
    """Drop stored multiselect choices that are no longer offered (another study was opened);
    start with every option selected."""
    stored = st.session_state.get(key)
    if stored is None:
        st.session_state[key] = list(options)
    else:
        st.session_state[key] = [o for o in stored if o in options]


def open_patient(participant_id: str) -> None:
    """Button callback: make ``participant_id`` the sidebar's patient (runs before the rerun, so
    before the sidebar's selectbox exists)."""
    st.session_state[state_keys.PARTICIPANT] = participant_id


# ----------------------------------------------------------------------------- tables
def _ci(value: float, lo: float, hi: float, fmt: str) -> str:
    if value != value:
        return "n/a"
    return f"{value:{fmt}} ({lo:{fmt}}–{hi:{fmt}})"


def summary_display(summary: pd.DataFrame) -> pd.DataFrame:
    """The per-arm summary as readable text, one row per arm (intervals are 95 %)."""
    rows = []
    for r in summary.itertuples(index=False):
        neda = (f"{r.neda3_n}/{r.neda3_evaluable} = {r.neda3_prop:.0%} "
                f"({r.neda3_ci_lo:.0%}–{r.neda3_ci_hi:.0%})" if r.neda3_evaluable else "n/a")
        pbvc = (f"{r.pbvc_mean_pct_per_year:.2f} ({r.pbvc_sd_pct_per_year:.2f})"
                if r.pbvc_n > 1 else f"{r.pbvc_mean_pct_per_year:.2f}" if r.pbvc_n else "n/a")
        rows.append({
            "Arm": r.trial_arm, "Patients": r.n_patients,
            "Patient-years": round(r.patient_years, 1),
            "New/enlarging T2 per patient-year (95 % CI)": _ci(
                r.new_enlarging_per_py, r.new_enlarging_ci_lo, r.new_enlarging_ci_hi, ".2f"),
            "New/enlarging T2 lesions": f"{r.new_enlarging:.0f} in "
                                        f"{r.new_enlarging_patient_years:.1f} patient-years",
            "NEDA-3 (95 % CI)": neda,
            "PBVC %/year, mean (SD)": f"{pbvc} (n={r.pbvc_n})",
            "CDW events / patients": f"{r.cdw_events}/{r.cdw_n}",
            f"CDW-free at {r.cdw_landmark_years:g} y, KM (95 % CI)": _ci(
                r.cdw_free, r.cdw_free_ci_lo, r.cdw_free_ci_hi, ".2f"),
            "Median time to CDW (y)": ("not reached" if r.cdw_median_years != r.cdw_median_years
                                       else f"{r.cdw_median_years:.1f}"),
            "Lesion source": r.lesion_source, "PBVC source": r.pbvc_source,
        })
    return pd.DataFrame(rows)


def patient_table_config() -> dict[str, Any]:
    """``st.dataframe`` column settings of the per-patient table."""
    cc = st.column_config
    two = {c: cc.NumberColumn(c.replace("_", " "), format="%.2f") for c in (
        "followup_years", "relapses_per_year", "new_enlarging_per_year", "pbvc_pct",
        "pbvc_pct_per_year", "cdw_time_years")}
    return {**two, "first_visit": cc.DateColumn("first visit", format="YYYY-MM-DD"),
            "neda3": cc.CheckboxColumn("NEDA-3"), "cdw_event": cc.CheckboxColumn("CDW")}


def source_note(patients: pd.DataFrame) -> str:
    """Markdown saying where each end point of ``patients`` comes from."""
    def counts(column: str) -> str:
        c = patients[column].value_counts()
        parts = [f"**{label}** for {int(c.get(key, 0))} patient(s)"
                 for key, label in ((MEASURED, "measured by the pipeline"),
                                    (GROUND_TRUTH, "ground truth of the synthetic study"),
                                    (NO_SOURCE, "not available")) if c.get(key, 0)]
        return ", ".join(parts) or "no patients"

    return (f"- New/enlarging T2 lesions: {counts('lesion_source')}.\n"
            f"- Brain volume change (PBVC): {counts('pbvc_source')}.\n"
            "- Relapses, EDSS and therefore confirmed disability worsening (CDW) and the "
            "relapse and CDW parts of NEDA-3: the study's clinical tables "
            "(`sub-X_sessions.tsv`), not images.")


def export_files(patients: pd.DataFrame, provenance: dict[str, Any]
                 ) -> tuple[bytes, bytes, bytes]:
    """CSV bytes, Parquet bytes (provenance in the schema metadata under ``ms_dash``) and the
    provenance sidecar (JSON bytes) of a per-patient table."""
    csv = patients.to_csv(index=False, float_format="%.6g").encode("utf-8")
    table = pa.Table.from_pandas(patients, preserve_index=False)
    meta = {**(table.schema.metadata or {}), b"ms_dash": json.dumps(provenance).encode("utf-8")}
    buffer = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(meta), buffer)
    sidecar = json.dumps(provenance, indent=2).encode("utf-8")
    return csv, buffer.getvalue(), sidecar


def export_provenance(study: Study, source: str, filters: dict[str, list[str]]
                      ) -> dict[str, Any]:
    """What produced an exported per-patient table (STYLE rule 12)."""
    return {"tool": "ms_dash cohort page", "version": __version__,
            "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "study": str(study.root), "parameters": {
                "source": source, "confirm_years": 0.5, "filters": filters},
            "definitions": "docs/cohort.md"}


# ----------------------------------------------------------------------------- figures
def arm_colours(arms: Sequence[str]) -> dict[str, str]:
    """A colour per arm, by its position in ``arms`` (pass every arm of the study so that a
    filter does not change the colours)."""
    return {a: str(_PALETTE[i % len(_PALETTE)]) for i, a in enumerate(arms)}


def _bars(summary: pd.DataFrame, y: str, lo: str, hi: str, colours: dict[str, str],
          text: list[str], title: str, y_title: str) -> go.Figure:
    # The counts go under each arm's name: text on the bar sat under the error bar, and a bar of
    # height 0 (no patient with NEDA-3) showed none.
    arms = list(summary["trial_arm"])
    fig = go.Figure(go.Bar(
        x=arms, y=summary[y],
        marker_color=[colours.get(a, "grey") for a in arms],
        error_y={"type": "data", "symmetric": False, "array": summary[hi] - summary[y],
                 "arrayminus": summary[y] - summary[lo]},
        customdata=summary[[lo, hi]],
        hovertemplate="%{x}: %{y:.2f} (95 % CI %{customdata[0]:.2f}–%{customdata[1]:.2f})"
                      "<extra></extra>"))
    fig.update_layout(title=title, height=360, margin={"t": 60, "b": 40}, showlegend=False,
                      yaxis_title=y_title, xaxis_title="arm")
    fig.update_xaxes(tickvals=arms, ticktext=[f"{a}<br>{t}" for a, t in zip(arms, text,
                                                                             strict=True)])
    return fig


def lesion_rate_figure(summary: pd.DataFrame, colours: dict[str, str]) -> go.Figure:
    """New/enlarging T2 lesions per patient-year per arm, with exact Poisson 95 % intervals."""
    text = [f"{n:.0f} / {py:.1f} PY" for n, py in zip(
        summary["new_enlarging"], summary["new_enlarging_patient_years"], strict=True)]
    return _bars(summary, "new_enlarging_per_py", "new_enlarging_ci_lo", "new_enlarging_ci_hi",
                 colours, text, "New/enlarging T2 lesions per patient-year",
                 "lesions per patient-year (95 % exact Poisson CI)")


def neda_figure(summary: pd.DataFrame, colours: dict[str, str]) -> go.Figure:
    """NEDA-3 proportion per arm with Wilson 95 % intervals."""
    text = [f"{k}/{n}" for k, n in zip(summary["neda3_n"], summary["neda3_evaluable"],
                                       strict=True)]
    fig = _bars(summary, "neda3_prop", "neda3_ci_lo", "neda3_ci_hi", colours, text,
                "NEDA-3 over the follow-up", "proportion of patients (95 % Wilson CI)")
    fig.update_yaxes(range=[0, 1.1])
    return fig


def pbvc_figure(patients: pd.DataFrame, colours: dict[str, str]) -> go.Figure:
    """Annualised PBVC per patient, one box (with every patient as a point) per arm."""
    fig = go.Figure()
    for arm, group in patients.groupby("trial_arm", sort=True):
        known = group[group["pbvc_pct_per_year"].notna()]
        fig.add_trace(go.Box(
            y=known["pbvc_pct_per_year"], name=str(arm), boxpoints="all", jitter=0.4,
            pointpos=0, marker_color=colours.get(str(arm), "grey"),
            customdata=known[["participant_id", "pbvc_source"]],
            hovertemplate="%{customdata[0]}: %{y:.2f} %/year (%{customdata[1]})<extra></extra>"))
    fig.add_hline(y=0, line={"color": "grey", "dash": "dot"})
    fig.update_layout(title="Brain volume change per year (PBVC)", height=360,
                      margin={"t": 60, "b": 40}, showlegend=False,
                      yaxis_title="% per year (negative: loss)", xaxis_title="arm")
    return fig


def _rgba(colour: str, alpha: float) -> str:
    r, g, b = hex_to_rgb(colour)
    return f"rgba({r}, {g}, {b}, {alpha})"


def km_figure(kms: dict[str, KaplanMeier], colours: dict[str, str]) -> go.Figure:
    """Kaplan-Meier curves of time to confirmed disability worsening, with 95 % bands and
    censoring marks."""
    fig = go.Figure()
    for arm, km in kms.items():
        colour = colours.get(arm, "grey")
        t = km.time_years
        fig.add_trace(go.Scatter(x=t, y=km.ci_hi, mode="lines", line_shape="hv",
                                 line={"width": 0, "color": colour}, showlegend=False,
                                 hoverinfo="skip", legendgroup=arm))
        fig.add_trace(go.Scatter(x=t, y=km.ci_lo, mode="lines", line_shape="hv",
                                 line={"width": 0, "color": colour}, fill="tonexty",
                                 fillcolor=_rgba(colour, 0.15), showlegend=False,
                                 hoverinfo="skip", legendgroup=arm, name=f"{arm} 95 % CI"))
        fig.add_trace(go.Scatter(
            x=t, y=km.survival, mode="lines", line_shape="hv", line={"color": colour},
            name=f"{arm} ({km.total_events} events / {km.n_patients})", legendgroup=arm,
            customdata=km.n_at_risk,
            hovertemplate="%{x:.2f} y: %{y:.2f} (at risk %{customdata})<extra></extra>"))
        cens = km.n_censored > 0
        fig.add_trace(go.Scatter(x=t[cens], y=km.survival[cens], mode="markers",
                                 marker={"symbol": "line-ns-open", "size": 10, "color": colour},
                                 showlegend=False, legendgroup=arm, hoverinfo="skip"))
    fig.update_layout(title="Time to confirmed disability worsening (Kaplan-Meier)", height=380,
                      margin={"t": 60, "b": 40}, legend={"orientation": "h", "y": -0.25},
                      xaxis_title="years since the first visit",
                      yaxis={"title": "free of confirmed worsening", "range": [0, 1.05]})
    return fig


# ----------------------------------------------------------------------------- models
#: Validation metrics shown per model: (label, dotted path in the card).
KEY_METRICS: dict[str, tuple[tuple[str, str], ...]] = {
    SEGMENTATION_MODEL: (
        ("Mean Dice, real set (3 scans, 2 centres)",
         "evaluation.real_validation_mean.network_flair.dice"),
        ("Mean lesion F1, real set", "evaluation.real_validation_mean.network_flair.f1_any"),
        ("Dice, patient26", "evaluation.real_validation.network_flair.patient26.dice"),
        ("Dice, MSLesSeg P18", "evaluation.real_validation.network_flair.P18.dice"),
        ("Dice, MSLesSeg P39", "evaluation.real_validation.network_flair.P39.dice"),
        ("Dice, demo first visits", "evaluation.demo_first_visits_mean.network_flair.dice"),
        ("Best synthetic validation Dice", "training.best_synthetic_val_dice"),
    ),
    "lesion_change": (
        ("Lesion F1 of change, patient12 (real pair)", "evaluation.patient12.any_change.f1"),
        ("Dice of change, patient12", "evaluation.patient12.any_change.dice"),
        ("New-lesion F1, demo pairs", "evaluation.demo.new_lesion_f1"),
        ("New-lesion F1, 2D protocol-change pairs", "evaluation.protocol_change.new_lesion_f1"),
        ("False new lesions per no-change interval",
         "evaluation.no_change.false_new_per_interval"),
        ("Best synthetic validation Dice (both channels)",
         "training.best_synthetic_val_dice_mean"),
    ),
    "prognosis": (
        ("Held-out AUC", "metrics.test.auc"),
        ("Held-out AUC 95 % CI", "metrics.test.auc_ci95"),
        ("Oracle AUC (true risk)", "metrics.test.oracle_auc"),
        ("Calibration error (ECE)", "metrics.test.ece"),
        ("Brier score", "metrics.test.brier"),
    ),
    "diagnosis": (
        ("Held-out AUC (recorded labels)", "metrics.test.recorded_labels.auc"),
        ("Held-out AUC 95 % CI", "metrics.test.recorded_labels.auc_ci95"),
        ("Sensitivity", "metrics.test.recorded_labels.sensitivity"),
        ("Specificity", "metrics.test.recorded_labels.specificity"),
        ("Real MS scans called MS-typical", "metrics.real_data.sensitivity_at_threshold"),
    ),
    "differential": (
        ("Held-out macro AUC", "metrics.test.recorded_labels.macro_auc"),
        ("Oracle macro AUC", "metrics.test.recorded_labels.oracle_macro_auc"),
        ("Calibration error (top-label ECE)", "metrics.test.recorded_labels.ece_top_label"),
    ),
}
#: Binary clinical models written by ms_core.clinical.prognosis_fit share the prognosis card layout.
_BINARY_CARD_METRICS = KEY_METRICS["prognosis"]


@dataclass(frozen=True)
class ModelInfo:
    """What the Models page shows of one model of the manifest."""

    name: str
    version: str
    sha256: str
    verified: bool
    error: str | None
    family: str
    task: str
    metrics: tuple[tuple[str, str], ...]
    training: tuple[tuple[str, str], ...]
    model_card_md: str | None
    #: The folder that serves the model, and whether that is the shipped one (else
    #: ``$MS_DASH_MODELS``: a fine-tuned, registered or retrained model).
    folder: str = str(MODELS_DIR)
    shipped: bool = True
    #: Where a model trained elsewhere came from (the ``source`` of its contract).
    source: tuple[tuple[str, str], ...] = ()


def _get(card: dict[str, Any], path: str) -> Any:
    value: Any = card
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list) and all(isinstance(v, float) for v in value):
        return "–".join(f"{v:.3f}" for v in value)
    return str(value)


def _model_info(name: str, root: Path) -> ModelInfo:
    card_path = root / f"{name}" / "model.json"
    error = None
    try:
        verified = verify_model(name, root)
        card, sha = verified.card, verified.sha256
        card_path = verified.card_path
    except InputError as e:
        error = str(e)
        try:
            card = read_json(card_path)
        except InputError:
            card = {}
        sha = str(card.get("sha256", "unknown"))
    metrics = tuple((label, _fmt(v)) for label, path in KEY_METRICS.get(name, _BINARY_CARD_METRICS)
                    if (v := _get(card, path)) is not None)
    training = card.get("training") or {}
    commit = training.get("commit") or training.get("git_commit_at_launch") or "not recorded"
    md_path = card_path.parent / "MODEL_CARD.md"
    source = tuple((str(k), str(v)) for k, v in (card.get("source") or {}).items())
    if "registration" in card:
        reg = card["registration"]
        source += (("registered", f"{reg.get('date_utc', '?')} with `{reg.get('command', '?')}`"),)
    return ModelInfo(
        name=name, version=str(card.get("version", "?")), sha256=sha, verified=error is None,
        error=error,
        family=str(card.get("family") or card.get("architecture") or "not stated in the card"),
        task=str(card.get("task", "n/a")), metrics=metrics,
        training=(("command", str(training.get("command", "not recorded"))),
                  ("date", str(training.get("date", "not recorded"))),
                  ("commit", str(commit))),
        model_card_md=md_path.read_text(encoding="utf-8") if md_path.is_file() else None,
        folder=str(root), shipped=is_shipped_folder(root), source=source)


def _manifest_names(root: Path) -> list[str]:
    try:
        return sorted(read_json(root / "manifest.json").get("models", {}))
    except (InputError, AttributeError):
        return []


@st.cache_data(max_entries=4, show_spinner="Checking the models…")
def _model_infos(served: tuple[tuple[str, str], ...],
                 stamps: tuple[tuple[str, int, int], ...]) -> list[ModelInfo]:
    return [_model_info(name, Path(folder)) for name, folder in served]


def model_infos(root: Path = MODELS_DIR) -> list[ModelInfo]:
    """Every model of ``root/manifest.json`` and of ``$MS_DASH_MODELS``'s, each from the
    folder that serves it (:func:`ms_core.segmentation.model_store.models_dir_for`), with its sha256
    check
    (cached on the files)."""
    override = os.environ.get(MODELS_ENV, "").strip()
    names = set(_manifest_names(root)) | (set(_manifest_names(Path(override))) if override
                                          else set())
    served = tuple((n, str(models_dir_for(n, root))) for n in sorted(names))
    files = sorted(p for folder in {Path(f) for _, f in served} for p in folder.rglob("*")
                   if p.is_file())
    return _model_infos(served, tuple((str(p), *file_stamp(p)) for p in files))


@dataclass(frozen=True)
class RuntimeInfo:
    """onnxruntime as the app uses it: the provider of the segmentation session and the
    providers this onnxruntime build offers."""

    provider: str
    session_providers: tuple[str, ...]
    available: tuple[str, ...]
    cuda_unavailable: str  # why the build's CUDA provider is not in use ("" otherwise)


@st.cache_resource(max_entries=2, show_spinner="Starting the segmentation model…")
def _segmentation_session(folder: str, sha: str) -> OnnxModel:
    return load_onnx_model(load_segmentation_card(folder), "auto")


def runtime_info(root: Path = MODELS_DIR) -> RuntimeInfo:
    """Load the lesion_seg model as segmentation does (``device="auto"``) and report providers.

    Raises
    ------
    ms_core.segmentation.model_store.ModelError
        when the model is missing or altered.
    """
    folder = models_dir_for("lesion_seg", root)
    path = folder / "lesion_seg" / "model.onnx"  # the layout exports and register-model write
    model = _segmentation_session(str(folder), sha256_file(path) if path.is_file() else "")
    return RuntimeInfo(model.provider, tuple(model.session.get_providers()),
                       available_providers(), model.cuda_unavailable)


def batch_table(root: Path) -> tuple[pd.DataFrame, dict[str, Any]] | None:
    """The merged table and report of the last ``batch`` run, or ``None`` when there is none."""
    from ms_core.services.batch import cohort_dir

    csv = cohort_dir(root) / "cohort_table.csv"
    report = cohort_dir(root) / "batch_report.json"
    if not (csv.is_file() and report.is_file()):
        return None
    return _batch_table(str(csv), str(report), file_stamp(csv), file_stamp(report))


@st.cache_data(max_entries=4, show_spinner=False)
def _batch_table(csv: str, report: str, csv_stamp: tuple[int, int],
                 report_stamp: tuple[int, int]) -> tuple[pd.DataFrame, dict[str, Any]]:
    return pd.read_csv(csv), dict(read_json(report))
