"""Scoring one patient-visit with the prognosis model, and explaining the score with SHAP.

The model (``models_onnx/prognosis``, or a folder written by ``train-prognosis``) is verified by
sha256 before use (:func:`ms_core.segmentation.model_store.verify_model`), runs in onnxruntime and
returns the Platt-calibrated probability of confirmed disability worsening within 2 years. The
explanation uses the JSON explainer written beside it (never a pickle), whose sha256 the card
records:

* gradient boosting: the trees are rebuilt as a ``shap.TreeExplainer`` model dictionary
  (path-dependent TreeSHAP, exact for the trees' raw log-odds);
* logistic regression: exact linear SHAP ``phi_i = w_i (x_i - mean_i)`` on the training means
  (the interventional value with independent features, as ``shap.LinearExplainer``).

Both are mapped to *calibrated* log-odds with the Platt step, ``phi' = a phi`` and
``base' = a base + b``, so ``sigmoid(base' + sum(phi'))`` equals the ONNX probability (checked at
load time on the card's medians and, in the tests, on many patients).

The probability comes with an interval: the Wilson 95 % interval of the observed worsening rate
among held-out test patients whose predicted risk fell in the same calibration bin. It says how
often patients with a similar score worsened, which is what a clinician can discuss; it is not a
confidence interval for this one patient's true risk.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ms_core.foundation.errors import InputError
from ms_core.foundation.io import read_json, sha256_file
from ms_core.lesions.features import PROGNOSIS_FEATURES
from ms_core.segmentation.inference import TabularModel, load_tabular_model
from ms_core.segmentation.model_store import MODELS_DIR, ModelError, VerifiedModel, verify_model

__all__ = [
    "FEATURE_LABELS",
    "PrognosisModel",
    "PrognosisResult",
    "explain",
    "feature_vector",
    "load_prognosis_model",
    "reliability_curve",
    "score",
]

log = logging.getLogger(__name__)

_CARD_FIELDS = ("name", "version", "sha256", "training", "explainer", "calibration", "medians",
                "metrics", "input")
#: Plain-language names of the features, for tables and the waterfall.
FEATURE_LABELS = {
    "age_years": "Age (years)", "sex_male": "Male sex", "disease_duration_years":
    "Disease duration (years)", "edss_baseline": "EDSS now", "relapses_2y":
    "Relapses, last 2 years", "dmt_efficacy": "DMT efficacy (0-2)", "progressive_course":
    "Progressive course", "lesion_volume_ml": "T2 lesion volume (ml)", "lesion_count":
    "T2 lesion count", "periventricular_volume_ml": "Periventricular volume (ml)",
    "periventricular_count": "Periventricular lesions", "juxtacortical_volume_ml":
    "Juxtacortical volume (ml)", "juxtacortical_count": "Juxtacortical lesions",
    "infratentorial_volume_ml": "Infratentorial volume (ml)", "infratentorial_count":
    "Infratentorial lesions", "deep_white_matter_volume_ml": "Deep WM volume (ml)",
    "deep_white_matter_count": "Deep WM lesions", "new_enlarging_per_year":
    "New/enlarging T2 per year", "pbvc_pct_per_year": "Brain volume change (%/year)",
    "bpf": "Brain parenchymal fraction", "gm_fraction": "GM fraction", "wm_fraction":
    "WM fraction",
}


@dataclass(frozen=True)
class PrognosisResult:
    """One scored patient-visit.

    ``shap_values`` (F,) and ``base_value`` are in calibrated log-odds;
    ``base_value + shap_values.sum()`` is the logit of ``prob``. ``feature_values`` are the
    values the model used (missing ones replaced by the training median, flagged in
    ``imputed``).
    """

    prob: float
    interval: tuple[float, float]
    shap_values: np.ndarray
    base_value: float
    feature_names: tuple[str, ...]
    feature_values: np.ndarray
    imputed: tuple[bool, ...]
    threshold: float
    model_version: str

    def __post_init__(self) -> None:
        n = len(self.feature_names)
        if self.shap_values.shape != (n,) or self.feature_values.shape != (n,):
            raise ValueError(f"expected {n} SHAP and feature values, got "
                             f"{self.shap_values.shape} and {self.feature_values.shape}")

    def table(self) -> pd.DataFrame:
        """Features sorted by |SHAP|: feature, label, value, imputed, shap."""
        df = pd.DataFrame({
            "feature": self.feature_names,
            "label": [FEATURE_LABELS.get(f, f) for f in self.feature_names],
            "value": self.feature_values, "imputed": self.imputed, "shap": self.shap_values})
        return df.reindex(df.shap.abs().sort_values(ascending=False).index).reset_index(drop=True)


@dataclass(frozen=True, eq=False)
class PrognosisModel:
    """A verified prognosis model: ONNX session, card and SHAP explainer."""

    verified: VerifiedModel
    onnx: TabularModel
    medians: np.ndarray
    calibration: tuple[float, float]
    shap_fn: Callable[[np.ndarray], tuple[np.ndarray, float]]
    kind: str
    features: tuple[str, ...] = PROGNOSIS_FEATURES

    @property
    def card(self) -> dict[str, Any]:
        return self.verified.card

    @property
    def version(self) -> str:
        return str(self.card["version"])

    @property
    def provider(self) -> str:
        return self.onnx.provider


def _tree_shap(explainer: Mapping[str, Any]) -> Callable[[np.ndarray], tuple[np.ndarray, float]]:
    import shap

    trees = []
    for t in explainer["trees"]:
        left = np.asarray(t["children_left"], dtype=np.int32)
        trees.append({
            "children_left": left,
            "children_right": np.asarray(t["children_right"], dtype=np.int32),
            "children_default": left.copy(),
            "features": np.asarray(t["features"], dtype=np.int32),
            "thresholds": np.asarray(t["thresholds"], dtype=np.float64),
            "values": np.asarray(t["values"], dtype=np.float64).reshape(-1, 1),
            "node_sample_weight": np.asarray(t["node_sample_weight"], dtype=np.float64),
        })
    model = {"trees": trees, "base_offset": float(explainer["base_offset"]),
             "tree_output": "log_odds", "objective": "binary_crossentropy",
             "input_dtype": np.float32, "internal_dtype": np.float64}
    tree_explainer = shap.TreeExplainer(model, feature_perturbation="tree_path_dependent",
                                        model_output="raw")

    def run(x: np.ndarray) -> tuple[np.ndarray, float]:
        values = np.asarray(tree_explainer.shap_values(x.reshape(1, -1).astype(np.float32)),
                            dtype=np.float64).reshape(-1)
        return values, float(np.ravel(tree_explainer.expected_value)[0])

    return run


def _linear_shap(explainer: Mapping[str, Any]) -> Callable[[np.ndarray], tuple[np.ndarray, float]]:
    coef = np.asarray(explainer["coef"], dtype=np.float64)
    mean = np.asarray(explainer["background_mean"], dtype=np.float64)
    base = float(explainer["intercept"] + coef @ mean)

    def run(x: np.ndarray) -> tuple[np.ndarray, float]:
        return coef * (x - mean), base

    return run


def load_prognosis_model(models_dir: Path | str = MODELS_DIR, name: str = "prognosis",
                         features: tuple[str, ...] | None = PROGNOSIS_FEATURES
                         ) -> PrognosisModel:
    """Verify and load the prognosis model ``name`` from ``models_dir``.

    Any binary clinical model written by :func:`ms_core.clinical.prognosis_fit.write_model` loads
    here; ``features`` is the input list this code expects (``None``: whatever the card says).

    Raises
    ------
    ModelError
        missing, altered or inconsistent model, card or explainer.
    """
    verified = verify_model(name, models_dir, _CARD_FIELDS)
    card = verified.card
    names = tuple(card["input"].get("features", ()))
    if not names or (features is not None and names != features):
        raise ModelError(verified.card_path, (
            f"model features {list(names)} differ from this version's "
            f"{list(features or ())}; retrain the model"))
    exp_path = verified.onnx_path.parent / card["explainer"]["path"]
    if not exp_path.is_file():
        raise ModelError(exp_path, "explainer file not found")
    if sha256_file(exp_path) != card["explainer"]["sha256"]:
        raise ModelError(exp_path, "explainer sha256 does not match the model card; refusing it")
    explainer = read_json(exp_path)
    kind = str(explainer.get("kind"))
    try:
        shap_fn = {"tree": _tree_shap, "linear": _linear_shap}[kind](explainer)
    except KeyError as e:
        raise ModelError(exp_path, f"unknown or incomplete explainer ({kind!r}): {e}") from e
    medians = np.array([card["medians"][f] for f in names], dtype=np.float64)
    model = PrognosisModel(
        verified=verified, onnx=load_tabular_model(verified), medians=medians,
        calibration=(float(card["calibration"]["a"]), float(card["calibration"]["b"])),
        shap_fn=shap_fn, kind=kind, features=names)
    check = score(model, dict(zip(names, medians.tolist(), strict=True)))
    gap = abs(_sigmoid(check.base_value + float(check.shap_values.sum())) - check.prob)
    if gap > 1e-4:
        raise ModelError(exp_path, f"explainer disagrees with the ONNX model by {gap:.1e}")
    return model


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def feature_vector(features: Mapping[str, float | None],
                   names: tuple[str, ...] = PROGNOSIS_FEATURES) -> np.ndarray:
    """(F,) float64 in ``names`` order (default the prognosis features); absent or None is NaN.

    >>> v = feature_vector({"age_years": 40, "bpf": None}); v[0], bool(np.isnan(v[-3]))
    (np.float64(40.0), True)
    """
    unknown = sorted(set(features) - set(names))
    if unknown:
        raise ValueError(f"unknown prognosis features {unknown}; known: {names}")
    out = np.full(len(names), np.nan)
    for i, name in enumerate(names):
        value = features.get(name)
        if value is not None:
            try:
                out[i] = float(value)
            except (TypeError, ValueError) as e:
                raise ValueError(f"feature {name} must be a number, got {value!r}") from e
    return out


def _interval(card: Mapping[str, Any], prob: float) -> tuple[float, float]:
    for row in card["metrics"]["test"].get("reliability", []):
        if row["bin_lo"] <= prob < row["bin_hi"] or (prob == 1.0 and row["bin_hi"] == 1.0):
            return float(row["ci_lo"]), float(row["ci_hi"])
    return math.nan, math.nan


def explain(model: PrognosisModel, x: np.ndarray) -> tuple[np.ndarray, float]:
    """SHAP values and base value in calibrated log-odds for an imputed (F,) vector."""
    phi, base = model.shap_fn(x)
    a, b = model.calibration
    return a * phi, a * base + b


def score(model: PrognosisModel, features: Mapping[str, float | None]) -> PrognosisResult:
    """Probability of confirmed worsening within 2 years, its interval and SHAP explanation.

    Parameters
    ----------
    features
        Feature name -> value (units in the names, see ``ms_core.lesions.features``); missing or
        ``None``/NaN values are imputed with the training medians and flagged.
    """
    raw = feature_vector(features, model.features)
    missing = np.isnan(raw)
    x = np.where(missing, model.medians, raw)
    prob = float(model.onnx.predict_proba(raw.reshape(1, -1))[0, 1])
    phi, base = explain(model, x)
    return PrognosisResult(
        prob=prob, interval=_interval(model.card, prob), shap_values=phi, base_value=base,
        feature_names=model.features, feature_values=x,
        imputed=tuple(bool(m) for m in missing), threshold=float(model.card.get("threshold", .5)),
        model_version=model.version)


def reliability_curve(model: PrognosisModel) -> pd.DataFrame:
    """The held-out reliability table stored in the card (see ``prognosis_fit``)."""
    rows = model.card["metrics"]["test"].get("reliability", [])
    if not rows:
        raise InputError(model.verified.card_path, "model card has no reliability table")
    return pd.DataFrame(rows)
