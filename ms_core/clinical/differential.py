"""Differential support: MS vs healthy ageing vs NMOSD-like brain lesion pattern (research only).

A three-class, temperature-calibrated multinomial logistic regression on lesion-pattern
features (those of :mod:`ms_core.clinical.diagnosis` plus McDonald 2017 dissemination in space).
Trained only on synthetic patients; no diagnosis.

Main entry points: :func:`differential_features`, :func:`score_differential_table`,
:func:`simulate_differential`, :func:`oracle_posterior`, :func:`load_differential_model`.
Features, what brain MRI cannot show, generative model and limits: ``docs/differential.md``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy.special import gammaln, logsumexp, ndtr, ndtri
from scipy.stats import nbinom

from ms_core.clinical.diagnosis import (
    DIAGNOSIS_FEATURES,
    FEATURE_DESCRIPTIONS,
    features_by_patient,
    pattern_features,
)
from ms_core.foundation.io import read_json, sha256_file
from ms_core.lesions.location import LOCATIONS
from ms_core.lesions.mcdonald import dissemination_in_space
from ms_core.segmentation.model_store import MODELS_DIR, ModelError, verify_model

if TYPE_CHECKING:
    from ms_core.segmentation.inference import TabularModel

__all__ = [
    "CLASSES",
    "CLASS_LABELS",
    "DIFFERENTIAL_FEATURES",
    "DIFFERENTIAL_FEATURE_DESCRIPTIONS",
    "LIMITS",
    "MODEL_FEATURES",
    "MODEL_NAME",
    "DifferentialModel",
    "DifferentialResult",
    "SimulatedDifferentialCohort",
    "cached_differential_model",
    "cohort_differential_features",
    "differential_features",
    "explain_logits",
    "load_differential_model",
    "oracle_posterior",
    "score_differential",
    "score_differential_table",
    "simulate_differential",
]

#: Name of the model in ``models_onnx/manifest.json``.
MODEL_NAME = "differential"
#: Classes, in the order of the model's probability columns.
CLASSES = ("ms", "healthy_ageing", "nmosd_like")
#: Display names of :data:`CLASSES`.
CLASS_LABELS: Mapping[str, str] = {
    "ms": "MS", "healthy_ageing": "Healthy ageing (non-specific WMH)",
    "nmosd_like": "NMOSD-like"}
#: Every feature, in order (the diagnosis features plus DIS and the mean log volume).
DIFFERENTIAL_FEATURES = (*DIAGNOSIS_FEATURES, "dis_n_areas", "dis_met", "mean_log10_volume_ml")
#: The features the shipped model takes, in order (also listed in its card).
MODEL_FEATURES = (
    "age_years", "log1p_lesion_count", "log10_total_volume_ml", "mean_log10_volume_ml",
    "punctate_fraction", "periventricular_fraction", "juxtacortical_fraction",
    "infratentorial_fraction", "has_juxtacortical", "has_infratentorial", "dis_met",
)
#: One line per feature, with its unit.
DIFFERENTIAL_FEATURE_DESCRIPTIONS: Mapping[str, str] = {
    **FEATURE_DESCRIPTIONS,
    "dis_n_areas": "McDonald 2017 DIS areas with a lesion on brain MRI (0-3)",
    "dis_met": "1 if DIS is met on brain MRI (>= 2 areas), else 0",
    "mean_log10_volume_ml": "mean log10 lesion volume (ml)",
}
#: Shown with every score.
LIMITS = (
    "Research decision support, not a diagnosis: trained on synthetic patients only (MS vs "
    "healthy-ageing white-matter hyperintensities vs NMOSD-like patterns) and not validated on "
    "real patients. NMOSD is diagnosed with the AQP4 antibody and its clinical core features; "
    "its hallmark longitudinally extensive spinal cord lesions and optic neuritis are not "
    "visible on brain MRI, and a normal brain MRI cannot be scored. Area-postrema, "
    "periependymal and diencephalic lesions have no location class of their own here."
)
_PRIORS = (0.50, 0.30, 0.20)
_LABEL_NOISE = 0.03
_FLOOR_ML = 0.010  # detection floor: the segmentation drops lesions under 10 mm^3
_CONCENTRATION = 8.0


# ----------------------------------------------------------------------------- features
def differential_features(lesions: pd.DataFrame, *, age_years: float | None
                          ) -> dict[str, float]:
    """Per-patient features (:data:`DIFFERENTIAL_FEATURES`) of a per-lesion table.

    Parameters
    ----------
    lesions
        One row per lesion with ``volume_ml`` (ml, >= 0) and, for the location features and
        DIS, ``location`` (one of :data:`ms_core.lesions.location.LOCATIONS`). Empty: no lesions.
    age_years
        Age at the scan in years, or ``None`` when unknown (then NaN).

    Returns
    -------
    dict
        ``feature -> value`` in :data:`DIFFERENTIAL_FEATURES` order; NaN where undefined.

    Raises
    ------
    TypeError, ValueError
        as :func:`ms_core.clinical.diagnosis.pattern_features`.

    >>> t = pd.DataFrame({"volume_ml": [0.1, 0.01], "location": ["periventricular",
    ...                                                       "infratentorial"]})
    >>> f = differential_features(t, age_years=30)
    >>> f["dis_n_areas"], f["dis_met"], round(f["mean_log10_volume_ml"], 2)
    (2.0, 1.0, -1.5)
    """
    out = pattern_features(lesions, age_years=age_years)
    volumes = lesions["volume_ml"].to_numpy(dtype=np.float64)
    positive = volumes[volumes > 0]
    out["mean_log10_volume_ml"] = (float(np.mean(np.log10(positive))) if positive.size
                                   else math.nan)
    if lesions.empty:
        out["dis_n_areas"], out["dis_met"] = 0.0, 0.0
    elif math.isnan(out["periventricular_fraction"]):  # no (or incomplete) locations
        out["dis_n_areas"], out["dis_met"] = math.nan, math.nan
    else:
        dis = dissemination_in_space(dict(enumerate(lesions["location"].astype(str), start=1)))
        out["dis_n_areas"], out["dis_met"] = float(dis.n_areas), float(dis.satisfied)
    return {name: out[name] for name in DIFFERENTIAL_FEATURES}


# ----------------------------------------------------------------------------- simulation
@dataclass(frozen=True)
class _Class:
    """Parameters of one class of the generative model (see the module docstring)."""

    age_mean: float
    age_sd: float
    age_range: tuple[float, float]
    count_mean: float  # mean lesion count at age 45 (healthy ageing) or at any age
    count_per_year: float  # increase of the mean count per year over 45
    count_shape: float  # negative binomial shape k of (count - 1)
    location_mix: tuple[float, float, float, float]  # LOCATIONS order
    volume_median_ml: tuple[float, float, float, float]  # per location
    volume_sigma: tuple[float, float, float, float]  # of ln(volume), per location


_MODEL: Mapping[str, _Class] = {
    "ms": _Class(34, 10, (18, 70), 12, 0.0, 1.5, (0.38, 0.24, 0.13, 0.25),
                 (0.12, 0.06, 0.08, 0.05), (1.0, 0.9, 0.9, 0.9)),
    "healthy_ageing": _Class(67, 10, (45, 92), 2, 0.3, 2.0, (0.32, 0.06, 0.04, 0.58),
                             (0.10, 0.02, 0.02, 0.025), (1.1, 0.6, 0.6, 0.7)),
    "nmosd_like": _Class(41, 14, (18, 80), 4, 0.0, 2.0, (0.20, 0.05, 0.30, 0.45),
                         (0.06, 0.025, 0.05, 0.03), (1.0, 0.7, 0.9, 0.9)),
}


def _count_mean(c: _Class, age: np.ndarray) -> np.ndarray:
    return np.asarray(c.count_mean + c.count_per_year * np.maximum(age - 45.0, 0.0))


def _nb_p(c: _Class, age: np.ndarray) -> np.ndarray:
    """Success probability of the negative binomial of ``count - 1`` (mean ``count_mean - 1``)."""
    extra = np.maximum(_count_mean(c, age) - 1.0, 1e-9)
    return np.asarray(c.count_shape / (c.count_shape + extra))


@dataclass(frozen=True)
class SimulatedDifferentialCohort:
    """Synthetic patients of :func:`simulate_differential`.

    Attributes
    ----------
    patients
        One row per patient: ``patient_id``, ``source`` (true class, :data:`CLASSES`),
        ``label`` (recorded class, with noise), ``age_years`` and ``oracle_{class}``, the true
        posterior probability of the *recorded* label under the generative model.
    lesions
        One row per lesion: ``patient_id``, ``lesion_id`` (1..n), ``volume_ml``, ``location``.
    seed
        The seed that produced it.
    """

    patients: pd.DataFrame
    lesions: pd.DataFrame
    seed: int = field(default=0)


def _truncated_lognormal(rng: np.random.Generator, median_ml: np.ndarray, sigma: np.ndarray
                         ) -> np.ndarray:
    mu = np.log(median_ml)
    lo = ndtr((math.log(_FLOOR_ML) - mu) / sigma)
    u = rng.uniform(lo, 1.0)
    return np.asarray(np.exp(mu + sigma * ndtri(np.clip(u, 1e-12, 1 - 1e-12))))


def _simulate_one(rng: np.random.Generator, c: _Class) -> tuple[float, np.ndarray, np.ndarray]:
    lo, hi = c.age_range
    a, b = ndtr((lo - c.age_mean) / c.age_sd), ndtr((hi - c.age_mean) / c.age_sd)
    age = float(np.clip(c.age_mean + c.age_sd * ndtri(rng.uniform(a, b)), lo, hi))
    p = float(_nb_p(c, np.asarray(age)))
    n = 1 + int(rng.negative_binomial(c.count_shape, p))
    mix = rng.dirichlet(_CONCENTRATION * np.asarray(c.location_mix))
    loc = rng.choice(len(LOCATIONS), size=n, p=mix)
    vol = _truncated_lognormal(rng, np.asarray(c.volume_median_ml)[loc],
                               np.asarray(c.volume_sigma)[loc])
    return age, vol, loc


def oracle_posterior(age_years: float, volume_ml: np.ndarray, location: np.ndarray, *,
                     label_noise: float = _LABEL_NOISE) -> np.ndarray:
    """True posterior of the *recorded* class under the generative model, (3,) in CLASSES order.

    ``location`` holds indices into :data:`ms_core.lesions.location.LOCATIONS`. The likelihood is
    the product of the truncated-normal age density, the count probability, the Dirichlet-
    multinomial probability of the location sequence and the truncated log-normal volume
    densities; label noise mixes the posterior with the other classes.
    """
    vol = np.asarray(volume_ml, dtype=np.float64)
    loc = np.asarray(location, dtype=np.int64)
    n = vol.size
    counts = np.bincount(loc, minlength=len(LOCATIONS))
    log_lik = np.empty(len(CLASSES))
    for k, name in enumerate(CLASSES):
        c = _MODEL[name]
        lo, hi = c.age_range
        z = (age_years - c.age_mean) / c.age_sd
        log_age = (-0.5 * z * z - math.log(c.age_sd)
                   - math.log(ndtr((hi - c.age_mean) / c.age_sd)
                              - ndtr((lo - c.age_mean) / c.age_sd)))
        if not lo <= age_years <= hi:
            log_age = -math.inf
        log_n = float(nbinom.logpmf(n - 1, c.count_shape, _nb_p(c, np.asarray(age_years))))
        alpha = _CONCENTRATION * np.asarray(c.location_mix)
        log_loc = float(gammaln(alpha.sum()) - gammaln(alpha.sum() + n)
                        + np.sum(gammaln(alpha + counts) - gammaln(alpha)))
        mu = np.log(np.asarray(c.volume_median_ml))[loc]
        sigma = np.asarray(c.volume_sigma)[loc]
        zv = (np.log(vol) - mu) / sigma
        tail = 1.0 - ndtr((math.log(_FLOOR_ML) - mu) / sigma)
        log_vol = float(np.sum(-0.5 * zv * zv - np.log(sigma) - np.log(vol) - np.log(tail)))
        log_lik[k] = math.log(_PRIORS[k]) + log_age + log_n + log_loc + log_vol
    post = np.exp(log_lik - logsumexp(log_lik))
    return np.asarray((1.0 - label_noise) * post
                      + label_noise * (1.0 - post) / (len(CLASSES) - 1))


def simulate_differential(n: int, seed: int, *, label_noise: float = _LABEL_NOISE
                          ) -> SimulatedDifferentialCohort:
    """Simulate ``n`` patients from the generative model of the module docstring.

    The same ``(n, seed, label_noise)`` gives the same cohort.

    >>> c = simulate_differential(30, seed=1)
    >>> len(c.patients), set(c.patients.source) <= set(CLASSES)
    (30, True)
    >>> bool(np.allclose(c.patients[[f"oracle_{k}" for k in CLASSES]].sum(axis=1), 1.0))
    True
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not 0.0 <= label_noise < 0.5:
        raise ValueError(f"label_noise must be in [0, 0.5), got {label_noise}")
    rng = np.random.default_rng(seed)
    n = int(n)
    sources = rng.choice(len(CLASSES), size=n, p=_PRIORS)
    flip = rng.uniform(size=n) < label_noise
    shift = rng.integers(1, len(CLASSES), size=n)
    labels = np.where(flip, (sources + shift) % len(CLASSES), sources)
    ages, oracle, pids, vols, locs = [], [], [], [], []
    for pid, s in enumerate(sources, start=1):
        age, vol, loc = _simulate_one(rng, _MODEL[CLASSES[int(s)]])
        ages.append(age)
        oracle.append(oracle_posterior(age, vol, loc, label_noise=label_noise))
        pids.append(np.full(vol.size, pid))
        vols.append(vol)
        locs.append(loc)
    post = np.vstack(oracle)
    patients = pd.DataFrame({
        "patient_id": np.arange(1, n + 1),
        "source": np.asarray(CLASSES, dtype=object)[sources],
        "label": np.asarray(CLASSES, dtype=object)[labels],
        "age_years": ages,
        **{f"oracle_{k}": post[:, i] for i, k in enumerate(CLASSES)},
    })
    lesions = pd.DataFrame({
        "patient_id": np.concatenate(pids),
        "lesion_id": np.concatenate([np.arange(1, v.size + 1) for v in vols]),
        "volume_ml": np.concatenate(vols),
        "location": np.asarray(LOCATIONS, dtype=object)[np.concatenate(locs)],
    })
    return SimulatedDifferentialCohort(patients, lesions, int(seed))


