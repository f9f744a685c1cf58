"""Streamlit helpers of the Prognosis page: cached model, feature table and figures.

Kept apart from :mod:`ui_helpers` (images, segmentation, tracking) so each page's helpers stay
small. All computing is in :mod:`ms_core.prognosis` and :mod:`ms_core.patient_features`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from ms_core.diagnosis import load_diagnosis_model
from ms_core.domain import Participant, Visit
from ms_core.inference import TabularModel
from ms_core.io import load_lesion_mask, nifti_bytes
from ms_core.lesions import select_lesions
from ms_core.models import MODELS_DIR, sha256_file
from ms_core.patient_features import patient_feature_table
from ms_core.prognosis import (
    FEATURE_LABELS,
    PrognosisModel,
    PrognosisResult,
    load_prognosis_model,
    reliability_curve,
)
from ms_core.study import derivatives_dir
from ui_helpers import file_stamp, measured

__all__ = [
    "WHAT_IF",
    "calibration_figure",
    "diagnosis_model",
    "feature_table",
    "location_overlay",
    "models_dir",
    "prognosis_model",
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
    ms_core.models.ModelError
        when the model is missing, altered or inconsistent.
    """
    root = models_dir()
    path = root / "prognosis" / "model.onnx"
    return _model(str(root), sha256_file(path) if path.is_file() else "")


def feature_table(root: Path, participant: Participant, visits: Sequence[Visit]) -> pd.DataFrame:
    """The patient's feature table, cached on the same derivative files as
    :func:`ui_helpers.measured` (it is recomputed when a measurement changes)."""
    stamp = measured(root, visits).to_json()
    return _feature_table(str(root), participant, tuple(visits), stamp)


@st.cache_data(max_entries=32, show_spinner=False)
def _feature_table(root: str, participant: Participant, visits: tuple[Visit, ...],
                   stamp: str) -> pd.DataFrame:
    return patient_feature_table(Path(root), participant, visits)


def waterfall_figure(result: PrognosisResult, top: int = 8) -> go.Figure:
    """SHAP waterfall in calibrated log-odds: base value, the ``top`` features, the rest."""
    table = result.table()
    head, rest = table.iloc[:top], table.iloc[top:]
    labels = [f"{row.label} = {_fmt(row.value)}{' (imputed)' if row.imputed else ''}"
              for row in head.itertuples()]
    values = head.shap.tolist()
    if len(rest):
        labels.append(f"{len(rest)} other features")
        values.append(float(rest.shap.sum()))
    fig = go.Figure(go.Waterfall(
        orientation="h", base=result.base_value,
        y=["average patient", *labels, "this patient"],
        x=[0.0, *values, 0.0], measure=["absolute", *["relative"] * len(values), "total"],
        increasing={"marker": {"color": "crimson"}}, decreasing={"marker": {"color": "seagreen"}},
        totals={"marker": {"color": "steelblue"}},
        hovertemplate="%{y}: %{x:+.3f} log-odds<extra></extra>"))
    logit = result.base_value + float(result.shap_values.sum())
    fig.update_layout(
        height=120 + 32 * (len(labels) + 2), margin={"l": 10, "r": 10, "t": 50, "b": 40},
        title=(f"Why: from {_prob(result.base_value):.0%} (average) to "
               f"{_prob(logit):.0%} (this patient)"),
        xaxis_title="log-odds of worsening (red raises, green lowers the risk)",
        yaxis={"autorange": "reversed"}, showlegend=False)
    return fig


def calibration_figure(model: PrognosisModel, prob: float | None = None) -> go.Figure:
    """The model's held-out reliability curve with Wilson intervals; ``prob`` marked."""
    rel = reliability_curve(model)
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
                      yaxis={"title": "observed worsening rate", "range": [0, 1]},
                      legend={"orientation": "h", "y": -0.25})
    return fig


def _prob(logit: float) -> float:
    return float(1.0 / (1.0 + np.exp(-logit)))


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def feature_label(name: str) -> str:
    """Plain-language label of a feature."""
    return FEATURE_LABELS.get(name, name)


def location_overlay(root: Path, visit: Visit, ids: Sequence[int]) -> bytes | None:
    """Gzipped NIfTI of only the segmented lesions ``ids`` of a visit, or ``None``."""
    path = derivatives_dir(root, visit.participant_id, visit.session_id) / "lesion_mask.nii.gz"
    if not path.exists():
        return None
    return _location_overlay(str(path), tuple(int(i) for i in ids), file_stamp(path))


@st.cache_data(max_entries=16, show_spinner=False)
def _location_overlay(path: str, ids: tuple[int, ...], stamp: tuple[int, int]) -> bytes:
    mask = load_lesion_mask(path)
    subset = select_lesions(mask.labels, ids, affine=mask.affine)
    return nifti_bytes(subset, mask.affine, np.uint8)
