"""Diagnosis support: is a white-matter lesion pattern MS-typical? (research use only)

A logistic regression on per-patient lesion-pattern features scores how typical a lesion pattern
is of MS rather than of small-vessel disease or migraine. Trained only on synthetic patients; no
diagnosis (the McDonald 2017 checklist, :mod:`ms_core.lesions.mcdonald`, stays the standard).

Main entry points: :func:`pattern_features`, :func:`score_lesion_table`,
:func:`simulate_patterns`, :func:`load_diagnosis_model`. Features, generative model, numbers
and limits: ``docs/diagnosis.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy.special import ndtr, ndtri

from ms_core.lesions.location import LOCATIONS
from ms_core.lesions.mcdonald import DIS_AREAS
from ms_core.segmentation.model_store import MODELS_DIR, ModelError, verify_model

if TYPE_CHECKING:
    from ms_core.segmentation.inference import TabularModel

__all__ = [
    "DIAGNOSIS_FEATURES",
    "FEATURE_DESCRIPTIONS",
    "LIMITS",
    "MODEL_FEATURES",
    "MODEL_NAME",
    "PUNCTATE_DIAMETER_MM",
    "SOURCES",
    "DiagnosisResult",
    "SimulatedCohort",
    "cohort_features",
    "equivalent_diameter_mm",
    "features_by_patient",
    "load_diagnosis_model",
    "pattern_features",
    "score_lesion_table",
    "score_pattern",
    "simulate_patterns",
]

#: Name of the model in ``models_onnx/manifest.json``.
MODEL_NAME = "diagnosis"
#: McDonald/MAGNIMS minimum lesion size (equivalent diameter, mm); smaller ones are punctate.
PUNCTATE_DIAMETER_MM = 3.0
#: Every pattern feature, in order (units in the names; see the module docstring).
DIAGNOSIS_FEATURES = (
    "age_years",
    "lesion_count", "log1p_lesion_count",
    "total_volume_ml", "log10_total_volume_ml", "log10_median_volume_ml",
    "count_ge_3mm", "punctate_fraction",
    *(f"{loc}_fraction" for loc in LOCATIONS),
    *(f"has_{area}" for area in DIS_AREAS),
    "median_elongation", "median_sphericity",
)
#: The features the shipped model takes, in order (also listed in its card).
MODEL_FEATURES = (
    "age_years", "log1p_lesion_count", "log10_total_volume_ml", "log10_median_volume_ml",
    "punctate_fraction", "periventricular_fraction", "juxtacortical_fraction",
    "infratentorial_fraction", "has_juxtacortical", "has_infratentorial",
)
#: One line per feature, with its unit, for tables in the app and the docs.
FEATURE_DESCRIPTIONS: Mapping[str, str] = {
    "age_years": "age at the scan (years)",
    "lesion_count": "number of lesions",
    "log1p_lesion_count": "ln(1 + number of lesions)",
    "total_volume_ml": "total lesion volume (ml)",
    "log10_total_volume_ml": "log10 total lesion volume (ml)",
    "log10_median_volume_ml": "log10 median lesion volume (ml)",
    "count_ge_3mm": "lesions with equivalent diameter >= 3 mm",
    "punctate_fraction": "fraction of lesions with equivalent diameter < 3 mm",
    **{f"{loc}_fraction": f"fraction of lesions that are {loc.replace('_', ' ')}"
       for loc in LOCATIONS},
    **{f"has_{a}": f"1 if any lesion is {a.replace('_', ' ')}, else 0" for a in DIS_AREAS},
    "median_elongation": "median lesion elongation (sqrt(l2/l1), 1 = round)",
    "median_sphericity": "median lesion sphericity (1 = ball)",
}
#: Shown with every score.
LIMITS = (
    "Research decision support, not a diagnosis: the model was trained on synthetic patients "
    "only (MS vs small-vessel disease and migraine-like patterns) and has not been validated on "
    "real patients. The McDonald 2017 criteria remain the diagnostic standard. Not assessed: "
    "spinal cord, central vein sign, contrast enhancement, other mimics (NMOSD, MOGAD, "
    "vasculitis, ...) and the clinical picture."
)
#: Sources of the generative model; ``ms`` is the positive class.
SOURCES = ("ms", "svd", "migraine")
_PUNCTATE_ML = math.pi / 6.0 * PUNCTATE_DIAMETER_MM**3 / 1000.0


# ----------------------------------------------------------------------------- features
def equivalent_diameter_mm(volume_ml: np.ndarray | float) -> np.ndarray:
    """Diameter (mm) of the ball with volume ``volume_ml``: ``(6 V / pi)^(1/3)``.

    >>> float(equivalent_diameter_mm(math.pi / 6 * 27 / 1000).round(6))
    3.0
    """
    v_mm3 = np.asarray(volume_ml, dtype=np.float64) * 1000.0
    return np.asarray(np.cbrt(6.0 * v_mm3 / math.pi))


def _median_column(lesions: pd.DataFrame, column: str) -> float:
    if column not in lesions.columns:
        return math.nan
    values = pd.to_numeric(lesions[column], errors="coerce").to_numpy(dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else math.nan


def _location_features(lesions: pd.DataFrame) -> dict[str, float]:
    names = [*(f"{loc}_fraction" for loc in LOCATIONS), *(f"has_{a}" for a in DIS_AREAS)]
    if "location" not in lesions.columns or lesions.empty:
        out = dict.fromkeys(names, math.nan)
        if lesions.empty:  # no lesion: no area involved, fractions undefined
            out.update({f"has_{a}": 0.0 for a in DIS_AREAS})
        return out
    loc = lesions["location"]
    if loc.isna().any():
        return dict.fromkeys(names, math.nan)
    unknown = sorted(set(loc.astype(str)) - set(LOCATIONS))
    if unknown:
        raise ValueError(f"unknown lesion locations {unknown}; use {LOCATIONS} "
                         "(ms_core.lesions.location.classify_lesions)")
    n = float(len(loc))
    counts = loc.astype(str).value_counts()
    out = {f"{c}_fraction": float(counts.get(c, 0)) / n for c in LOCATIONS}
    out.update({f"has_{a}": float(counts.get(a, 0) > 0) for a in DIS_AREAS})
    return out


def pattern_features(lesions: pd.DataFrame, *, age_years: float | None) -> dict[str, float]:
    """Per-patient pattern features (:data:`DIAGNOSIS_FEATURES`) of a per-lesion table.

    Parameters
    ----------
    lesions
        One row per lesion. Needs ``volume_ml`` (ml, >= 0); uses ``location`` (one of
        :data:`ms_core.lesions.location.LOCATIONS`) and the shape columns ``elongation`` and
        ``sphericity`` of :mod:`ms_core.lesions.features` when present (their features are NaN when
        absent). An empty table is a patient without lesions.
    age_years
        Age at the scan in years, or ``None`` when unknown (then NaN).

    Returns
    -------
    dict
        ``feature -> value`` for every name of :data:`DIAGNOSIS_FEATURES`, in that order; NaN
        marks a feature that cannot be computed.

    Raises
    ------
    TypeError
        when ``lesions`` is not a DataFrame.
    ValueError
        for a missing ``volume_ml`` column, negative or non-finite volumes, unknown locations or
        an age outside 0-120 years.

    >>> t = pd.DataFrame({"volume_ml": [0.1, 0.01], "location": ["periventricular",
    ...                                                       "deep_white_matter"]})
    >>> f = pattern_features(t, age_years=30)
    >>> f["lesion_count"], f["count_ge_3mm"], f["periventricular_fraction"]
    (2.0, 1.0, 0.5)
    >>> math.isnan(f["median_elongation"])
    True
    """
    if not isinstance(lesions, pd.DataFrame):
        raise TypeError(f"lesions must be a pandas DataFrame, got {type(lesions).__name__}")
    if "volume_ml" not in lesions.columns:
        raise ValueError(f"the lesion table needs a 'volume_ml' column; it has "
                         f"{list(lesions.columns)}")
    volumes = pd.to_numeric(lesions["volume_ml"], errors="coerce").to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(volumes)) or np.any(volumes < 0):
        raise ValueError(f"lesion volumes must be finite and >= 0 ml, got {volumes.tolist()}")
    if age_years is None:
        age = math.nan
    else:
        age = float(age_years)
        if not 0.0 <= age <= 120.0:
            raise ValueError(f"age_years must be in 0-120 years or None, got {age_years!r}")
    n = volumes.size
    total = float(volumes.sum())
    diameters = equivalent_diameter_mm(volumes)
    out: dict[str, float] = {
        "age_years": age,
        "lesion_count": float(n),
        "log1p_lesion_count": math.log1p(n),
        "total_volume_ml": total,
        "log10_total_volume_ml": math.log10(total) if total > 0 else math.nan,
        "log10_median_volume_ml": (math.log10(float(np.median(volumes)))
                                   if n and np.median(volumes) > 0 else math.nan),
        "count_ge_3mm": float(np.sum(diameters >= PUNCTATE_DIAMETER_MM)),
        "punctate_fraction": float(np.mean(diameters < PUNCTATE_DIAMETER_MM)) if n else math.nan,
    }
    out.update(_location_features(lesions))
    out["median_elongation"] = _median_column(lesions, "elongation")
    out["median_sphericity"] = _median_column(lesions, "sphericity")
    return {name: out[name] for name in DIAGNOSIS_FEATURES}


# ----------------------------------------------------------------------------- simulation
@dataclass(frozen=True)
class _Source:
    """Parameters of one source of the generative model (see the module docstring)."""

    age_mean: float
    age_sd: float
    age_range: tuple[float, float]
    count_mean: float
    count_dispersion: float  # negative binomial shape k (variance mean + mean^2 / k)
    location_mix: tuple[float, float, float, float]  # LOCATIONS order
    volume_median_ml: float
    volume_sigma: float  # of ln(volume)
    confluent_share: tuple[float, float] = (0.0, 1.0)  # Beta(a, b) per patient; a = 0: none
    confluent_median_ml: float = 0.4
    confluent_sigma: float = 0.9
    periventricular_scale: float = 1.5  # periventricular lesions are larger (confluent caps)


_SOURCES: Mapping[str, _Source] = {
    "ms": _Source(age_mean=36, age_sd=11, age_range=(18, 75), count_mean=14,
                  count_dispersion=1.5, location_mix=(0.40, 0.25, 0.12, 0.23),
                  volume_median_ml=0.05, volume_sigma=1.1),
    "svd": _Source(age_mean=66, age_sd=10, age_range=(40, 92), count_mean=15,
                   count_dispersion=1.2, location_mix=(0.30, 0.08, 0.06, 0.56),
                   volume_median_ml=0.02, volume_sigma=0.7, confluent_share=(2.0, 5.0)),
    "migraine": _Source(age_mean=38, age_sd=10, age_range=(18, 65), count_mean=5,
                        count_dispersion=2.0, location_mix=(0.06, 0.14, 0.02, 0.78),
                        volume_median_ml=0.02, volume_sigma=0.7, periventricular_scale=1.0),
}
_SOURCE_WEIGHTS = (0.50, 0.35, 0.15)
_LOCATION_CONCENTRATION = 6.0
_LOCATION_ERROR = 0.05
_LABEL_NOISE = 0.05
_FLOOR_ML = (0.003, 0.015)
#: Periventricular lesions merge in groups of 1 + Poisson(n_periventricular / 8).
_CONFLUENCE_LESIONS = 8.0
#: Older MS patients: extra punctate deep lesions, Poisson mean (age - 50) / 5.
_MS_AGE_LESIONS = (50.0, 5.0)


@dataclass(frozen=True)
class SimulatedCohort:
    """Synthetic patients of :func:`simulate_patterns`.

    Attributes
    ----------
    patients
        One row per patient: ``patient_id`` (int), ``source`` (:data:`SOURCES`), ``age_years``,
        ``true_ms`` (1 for the MS source) and ``label_ms`` (the recorded label, with noise).
    lesions
        One row per lesion: ``patient_id``, ``lesion_id`` (1..n per patient), ``volume_ml``,
        ``location``.
    seed
        The seed that produced it.
    """

    patients: pd.DataFrame
    lesions: pd.DataFrame
    seed: int = field(default=0)


def _truncated_lognormal(rng: np.random.Generator, n: int, median_ml: float, sigma: float,
                         floor_ml: float) -> np.ndarray:
    mu = math.log(median_ml)
    lo = float(ndtr((math.log(floor_ml) - mu) / sigma))
    u = rng.uniform(lo, 1.0, size=n)
    return np.asarray(np.exp(mu + sigma * ndtri(np.clip(u, 1e-12, 1 - 1e-12))))


def _merge_periventricular(rng: np.random.Generator, vol: np.ndarray, loc: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Merge periventricular lesions into confluent components (more merging with more lesions)."""
    peri = np.flatnonzero(loc == 0)
    if peri.size < 2:
        return vol, loc
    group_size = 1 + int(rng.poisson(peri.size / _CONFLUENCE_LESIONS))
    group = rng.integers(0, math.ceil(peri.size / group_size), size=peri.size)
    merged = np.bincount(group, weights=vol[peri])
    merged = merged[merged > 0]
    keep = loc != 0
    return (np.concatenate([vol[keep], merged]),
            np.concatenate([loc[keep], np.zeros(merged.size, dtype=loc.dtype)]))