def cohort_differential_features(cohort: SimulatedDifferentialCohort) -> pd.DataFrame:
    """Features of every simulated patient: indexed by ``patient_id``, columns
    :data:`DIFFERENTIAL_FEATURES`."""
    return features_by_patient(cohort.lesions, cohort.patients, differential_features,
                               DIFFERENTIAL_FEATURES)


# ----------------------------------------------------------------------------- scoring
@dataclass(frozen=True)
class DifferentialResult:
    """Three-class score of one lesion pattern, with exact linear SHAP per class.

    Attributes
    ----------
    probabilities
        (3,) float64 in :data:`CLASSES` order, summing to 1 (calibrated on synthetic patients).
    shap_values
        (3, F): contribution of each feature to each class's *centred calibrated logit*
        ``(z_k - mean_j z_j) / T``; ``base_values[k] + shap_values[k].sum()`` equals it, and the
        softmax of those sums is ``probabilities``.
    base_values
        (3,): the centred calibrated logits at the training mean of the features.
    feature_names, feature_values
        The model's inputs, (F,) float64.
    model_version, model_sha256
        Of the ONNX model that produced the score.
    limits
        What the score is not; show it with the score.
    """

    probabilities: np.ndarray
    shap_values: np.ndarray
    base_values: np.ndarray
    feature_names: tuple[str, ...]
    feature_values: np.ndarray
    model_version: str
    model_sha256: str
    limits: str = LIMITS

    def __post_init__(self) -> None:
        k, f = len(CLASSES), len(self.feature_names)
        if self.probabilities.shape != (k,) or not np.isclose(self.probabilities.sum(), 1.0):
            raise ValueError(f"probabilities must be ({k},) summing to 1, got "
                             f"{self.probabilities}")
        if self.shap_values.shape != (k, f) or self.base_values.shape != (k,) \
                or self.feature_values.shape != (f,):
            raise ValueError(f"expected SHAP ({k}, {f}), base ({k},) and values ({f},), got "
                             f"{self.shap_values.shape}, {self.base_values.shape} and "
                             f"{self.feature_values.shape}")

    @property
    def most_likely(self) -> str:
        """The class with the highest probability (one of :data:`CLASSES`)."""
        return CLASSES[int(np.argmax(self.probabilities))]

    def by_class(self) -> dict[str, float]:
        """``display name -> probability`` in :data:`CLASSES` order."""
        return {CLASS_LABELS[c]: float(p)
                for c, p in zip(CLASSES, self.probabilities, strict=True)}

    def top_contributions(self, n: int = 5, cls: str | None = None) -> pd.DataFrame:
        """The ``n`` largest |SHAP| features for ``cls`` (default :attr:`most_likely`).

        Columns ``feature``, ``meaning``, ``value`` and ``shap`` (in the class's centred
        calibrated logit; positive favours the class).
        """
        k = CLASSES.index(cls or self.most_likely)
        order = np.argsort(-np.abs(self.shap_values[k]), kind="stable")[:n]
        return pd.DataFrame({
            "feature": [self.feature_names[i] for i in order],
            "meaning": [DIFFERENTIAL_FEATURE_DESCRIPTIONS[self.feature_names[i]]
                        for i in order],
            "value": self.feature_values[order], "shap": self.shap_values[k, order]})


