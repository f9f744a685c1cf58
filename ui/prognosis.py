"""Streamlit helpers of the Prognosis page: cached model, feature table and figures.

Kept apart from :mod:`ui.helpers` (images, segmentation, tracking) so each page's helpers stay
small. All computing is in :mod:`ms_core.clinical.prognosis` and
:mod:`ms_core.clinical.patient_features`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from ms_core.clinical.clinical_models import (
    CIS_FEATURES,
    RESPONSE_FEATURES,
    cis_features,
    response_features,
)
from ms_core.clinical.clinical_models import FEATURE_LABELS as CLINICAL_LABELS
from ms_core.clinical.diagnosis import load_diagnosis_model
from ms_core.clinical.patient_features import patient_feature_table
from ms_core.clinical.prognosis import (
    FEATURE_LABELS,
    PrognosisModel,
    PrognosisResult,
    load_prognosis_model,
    reliability_curve,
)
from ms_core.clinical.prognosis import score as score_model
from ms_core.foundation.domain import Participant, Visit
from ms_core.foundation.errors import InputError
from ms_core.foundation.io import sha256_file
from ms_core.longitudinal.measurements import visit_lesion_table
from ms_core.segmentation.inference import TabularModel
from ms_core.segmentation.model_store import MODELS_DIR
from ms_core.services.workflow import research_notice
from ui.figures import shared_figure
from ui.helpers import measured

__all__ = [
    "CLINICAL_MODELS",
    "CLINICAL_TITLES",
    "WHAT_IF",
    "applicable_clinical_models",
    "calibration_figure",
    "cis_feature_row",
    "clinical_model",
    "diagnosis_model",
    "feature_table",
    "models_dir",
    "prognosis_model",
    "show_clinical_model",
    "waterfall_figure",
]

#: Modifiable inputs offered as what-if controls: feature -> (label, min, max, step).
WHAT_IF = {
    "dmt_efficacy": ("DMT efficacy (0 none, 1 moderate, 2 high)", 0.0, 2.0, 1.0),
    "relapses_2y": ("Relapses in the last 2 years", 0.0, 6.0, 1.0),
    "new_enlarging_per_year": ("New or enlarging T2 lesions per year", 0.0, 12.0, 0.5),
}


def models_dir() -> Path:
    """``$MS_DASH_MODELS`` (a folder written by ``train-prognosis``) or the shipped models."""
    return Path(os.environ.get("MS_DASH_MODELS", str(MODELS_DIR)))


@st.cache_resource(max_entries=4, show_spinner="Loading the prognosis model…")
def _model(root: str, onnx_sha: str) -> PrognosisModel:
    return load_prognosis_model(Path(root))


@st.cache_resource(max_entries=2, show_spinner=False)
def _diagnosis_model(root: str, onnx_sha: str) -> TabularModel:
    return load_diagnosis_model(Path(root))


def diagnosis_model() -> TabularModel:
    """The verified lesion-pattern (diagnosis support) model, cached like the prognosis one."""
    path = MODELS_DIR / "diagnosis" / "model.onnx"
    return _diagnosis_model(str(MODELS_DIR), sha256_file(path) if path.is_file() else "")


def prognosis_model() -> PrognosisModel:
    """The verified prognosis model, cached on its folder and file hash.

    Raises
    ------
    ms_core.segmentation.model_store.ModelError
        when the model is missing, altered or inconsistent.
    """
    root = models_dir()
    path = root / "prognosis" / "model.onnx"
    return _model(str(root), sha256_file(path) if path.is_file() else "")


#: Clinical models beside the prognosis one (``ms_core.clinical.clinical_models``): name ->
#: features.
CLINICAL_MODELS = {"cis_conversion": CIS_FEATURES, "treatment_response": RESPONSE_FEATURES}


@st.cache_resource(max_entries=8, show_spinner="Loading the model…")
def _clinical_model(root: str, name: str, onnx_sha: str) -> PrognosisModel:
    return load_prognosis_model(Path(root), name, features=CLINICAL_MODELS[name])


def clinical_model(name: str) -> PrognosisModel:
    """A verified clinical model (``cis_conversion`` or ``treatment_response``), cached on its
    folder and file hash; from ``$MS_DASH_MODELS`` when it holds one, else the shipped one.

    Raises
    ------
    ms_core.segmentation.model_store.ModelError
        when the model is missing, altered or inconsistent.
    """
    if name not in CLINICAL_MODELS:
        raise ValueError(f"unknown clinical model {name!r}; known: {list(CLINICAL_MODELS)}")
    root = models_dir()
    if not (root / name / "model.onnx").is_file():
        root = MODELS_DIR
    path = root / name / "model.onnx"
    return _clinical_model(str(root), name, sha256_file(path) if path.is_file() else "")


def cis_feature_row(root: Path, participant: Participant, visits: Sequence[Visit]
                    ) -> dict[str, float]:
    """:func:`ms_core.clinical.clinical_models.cis_features` of the first visit (the CIS
    presentation), from its stored segmentation; cached like :func:`feature_table`."""
    stamp = measured(root, visits).to_json(date_format="iso")
    return _cis_feature_row(str(root), participant, tuple(visits), stamp)


@st.cache_data(max_entries=32, show_spinner=False)
def _cis_feature_row(root: str, participant: Participant, visits: tuple[Visit, ...],
                     stamp: str) -> dict[str, float]:
    first = min(visits, key=lambda v: (v.acq_date, v.session_id))
    return cis_features(participant, visits, first, visit_lesion_table(Path(root), first))


#: Tab titles of the clinical models on the Prognosis page.
CLINICAL_TITLES = {"cis_conversion": "CIS → MS conversion",
                   "treatment_response": "Response to the current DMT"}
#: Per model: metric label, outcome word of the figures, what the score is based on.
_CLINICAL_TEXT = {
    "cis_conversion": (
        "Probability of clinically definite MS within 2 years", "conversion",
        "Scored at the first visit (the CIS presentation), as the model was trained: age, sex "
        "and the first MRI's T2 lesions (count, location, McDonald 2017 DIS, volume). The "
        "presenting syndrome and CSF oligoclonal bands are not in the study tables and are "
        "imputed."),
    "treatment_response": (
        "Probability of evidence of disease activity within 1 year", "disease activity",
        "Evidence of disease activity = a relapse, a new or enlarging T2 lesion or confirmed "
        "worsening (not NEDA-3). Scored at this visit on its DMT; the DMT is an input, so the "
        "estimate shows an association, not the effect of switching."),
}


def applicable_clinical_models(participant: Participant, visit: Visit) -> list[str]:
    """The clinical models that apply: CIS conversion for a CIS patient, treatment response
    for a visit with a DMT recorded."""
    names = []
    if (participant.ms_type or "").strip().upper() == "CIS":
        names.append("cis_conversion")
    if (visit.dmt or "").strip().lower() not in ("", "none", "n/a"):
        names.append("treatment_response")
    return names


def show_clinical_model(name: str, root: Path, participant: Participant,
                        visits: Sequence[Visit], visit: Visit,
                        prognosis_row: Mapping[str, object]) -> None:
    """Render one clinical model's probability, interval, SHAP waterfall and calibration,
    with the research-use notice (compact, for a tab of the Prognosis page)."""
    label, outcome, basis = _CLINICAL_TEXT[name]
    try:
        model = clinical_model(name)
    except InputError as e:
        st.error(f"The {CLINICAL_TITLES[name]} model cannot be used. {e}")
        return
    if name == "cis_conversion":
        features = cis_feature_row(root, participant, visits)
    else:
        features = response_features(prognosis_row, visits, visit)
    result = score_model(model, features)
    prob_col, int_col = st.columns(2)
    prob_col.metric(label, f"{result.prob:.0%}")
    lo, hi = result.interval
    int_col.metric("Observed in similar test patients", f"{lo:.0%} – {hi:.0%}",
                   help="Wilson 95 % interval of the event rate among held-out test patients "
                        "whose predicted risk fell in the same tenth (calibration bin).")
    st.caption(research_notice(name, models_dir=model.verified.onnx_path.parent.parent))
    st.caption(basis + " Trained on a synthetic cohort (docs/clinical_models.md); not "
                       "validated on real patients.")
    left, right = st.columns([3, 2], gap="medium")
    with left:
        st.plotly_chart(waterfall_figure(result, outcome=outcome), key=f"waterfall-{name}")
    with right:
        st.plotly_chart(calibration_figure(model, result.prob, outcome=outcome),
                        key=f"calibration-{name}")
        test = model.card["metrics"]["test"]
        st.caption(f"Model {name} v{model.version} ({model.card['family']}, Platt-calibrated; "
                   f"sha256 {model.verified.sha256[:12]}…). Held-out AUC {test['auc']:.2f}, "
                   f"ECE {test['ece']:.3f}.")


def feature_table(root: Path, participant: Participant, visits: Sequence[Visit]) -> pd.DataFrame:
    """The patient's feature table, cached on the same derivative files as
    :func:`ui.helpers.measured` (it is recomputed when a measurement changes)."""
    stamp = measured(root, visits).to_json(date_format="iso")
    return _feature_table(str(root), participant, tuple(visits), stamp)


@st.cache_data(max_entries=32, show_spinner=False)
def _feature_table(root: str, participant: Participant, visits: tuple[Visit, ...],
                   stamp: str) -> pd.DataFrame:
    return patient_feature_table(Path(root), participant, visits)


def waterfall_figure(result: PrognosisResult, top: int = 8, *,
                     outcome: str = "worsening") -> go.Figure:
    """SHAP waterfall in calibrated log-odds: base value, the ``top`` features, the rest.

    ``outcome`` names the modelled event on the axis (e.g. "conversion" for the CIS model).
    The figure is built once per explanation and shared by reruns and sessions
    (:func:`ui.figures.shared_figure`): read only.
    """
    return shared_figure(_waterfall, result.table(), result.base_value, top, outcome)


def _waterfall(table: pd.DataFrame, base_value: float, top: int, outcome: str) -> go.Figure:
    head, rest = table.iloc[:top], table.iloc[top:]
    labels = [f"{CLINICAL_LABELS.get(row.feature, row.label)} = {_fmt(row.value)}"
              f"{' (imputed)' if row.imputed else ''}" for row in head.itertuples()]
    values = head.shap.tolist()
    if len(rest):
        labels.append(f"{len(rest)} other features")
        values.append(float(rest.shap.sum()))
    fig = go.Figure(go.Waterfall(
        orientation="h", base=base_value,
        y=["average patient", *labels, "this patient"],
        x=[0.0, *values, 0.0], measure=["absolute", *["relative"] * len(values), "total"],
        increasing={"marker": {"color": "crimson"}}, decreasing={"marker": {"color": "seagreen"}},
        totals={"marker": {"color": "steelblue"}},
        hovertemplate="%{y}: %{x:+.3f} log-odds<extra></extra>"))
    logit = base_value + float(table.shap.sum())
    fig.update_layout(
        height=120 + 32 * (len(labels) + 2), margin={"l": 10, "r": 10, "t": 50, "b": 40},
        title=(f"Why: from {_prob(base_value):.0%} (average) to "
               f"{_prob(logit):.0%} (this patient)"),
        xaxis_title=f"log-odds of {outcome} (red raises, green lowers the risk)",
        yaxis={"autorange": "reversed"}, showlegend=False)
    return fig


def calibration_figure(model: PrognosisModel, prob: float | None = None, *,
                       outcome: str = "worsening") -> go.Figure:
    """The model's held-out reliability curve with Wilson intervals; ``prob`` marked.

    Shared by reruns and sessions like :func:`waterfall_figure`: read only.
    """
    return shared_figure(_calibration, reliability_curve(model), prob, outcome)


def _calibration(rel: pd.DataFrame, prob: float | None, outcome: str) -> go.Figure:
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                             line={"dash": "dot", "color": "grey"}))
    fig.add_trace(go.Scatter(
        x=rel.mean_pred, y=rel.observed, mode="lines+markers", name="held-out test patients",
        error_y={"type": "data", "symmetric": False, "array": rel.ci_hi - rel.observed,
                 "arrayminus": rel.observed - rel.ci_lo},
        customdata=rel.n, hovertemplate="predicted %{x:.2f}, observed %{y:.2f} "
                                        "(n=%{customdata})<extra></extra>"))
    if prob is not None:
        fig.add_vline(x=prob, line={"color": "crimson"}, annotation_text="this patient")
    fig.update_layout(height=340, margin={"t": 40, "b": 40}, title="Calibration of the model",
                      xaxis={"title": "predicted probability", "range": [0, 1]},
                      yaxis={"title": f"observed {outcome} rate", "range": [0, 1]},
                      legend={"orientation": "h", "y": -0.25})
    return fig


def _prob(logit: float) -> float:
    return float(1.0 / (1.0 + np.exp(-logit)))


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def feature_label(name: str) -> str:
    """Plain-language label of a feature."""
    return FEATURE_LABELS.get(name, name)