def _simulate_patient(rng: np.random.Generator, source: str
                      ) -> tuple[float, np.ndarray, np.ndarray]:
    p = _SOURCES[source]
    age = float(np.clip(rng.normal(p.age_mean, p.age_sd), *p.age_range))
    k = p.count_dispersion
    n = 1 + int(rng.negative_binomial(k, k / (k + p.count_mean - 1.0)))
    mix = rng.dirichlet(_LOCATION_CONCENTRATION * np.asarray(p.location_mix))
    loc = rng.choice(len(LOCATIONS), size=n, p=mix)
    floor = float(rng.uniform(*_FLOOR_ML))
    vol = _truncated_lognormal(rng, n, p.volume_median_ml, p.volume_sigma, floor)
    if p.confluent_share[0] > 0:
        confluent = rng.uniform(size=n) < rng.beta(*p.confluent_share)
        big = _truncated_lognormal(rng, n, p.confluent_median_ml, p.confluent_sigma, floor)
        vol = np.where(confluent, big, vol)
    vol = np.where(loc == 0, vol * p.periventricular_scale, vol)
    if source == "ms" and age > _MS_AGE_LESIONS[0]:
        extra = int(rng.poisson((age - _MS_AGE_LESIONS[0]) / _MS_AGE_LESIONS[1]))
        svd = _SOURCES["svd"]
        loc = np.concatenate([loc, np.full(extra, LOCATIONS.index("deep_white_matter"))])
        vol = np.concatenate([vol, _truncated_lognormal(rng, extra, svd.volume_median_ml,
                                                        svd.volume_sigma, floor)])
    vol, loc = _merge_periventricular(rng, vol, loc)
    wrong = rng.uniform(size=loc.size) < _LOCATION_ERROR
    loc = np.where(wrong, rng.integers(0, len(LOCATIONS), size=loc.size), loc)
    return age, vol, loc