@dataclass(frozen=True, eq=False)
class DifferentialModel:
    """A verified differential model: ONNX session, card and JSON linear explainer."""

    onnx: TabularModel
    features: tuple[str, ...]
    coef: np.ndarray  # (3, F), raw feature units
    intercept: np.ndarray  # (3,)
    background_mean: np.ndarray  # (F,)
    temperature: float

    @property
    def card(self) -> dict[str, Any]:
        return self.onnx.model.card


def explain_logits(model: DifferentialModel, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact linear SHAP of the centred calibrated logits for one (F,) feature vector.

    Returns ``(phi, base)`` with shapes (3, F) and (3,): ``base + phi.sum(axis=1)`` equals
    ``(z - z.mean()) / T`` with ``z = coef @ x + intercept`` (interventional SHAP with the
    training means as background, as ``shap.LinearExplainer`` with independent features).
    """
    w = (model.coef - model.coef.mean(axis=0)) / model.temperature
    b = (model.intercept - model.intercept.mean()) / model.temperature
    phi = w * (np.asarray(x, dtype=np.float64) - model.background_mean)
    return np.asarray(phi), np.asarray(b + w @ model.background_mean)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - np.max(z))
    return np.asarray(e / e.sum())


def load_differential_model(models_dir: Path | str = MODELS_DIR) -> DifferentialModel:
    """The verified differential model (sha256 of model and explainer checked).

    Raises
    ------
    ModelError
        when the model or its explainer is missing, altered (sha256 mismatch) or inconsistent
        with the card or with each other.
    """
    from ms_core.segmentation.inference import load_tabular_model

    verified = verify_model(MODEL_NAME, models_dir, ("name", "version", "sha256", "training",
                                                     "features", "output", "explainer",
                                                     "classes"))
    card = verified.card
    names = tuple(str(f) for f in card["features"])
    if names != MODEL_FEATURES or tuple(card["classes"]) != CLASSES:
        raise ModelError(verified.card_path, (
            f"card features {list(names)} / classes {card['classes']} differ from this "
            f"version's {list(MODEL_FEATURES)} / {list(CLASSES)}; retrain the model"))
    exp_path = verified.onnx_path.parent / str(card["explainer"]["path"])
    if not exp_path.is_file():
        raise ModelError(exp_path, "explainer file not found")
    if sha256_file(exp_path) != card["explainer"]["sha256"]:
        raise ModelError(exp_path, "explainer sha256 does not match the model card; refusing it")
    exp = read_json(exp_path)
    try:
        model = DifferentialModel(
            onnx=load_tabular_model(verified, output=str(card["output"]["name"])),
            features=names, coef=np.asarray(exp["coef"], dtype=np.float64),
            intercept=np.asarray(exp["intercept"], dtype=np.float64),
            background_mean=np.asarray(exp["background_mean"], dtype=np.float64),
            temperature=float(exp["temperature"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(exp_path, f"explainer field missing or malformed: {e}") from e
    k, f = len(CLASSES), len(names)
    if model.coef.shape != (k, f) or model.intercept.shape != (k,) \
            or model.background_mean.shape != (f,) or not model.temperature > 0:
        raise ModelError(exp_path, f"explainer shapes {model.coef.shape}, "
                                   f"{model.intercept.shape}, {model.background_mean.shape} or "
                                   f"temperature {model.temperature} do not fit {k} classes and "
                                   f"{f} features")
    x0 = model.background_mean
    phi, base = explain_logits(model, x0)
    gap = float(np.max(np.abs(_softmax(base + phi.sum(axis=1))
                              - model.onnx.predict_proba(x0[None, :])[0])))
    if gap > 1e-4:
        raise ModelError(exp_path, f"explainer disagrees with the ONNX model by {gap:.1e}")
    return model


@functools.lru_cache(maxsize=4)
def _cached(models_dir: str, digests: tuple[str, ...]) -> DifferentialModel:
    return load_differential_model(Path(models_dir))


def cached_differential_model(models_dir: Path | str = MODELS_DIR) -> DifferentialModel:
    """:func:`load_differential_model`, memoised on the folder and the sha256 of the manifest,
    model, card and explainer (a changed file is verified again)."""
    root = Path(models_dir)
    folder = root / MODEL_NAME
    files = (root / "manifest.json", folder / "model.onnx", folder / "model.json",
             folder / "explainer.json")
    return _cached(str(root.resolve()),
                   tuple(sha256_file(p) if p.is_file() else "" for p in files))


def score_differential(model: DifferentialModel, features: Mapping[str, float]
                       ) -> DifferentialResult:
    """Score ``features`` (from :func:`differential_features`) with ``model``.

    Raises
    ------
    ValueError
        when there are no lesions, or naming every needed feature that is missing or not
        finite (unknown age, lesion table without locations).
    """
    if features.get("lesion_count") == 0:
        raise ValueError("no lesions: the differential needs at least one lesion (a normal "
                         "brain MRI does not exclude NMOSD, whose lesions may be spinal only)")
    bad = [f for f in model.features
           if f not in features or not math.isfinite(float(features[f]))]
    if bad:
        raise ValueError(f"features missing or not finite: {bad}; the differential needs a "
                         "lesion table with volume_ml and location columns and a known age")
    x = np.asarray([float(features[f]) for f in model.features], dtype=np.float64)
    proba = model.onnx.predict_proba(x[None, :].astype(np.float32))
    if proba.shape != (1, len(CLASSES)):
        raise ModelError(model.onnx.model.onnx_path,
                         f"expected (1, {len(CLASSES)}) probabilities, got {proba.shape}")
    phi, base = explain_logits(model, x)
    return DifferentialResult(
        probabilities=proba[0] / proba[0].sum(), shap_values=phi, base_values=base,
        feature_names=model.features, feature_values=x,
        model_version=str(model.card["version"]), model_sha256=model.onnx.model.sha256)


def score_differential_table(model: DifferentialModel, lesions: pd.DataFrame, *,
                             age_years: float | None) -> DifferentialResult:
    """:func:`differential_features` then :func:`score_differential`: one call for the app."""
    return score_differential(model, differential_features(lesions, age_years=age_years))