def simulate_patterns(n: int, seed: int, *, label_noise: float = _LABEL_NOISE
                      ) -> SimulatedCohort:
    """Simulate ``n`` patients' lesion sets from the generative model of the module docstring.

    Parameters
    ----------
    n
        Number of patients (>= 1).
    seed
        Seed of the NumPy generator; the same ``(n, seed)`` gives the same cohort.
    label_noise
        Fraction of recorded labels flipped, in [0, 0.5).

    Returns
    -------
    SimulatedCohort

    >>> c = simulate_patterns(20, seed=1)
    >>> len(c.patients), set(c.lesions.location) <= set(LOCATIONS)
    (20, True)
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not 0.0 <= label_noise < 0.5:
        raise ValueError(f"label_noise must be in [0, 0.5), got {label_noise}")
    rng = np.random.default_rng(seed)
    sources = rng.choice(len(SOURCES), size=int(n), p=_SOURCE_WEIGHTS)
    flips = rng.uniform(size=int(n)) < label_noise
    patients: dict[str, list[object]] = {k: [] for k in ("patient_id", "source", "age_years",
                                                          "true_ms", "label_ms")}
    pid_col: list[np.ndarray] = []
    vol_col: list[np.ndarray] = []
    loc_col: list[np.ndarray] = []
    for pid, (s, flip) in enumerate(zip(sources, flips, strict=True), start=1):
        source = SOURCES[int(s)]
        age, vol, loc = _simulate_patient(rng, source)
        true_ms = int(source == "ms")
        for key, value in (("patient_id", pid), ("source", source), ("age_years", age),
                           ("true_ms", true_ms), ("label_ms", true_ms ^ int(flip))):
            patients[key].append(value)
        pid_col.append(np.full(vol.size, pid))
        vol_col.append(vol)
        loc_col.append(loc)
    pids = np.concatenate(pid_col)
    lesions = pd.DataFrame({
        "patient_id": pids,
        "lesion_id": np.concatenate([np.arange(1, v.size + 1) for v in vol_col]),
        "volume_ml": np.concatenate(vol_col),
        "location": np.asarray(LOCATIONS, dtype=object)[np.concatenate(loc_col)],
    })
    return SimulatedCohort(pd.DataFrame(patients), lesions, int(seed))


def cohort_features(cohort: SimulatedCohort) -> pd.DataFrame:
    """Pattern features of every simulated patient: (n_patients, len(DIAGNOSIS_FEATURES)).

    Indexed by ``patient_id``, columns :data:`DIAGNOSIS_FEATURES`.
    """
    return features_by_patient(cohort.lesions, cohort.patients, pattern_features,
                               DIAGNOSIS_FEATURES)


def features_by_patient(lesions: pd.DataFrame, patients: pd.DataFrame,
                        feature_fn: Callable[..., dict[str, float]],
                        columns: Sequence[str]) -> pd.DataFrame:
    """``feature_fn(lesions of the patient, age_years=...)`` for every row of ``patients``
    (columns ``patient_id``, ``age_years``); a patient without lesions gets an empty table.

    Indexed by ``patient_id``, ``columns`` in order.
    """
    groups = dict(tuple(lesions.groupby("patient_id", sort=True)))
    empty = lesions.iloc[0:0]
    rows = [feature_fn(groups.get(pid, empty), age_years=age)
            for pid, age in zip(patients.patient_id, patients.age_years, strict=True)]
    return pd.DataFrame(rows, index=pd.Index(patients.patient_id, name="patient_id"),
                        columns=list(columns))


# ----------------------------------------------------------------------------- scoring
@dataclass(frozen=True)
class DiagnosisResult:
    """Score of one lesion pattern by the diagnosis-support model.

    Attributes
    ----------
    prob_ms_pattern
        Model probability in [0, 1] that the pattern is MS-typical rather than SVD- or
        migraine-like (calibrated on synthetic patients only).
    features
        The model's input features by name, in the model's order.
    model_version, model_sha256
        Of the ONNX model that produced the score.
    threshold
        Decision threshold of the card (the metrics in the card are stated at it).
    limits
        What the score is not; show it with the score.
    """

    prob_ms_pattern: float
    features: Mapping[str, float]
    model_version: str
    model_sha256: str
    threshold: float = 0.5
    limits: str = LIMITS

    def __post_init__(self) -> None:
        if not 0.0 <= self.prob_ms_pattern <= 1.0:
            raise ValueError(f"prob_ms_pattern must be in [0, 1], got {self.prob_ms_pattern}")

    @property
    def pattern(self) -> str:
        """``"MS-typical"`` at or above the threshold, else ``"other (SVD/migraine-like)"``."""
        if self.prob_ms_pattern >= self.threshold:
            return "MS-typical"
        return "other (SVD/migraine-like)"


def _model_features(model: TabularModel) -> tuple[str, ...]:
    names = tuple(str(f) for f in model.model.card.get("features", ()))
    unknown = [f for f in names if f not in DIAGNOSIS_FEATURES]
    if not names or unknown:
        raise ModelError(model.model.card_path, (
            f"card 'features' must be a non-empty list of {DIAGNOSIS_FEATURES}; "
            f"got {names} (unknown: {unknown})"))
    return names


def load_diagnosis_model(models_dir: Path | str = MODELS_DIR) -> TabularModel:
    """The verified diagnosis-support model as a CPU onnxruntime session.

    Raises
    ------
    ModelError
        when the model is missing, altered (sha256 mismatch), or its card lacks fields or lists
        unknown features.
    """
    from ms_core.segmentation.inference import load_tabular_model

    verified = verify_model(MODEL_NAME, models_dir,
                            ("name", "version", "sha256", "training", "features", "output"))
    model = load_tabular_model(verified, output=str(verified.card["output"]["name"]))
    _model_features(model)
    return model


def score_pattern(model: TabularModel, features: Mapping[str, float]) -> DiagnosisResult:
    """Score pattern ``features`` (from :func:`pattern_features`) with ``model``.

    Raises
    ------
    ValueError
        naming every feature the model needs that is absent or not finite (for example
        ``age_years`` when the age is unknown, or the location fractions of a table without
        locations), or when there are no lesions at all.
    """
    names = _model_features(model)
    if features.get("lesion_count") == 0:
        raise ValueError("no lesions: the pattern classifier needs at least one lesion")
    bad = [f for f in names if f not in features or not math.isfinite(float(features[f]))]
    if bad:
        raise ValueError(f"features missing or not finite: {bad}; compute them with "
                         "ms_core.clinical.diagnosis.pattern_features from a lesion table with "
                         "volume_ml and location columns and a known age")
    x = np.asarray([[float(features[f]) for f in names]], dtype=np.float32)
    proba = model.predict_proba(x)
    if proba.shape != (1, 2):
        raise ModelError(model.model.onnx_path,
                         f"expected (1, 2) class probabilities, got shape {proba.shape}")
    card = model.model.card
    return DiagnosisResult(
        prob_ms_pattern=float(np.clip(proba[0, 1], 0.0, 1.0)),
        features={f: float(features[f]) for f in names},
        model_version=str(card["version"]), model_sha256=model.model.sha256,
        threshold=float(card.get("threshold", 0.5)),
    )


def score_lesion_table(model: TabularModel, lesions: pd.DataFrame, *,
                       age_years: float | None) -> DiagnosisResult:
    """:func:`pattern_features` then :func:`score_pattern`: one call for the app."""
    return score_pattern(model, pattern_features(lesions, age_years=age_years))
