"""Two more binary clinical models: CIS -> clinically definite MS, and response to a DMT.

Both reuse the prognosis machinery unchanged: :func:`ms_core.clinical.prognosis_fit.fit_prognosis`
and :func:`~ms_core.clinical.prognosis_fit.write_model` (training, Platt calibration, ONNX export,
JSON explainer) and :func:`ms_core.clinical.prognosis.load_prognosis_model` /
:func:`~ms_core.clinical.prognosis.score` (verification, scoring, SHAP), with their own feature
tuples and outcome columns.

CIS conversion (``models_onnx/cis_conversion``)
    For a patient whose first visit is a clinically isolated syndrome (CIS): the probability of
    clinically definite MS (a second attack, ``cdms_2y``) within 2 years, from age, sex, the
    T2 lesions of the first brain MRI (count, location, McDonald 2017 dissemination in space,
    volume), the presenting syndrome and CSF oligoclonal bands (NaN when unknown).
Treatment response (``models_onnx/treatment_response``)
    For a patient on a DMT: the probability of evidence of disease activity (EDA: a relapse, a
    new or enlarging T2 lesion or confirmed disability worsening, i.e. *not* NEDA-3) in the
    next year (``eda_1y``), from a subset of the prognosis features plus the time on the
    current DMT and the relapses of the last year (the clinical half of the Rio score).

The synthetic cohorts (:func:`generate_cis_cohort`, :func:`generate_response_cohort`) draw the
features, a true risk from a logistic model whose effect sizes are rounded from the cited
studies (:data:`CIS_LOG_ODDS`, :data:`RESPONSE_LOG_ODDS`, sources in
:data:`EFFECT_SOURCES` and ``docs/clinical_models.md``) and the outcome as a Bernoulli draw of
that risk. They are plausible in direction and size, not fitted to data.

:func:`dmt_switch_activity` is descriptive, not a model: observed relapse rates and
new/enlarging lesion rates before and after each DMT switch of one patient.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ms_core.foundation.domain import DAYS_PER_YEAR, Participant, Visit
from ms_core.lesions.features import LOCATION_FEATURES, PROGNOSIS_FEATURES, visit_features
from ms_core.lesions.mcdonald import dissemination_in_space
from ms_core.longitudinal.timeline import NO_DMT, dmt_periods
from ms_core.synthetic.cohort import DMT_LESION_RATIO

__all__ = [
    "CIS_FEATURES",
    "CIS_INTERCEPT",
    "CIS_LOG_ODDS",
    "CIS_OUTCOME",
    "EFFECT_SOURCES",
    "FEATURE_LABELS",
    "PRESENTATIONS",
    "RESPONSE_FEATURES",
    "RESPONSE_INTERCEPT",
    "RESPONSE_LOG_ODDS",
    "RESPONSE_OUTCOME",
    "SWITCH_COLUMNS",
    "ClinicalCohort",
    "cis_features",
    "cis_log_odds",
    "cohort_table",
    "dmt_switch_activity",
    "generate_cis_cohort",
    "generate_response_cohort",
    "response_features",
    "response_log_odds",
]

log = logging.getLogger(__name__)

#: Presenting syndromes of a CIS with their own 0/1 column; any other (e.g. hemispheric,
#: polysymptomatic) is all zeros, an unknown one all NaN.
PRESENTATIONS = ("optic_neuritis", "brainstem", "spinal_cord")
#: Inputs of the CIS conversion model, in order (units in the names; NaN = unknown).
CIS_FEATURES = (
    "age_years", "sex_male", "lesion_count",
    *(f"{loc}_count" for loc in LOCATION_FEATURES),
    "dis_met", "infratentorial_any", "lesion_volume_ml",
    *(f"presentation_{p}" for p in PRESENTATIONS),
    "oligoclonal_bands",
)
#: Outcome of the CIS model: clinically definite MS (second attack) within 2 years, 0/1.
CIS_OUTCOME = "cdms_2y"
#: Inputs of the treatment-response model, in order: a subset of the prognosis features plus
#: ``years_on_dmt`` (since the first visit with the current DMT) and ``relapses_1y`` (relapses
#: in the year up to this visit).
RESPONSE_FEATURES = (
    "age_years", "sex_male", "disease_duration_years", "edss_baseline", "progressive_course",
    "dmt_efficacy", "years_on_dmt", "relapses_1y", "relapses_2y", "new_enlarging_per_year",
    "lesion_count", "lesion_volume_ml",
)
#: Outcome of the response model: evidence of disease activity within 1 year, 0/1.
RESPONSE_OUTCOME = "eda_1y"
#: Plain-language names of the features that :data:`ms_core.clinical.prognosis.FEATURE_LABELS`
#: lacks.
FEATURE_LABELS = {
    "dis_met": "McDonald DIS met (brain MRI)", "infratentorial_any": "Any infratentorial lesion",
    "presentation_optic_neuritis": "Presentation: optic neuritis",
    "presentation_brainstem": "Presentation: brainstem",
    "presentation_spinal_cord": "Presentation: spinal cord",
    "oligoclonal_bands": "CSF oligoclonal bands", "years_on_dmt": "Years on this DMT",
    "relapses_1y": "Relapses, last year",
}

#: Log-odds of CDMS within 2 years per unit of each term of :func:`cis_log_odds`.
CIS_LOG_ODDS = {
    "age_per_10y": -0.25,
    "t2_lesions_1_3": 1.60,
    "t2_lesions_4_9": 2.10,
    "t2_lesions_10plus": 2.40,
    "dis_met": 0.30,
    "infratentorial_any": 0.40,
    "oligoclonal_bands": 0.55,
    "optic_neuritis": -0.30,
}
#: Log-odds at the reference (age 30, no lesion, no oligoclonal bands, not optic neuritis);
#: set once by simulation for a 2-year conversion rate of about 30 %.
CIS_INTERCEPT = -3.05
#: Log-odds of EDA within 1 year per unit of each term of :func:`response_log_odds`.
RESPONSE_LOG_ODDS = {
    "age_per_10y": -0.25,
    "dmt_high": -0.85,
    "first_6_months": 0.45,
    "relapses_1y_capped3": 0.60,
    "relapses_2y_capped4": 0.15,
    "log1p_new_enlarging_per_year": 0.65,
    "edss_baseline": 0.10,
    "progressive_course": 0.20,
    "log1p_lesion_volume_ml": 0.15,
}
#: Log-odds at the reference (age 40, moderate DMT for > 6 months, no activity, EDSS 0);
#: set once by simulation for an EDA rate of about 45 %.
RESPONSE_INTERCEPT = -0.95
#: Where each effect size comes from (rendered in docs/clinical_models.md).
EFFECT_SOURCES = {
    "cis.age_per_10y": "younger age raises the risk: HR 0.98 per year older, i.e. 0.82 per 10 "
    "years (Kuhle et al., Mult Scler 2015;21:1013-24, 1047 CIS, multivariable); each younger "
    "decade raised the risk in Tintoré et al., Brain 2015;138:1863-74 (1015 CIS). OR 0.78 per "
    "10 years",
    "cis.t2_lesions_1_3": "1-3 T2 lesions vs none: HR about 6 for CDMS (Tintoré et al., Brain "
    "2015; figure from the issue, not re-checked against the full text here). Kuhle et al. "
    "2015 found smaller effects against 0/1 lesions (2-9 lesions HR 1.97). OR 5: the "
    "Tintoré end of the range",
    "cis.t2_lesions_4_9": "4-9 T2 lesions: between the 1-3 and >= 10 groups; OR 8 (chosen)",
    "cis.t2_lesions_10plus": ">= 10 T2 lesions: HR about 11 vs none (Tintoré et al. 2015, as "
    "above); Kuhle et al. 2015: > 9 vs 0/1 lesions HR 2.74. Fisniku et al., Brain "
    "2008;131:808-17: 82 % of CIS with an abnormal MRI vs 21 % with a normal one had "
    "converted at 20 years. OR 11: upper end",
    "cis.dis_met": "dissemination in space adds to the count (McDonald 2017 rationale; "
    "Thompson et al., Lancet Neurol 2018); small, chosen",
    "cis.infratentorial_any": "infratentorial lesions in CIS: HR about 2.4 (Tintoré et al., "
    "Neurology 2010, as cited in docs/prognosis_generative_model.md); attenuated to OR 1.5 "
    "because those lesions also count in the T2 lesion groups",
    "cis.oligoclonal_bands": "CSF oligoclonal bands: HR 2.18 (95 % CI 1.71-2.77) adjusted for "
    "T2 lesions and age (Kuhle et al. 2015); HR about 1.3 independent of MRI in Tintoré et al. "
    "2015 (figure from the issue). OR 1.7 in between",
    "cis.optic_neuritis": "optic neuritis: lower risk of CDMS, HR 0.6 (0.5-0.8) (Tintoré et al. "
    "2015); attenuated to OR 0.74 because part of it is the lower lesion load of optic "
    "neuritis",
    "response.age_per_10y": "DMT efficacy and inflammatory activity fall with age (Weideman et "
    "al., Front Neurol 2017, meta-analysis of trials by age); OR 0.78 per 10 years, chosen",
    "response.dmt_high": "high- vs moderate-efficacy DMT: NEDA over 96 weeks 47.7 % vs 27.1 % "
    "(ocrelizumab vs interferon beta-1a, pooled OPERA I/II post hoc analysis), i.e. OR 0.41 "
    "for EDA; also natalizumab 37 % vs placebo 7 % NEDA over 2 years (AFFIRM post hoc, "
    "Havrdová et al., Lancet Neurol 2009). OR 0.43",
    "response.first_6_months": "activity in the first months of a DMT, before its full effect "
    "(the reason NEDA analyses re-baseline at 6 months); OR 1.6, chosen",
    "response.relapses_1y_capped3": "a relapse in the first year of treatment is a component "
    "of the Rio and modified Rio scores of treatment response (Sormani et al., Mult Scler "
    "2013; validated by Sormani et al., Neurology 2016); OR 1.8 per relapse, chosen",
    "response.relapses_2y_capped4": "relapses over 2 years add a little to the last year's "
    "(chosen)",
    "response.log1p_new_enlarging_per_year": "new T2 lesions on treatment: > 4 new lesions is "
    "the MRI component of the modified Rio score (Sormani et al. 2013); OR 2.6 at 3 per year, "
    "3.8 at 6 per year, chosen",
    "response.edss_baseline": "higher EDSS makes confirmed worsening (a NEDA-3 component) more "
    "likely; small, chosen",
    "response.progressive_course": "progressive course: fewer relapses, more worsening; net "
    "small, chosen",
    "response.log1p_lesion_volume_ml": "T2 lesion load: small, chosen",
}

_LOCATION_SHARE = (0.40, 0.25, 0.10, 0.25)
_LOCATION_SIZE_ML = (0.12, 0.05, 0.06, 0.04)
_PRESENTATION_P = (0.37, 0.24, 0.28, 0.11)
_P_OCB_UNKNOWN = 0.40
_P_PRESENTATION_UNKNOWN = 0.05
_P_SINGLE_SCAN = 0.20
_P_RELAPSES_UNKNOWN = 0.05


@dataclass(frozen=True, eq=False)
class ClinicalCohort:
    """A synthetic cohort of N patients for one clinical model.

    Attributes
    ----------
    features
        (N, 1 + F) ``patient_id`` and the model's features in order, float64, NaN where not
        measured.
    features_complete
        As ``features`` without the missing values (what would have been measured).
    outcome
        (N,) int64 0/1, a Bernoulli draw of ``true_risk``.
    true_risk
        (N,) float64 generative probability of the outcome (from the complete values).
    outcome_column
        ``cdms_2y`` or ``eda_1y``.
    """

    features: pd.DataFrame
    features_complete: pd.DataFrame
    outcome: np.ndarray
    true_risk: np.ndarray
    outcome_column: str

    def __post_init__(self) -> None:
        n = len(self.features)
        if list(self.features.columns) != list(self.features_complete.columns):
            raise ValueError("features and features_complete must have the same columns")
        for name, arr in (("outcome", self.outcome), ("true_risk", self.true_risk)):
            if np.shape(arr) != (n,):
                raise ValueError(f"{name} must have shape ({n},), got {np.shape(arr)}")


def cohort_table(cohort: ClinicalCohort) -> pd.DataFrame:
    """``patient_id`` + features + outcome + ``true_risk``: the input of ``fit_prognosis``.

    >>> list(cohort_table(generate_cis_cohort(5)).columns[-2:])
    ['cdms_2y', 'true_risk']
    """
    table = cohort.features.copy()
    table[cohort.outcome_column] = np.asarray(cohort.outcome, dtype=np.int64)
    table["true_risk"] = np.asarray(cohort.true_risk, dtype=np.float64)
    return table


def _check_n(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or int(n) < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    return int(n)


def _truncnorm(rng: np.random.Generator, mean: float, sd: float, lo: float, hi: float,
               n: int) -> np.ndarray:
    a, b = (lo - mean) / sd, (hi - mean) / sd
    return np.asarray(stats.truncnorm.rvs(a, b, loc=mean, scale=sd, size=n, random_state=rng),
                      dtype=np.float64)


def _ids(n: int) -> np.ndarray:
    width = max(4, len(str(n)))
    return np.array([f"P{i + 1:0{width}d}" for i in range(n)])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float64)


# --- CIS conversion -------------------------------------------------------------------------

def _require(features: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in features.columns]
    if missing:
        raise ValueError(f"features lack columns {missing}")
    nan_cols = [c for c in columns if features[c].isna().any()]
    if nan_cols:
        raise ValueError(f"the true risk needs complete values; NaN in {nan_cols}")


def cis_log_odds(features: pd.DataFrame) -> np.ndarray:
    """Log-odds of CDMS within 2 years from complete :data:`CIS_FEATURES`; (N,) float64.

    Terms: ``age_per_10y = (age - 30) / 10``; T2 lesion count groups 1-3, 4-9, >= 10 (0/1,
    none is the reference); ``dis_met``, ``infratentorial_any``, ``oligoclonal_bands`` and
    optic neuritis 0/1. Coefficients :data:`CIS_LOG_ODDS`, intercept :data:`CIS_INTERCEPT`.

    >>> f = pd.DataFrame({c: [0.0] for c in CIS_FEATURES}).assign(age_years=30.0)
    >>> round(float(cis_log_odds(f)[0]), 2) == CIS_INTERCEPT
    True
    """
    _require(features, CIS_FEATURES)
    f = features
    count = f["lesion_count"].to_numpy(dtype=np.float64)
    terms = {
        "age_per_10y": (f["age_years"].to_numpy(dtype=np.float64) - 30.0) / 10.0,
        "t2_lesions_1_3": ((count >= 1) & (count <= 3)).astype(np.float64),
        "t2_lesions_4_9": ((count >= 4) & (count <= 9)).astype(np.float64),
        "t2_lesions_10plus": (count >= 10).astype(np.float64),
        "dis_met": f["dis_met"].to_numpy(dtype=np.float64),
        "infratentorial_any": f["infratentorial_any"].to_numpy(dtype=np.float64),
        "oligoclonal_bands": f["oligoclonal_bands"].to_numpy(dtype=np.float64),
        "optic_neuritis": f["presentation_optic_neuritis"].to_numpy(dtype=np.float64),
    }
    z = np.full(len(f), CIS_INTERCEPT)
    for name, beta in CIS_LOG_ODDS.items():
        z = z + beta * terms[name]
    return np.asarray(z, dtype=np.float64)


def _cis_characteristics(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Complete :data:`CIS_FEATURES` of ``n`` CIS patients (docs/clinical_models.md)."""
    burden = rng.standard_normal(n)
    age = np.round(_truncnorm(rng, 32.0, 8.0, 16.0, 55.0, n), 1)
    male = (rng.random(n) < 0.30).astype(np.float64)
    presentation = rng.choice(4, p=_PRESENTATION_P, size=n)
    normal_mri = rng.random(n) < _sigmoid(-0.85 - 0.9 * burden)
    mean = 7.0 * np.exp(0.8 * burden)
    count = np.where(normal_mri, 0,
                     np.minimum(1 + rng.poisson(rng.gamma(2.0, mean / 2.0)), 150))
    shares = rng.dirichlet(20.0 * np.asarray(_LOCATION_SHARE), size=n)
    brainstem = presentation == 1
    shares[brainstem, 2] += 0.15  # a symptomatic brainstem lesion is often visible
    shares /= shares.sum(axis=1, keepdims=True)
    loc_count = rng.multinomial(count, shares)
    size = np.asarray(_LOCATION_SIZE_ML)[None, :] * np.exp(0.5 * rng.standard_normal((n, 4)))
    volume = np.round((loc_count * size).sum(axis=1), 3)
    areas = (loc_count[:, :3] > 0).sum(axis=1)
    ocb = rng.random(n) < _sigmoid(0.1 + 0.7 * burden + 1.2 * (count > 0))
    cols: dict[str, np.ndarray] = {
        "age_years": age, "sex_male": male, "lesion_count": count.astype(np.float64)}
    for i, loc in enumerate(LOCATION_FEATURES):
        cols[f"{loc}_count"] = loc_count[:, i].astype(np.float64)
    cols.update({
        "dis_met": (areas >= 2).astype(np.float64),
        "infratentorial_any": (loc_count[:, 2] > 0).astype(np.float64),
        "lesion_volume_ml": volume,
    })
    for i, name in enumerate(PRESENTATIONS):
        cols[f"presentation_{name}"] = (presentation == i).astype(np.float64)
    cols["oligoclonal_bands"] = ocb.astype(np.float64)
    return pd.DataFrame({c: cols[c] for c in CIS_FEATURES})


def generate_cis_cohort(n: int = 3000, seed: int = 0) -> ClinicalCohort:
    """Synthetic CIS patients at presentation, with 2-year conversion to CDMS.

    Features (:data:`CIS_FEATURES`) from a latent lesion burden; true risk
    ``sigmoid(cis_log_odds)``; outcome a Bernoulli draw; oligoclonal bands unknown in 40 %
    (no lumbar puncture) and the presentation in 5 %, completely at random. One
    ``np.random.default_rng(seed)``: the same seed gives identical frames.

    >>> c = generate_cis_cohort(40, seed=1)
    >>> c.features.shape, c.outcome_column
    ((40, 15), 'cdms_2y')
    """
    n = _check_n(n)
    rng = np.random.default_rng(seed)
    complete = _cis_characteristics(n, rng)
    risk = _sigmoid(cis_log_odds(complete))
    outcome = (rng.random(n) < risk).astype(np.int64)
    features = complete.copy()
    features.loc[rng.random(n) < _P_OCB_UNKNOWN, "oligoclonal_bands"] = np.nan
    features.loc[rng.random(n) < _P_PRESENTATION_UNKNOWN,
                 [f"presentation_{p}" for p in PRESENTATIONS]] = np.nan
    ids = _ids(n)
    features.insert(0, "patient_id", ids)
    complete.insert(0, "patient_id", ids)
    return ClinicalCohort(features=features, features_complete=complete, outcome=outcome,
                          true_risk=risk, outcome_column=CIS_OUTCOME)


def cis_features(participant: Participant, visits: Sequence[Visit], visit: Visit,
                 lesions: pd.DataFrame | None, *, presentation: str | None = None,
                 oligoclonal_bands: bool | None = None) -> dict[str, float]:
    """One row of :data:`CIS_FEATURES` (NaN = unknown) for a CIS visit.

    Parameters
    ----------
    participant, visits, visit
        The clinical record (age at ``visit`` from the birth year, sex).
    lesions
        The visit's per-lesion table with ``volume_ml`` and ``location`` columns (the
        segmentation's ``lesions.csv``); ``None`` when not segmented. Without a ``location``
        column the per-location counts, ``dis_met`` and ``infratentorial_any`` are NaN.
    presentation
        ``"optic_neuritis"``, ``"brainstem"``, ``"spinal_cord"``, ``"other"`` or ``None``
        (unknown: the three columns are NaN).
    oligoclonal_bands
        CSF-specific oligoclonal bands, ``None`` when not tested.

    >>> import datetime as dt
    >>> p = Participant("sub-01", "F", 1990, "CIS", 2019)
    >>> v = Visit("sub-01", "ses-01", dt.date(2020, 7, 1), 1.0, 0, None, None, None)
    >>> t = pd.DataFrame({"lesion_id": [1, 2], "volume_ml": [0.1, 0.2],
    ...                   "location": ["periventricular", "infratentorial"]})
    >>> r = cis_features(p, [v], v, t)
    >>> r["lesion_count"], r["dis_met"], r["infratentorial_any"], round(r["age_years"], 1)
    (2.0, 1.0, 1.0, 30.0)
    """
    if presentation is not None and presentation not in (*PRESENTATIONS, "other"):
        raise ValueError(f"presentation must be one of {(*PRESENTATIONS, 'other')} or None, "
                         f"got {presentation!r}")
    base = visit_features(participant, visits, visit, lesions=lesions)
    row = dict.fromkeys(CIS_FEATURES, float("nan"))
    for key in ("age_years", "sex_male", "lesion_count", "lesion_volume_ml",
                *(f"{loc}_count" for loc in LOCATION_FEATURES)):
        row[key] = base[key]
    if lesions is not None and "location" in lesions.columns:
        ids = lesions["lesion_id"] if "lesion_id" in lesions.columns else range(1, len(lesions)
                                                                                 + 1)
        dis = dissemination_in_space({int(i): str(loc) for i, loc in
                                      zip(ids, lesions["location"], strict=True)})
        row["dis_met"] = float(dis.satisfied)
        row["infratentorial_any"] = float(bool(dis.areas["infratentorial"]))
    if presentation is not None:
        for name in PRESENTATIONS:
            row[f"presentation_{name}"] = float(presentation == name)
    if oligoclonal_bands is not None:
        row["oligoclonal_bands"] = float(bool(oligoclonal_bands))
    return row


# --- treatment response ---------------------------------------------------------------------

def response_log_odds(features: pd.DataFrame) -> np.ndarray:
    """Log-odds of EDA within 1 year from complete :data:`RESPONSE_FEATURES`; (N,) float64.

    Terms: ``age_per_10y = (age - 40) / 10``; ``dmt_high`` (efficacy 2); ``first_6_months``
    (``years_on_dmt < 0.5``); relapses in 1 year capped at 3 and in 2 years capped at 4;
    ``ln(1 + new_enlarging_per_year)``; EDSS; progressive course; ``ln(1 + lesion_volume_ml)``.

    >>> f = pd.DataFrame({c: [0.0] for c in RESPONSE_FEATURES}).assign(
    ...     age_years=40.0, dmt_efficacy=1.0, years_on_dmt=2.0)
    >>> round(float(response_log_odds(f)[0]), 2) == RESPONSE_INTERCEPT
    True
    """
    _require(features, RESPONSE_FEATURES)
    f = features
    num = {c: f[c].to_numpy(dtype=np.float64) for c in RESPONSE_FEATURES}
    terms = {
        "age_per_10y": (num["age_years"] - 40.0) / 10.0,
        "dmt_high": (num["dmt_efficacy"] == 2).astype(np.float64),
        "first_6_months": (num["years_on_dmt"] < 0.5).astype(np.float64),
        "relapses_1y_capped3": np.minimum(num["relapses_1y"], 3.0),
        "relapses_2y_capped4": np.minimum(num["relapses_2y"], 4.0),
        "log1p_new_enlarging_per_year": np.log1p(num["new_enlarging_per_year"]),
        "edss_baseline": num["edss_baseline"],
        "progressive_course": num["progressive_course"],
        "log1p_lesion_volume_ml": np.log1p(num["lesion_volume_ml"]),
    }
    z = np.full(len(f), RESPONSE_INTERCEPT)
    for name, beta in RESPONSE_LOG_ODDS.items():
        z = z + beta * terms[name]
    return np.asarray(z, dtype=np.float64)


def _response_characteristics(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Complete :data:`RESPONSE_FEATURES` of ``n`` treated patients (docs/clinical_models.md)."""
    act = rng.standard_normal(n)
    prog = rng.random(n) < 0.10
    age = np.round(np.where(prog, _truncnorm(rng, 50.0, 8.0, 20.0, 65.0, n),
                            _truncnorm(rng, 38.0, 9.0, 18.0, 65.0, n)), 1)
    male = (rng.random(n) < np.where(prog, 0.42, 0.28)).astype(np.float64)
    dur = np.where(prog, 14.0 * np.exp(0.45 * rng.standard_normal(n)),
                   5.0 * np.exp(0.8 * rng.standard_normal(n)))
    dur = np.round(np.clip(dur, 0.3, age - 15.0), 1)
    edss = 1.3 + 0.08 * dur + np.where(prog, 3.0, 0.0) + 0.8 * rng.standard_normal(n)
    edss = np.round(np.clip(edss, 0.0, 8.0) * 2.0) / 2.0
    high = rng.random(n) < _sigmoid(-0.5 + 0.9 * act - 0.6 * prog)
    dmt = np.where(high, 2, 1)
    years_on = np.round(np.minimum(np.exp(np.log(2.0) + 1.0 * rng.standard_normal(n)),
                                   dur + 0.1), 2)
    years_on = np.maximum(years_on, 0.05)
    arr = (np.where(prog, 0.10, 0.45 * np.exp(-0.02 * (age - 38.0))) * np.exp(0.6 * act)
           * np.where(high, 0.5, 0.8))
    relapses_1y = rng.poisson(arr)
    relapses_2y = relapses_1y + rng.poisson(arr * 1.3)
    rate = (1.5 * np.exp(0.9 * act) * np.asarray(DMT_LESION_RATIO)[dmt]
            * np.where(prog, 0.35, 1.0) * np.exp(-0.02 * (age - 38.0)))
    interval = rng.uniform(0.75, 1.5, n)
    new_count = rng.poisson(rng.gamma(1.2, rate * interval / 1.2))
    log_vol = np.log(5.0) + 0.035 * (dur - 5.0) + 0.45 * act + 0.25 * prog \
        + 0.75 * rng.standard_normal(n)
    volume = np.round(np.clip(np.exp(log_vol), 0.05, 80.0), 3)
    count = 1 + rng.poisson(6.0 * volume**0.6)
    return pd.DataFrame({
        "age_years": age, "sex_male": male, "disease_duration_years": dur,
        "edss_baseline": edss, "progressive_course": prog.astype(np.float64),
        "dmt_efficacy": dmt.astype(np.float64), "years_on_dmt": years_on,
        "relapses_1y": relapses_1y.astype(np.float64),
        "relapses_2y": relapses_2y.astype(np.float64),
        "new_enlarging_per_year": np.round(new_count / interval, 2),
        "lesion_count": count.astype(np.float64), "lesion_volume_ml": volume,
    })[list(RESPONSE_FEATURES)]


def generate_response_cohort(n: int = 3000, seed: int = 0) -> ClinicalCohort:
    """Synthetic patients on a DMT at a landmark visit, with EDA within the next year.

    Features (:data:`RESPONSE_FEATURES`) from a latent inflammatory activity; true risk
    ``sigmoid(response_log_odds)``; outcome a Bernoulli draw; the lesion rate is unknown for
    20 % (single scan) and the relapse counts for 5 %, completely at random.

    >>> c = generate_response_cohort(40, seed=1)
    >>> c.features.shape, c.outcome_column
    ((40, 13), 'eda_1y')
    """
    n = _check_n(n)
    rng = np.random.default_rng(seed)
    complete = _response_characteristics(n, rng)
    risk = _sigmoid(response_log_odds(complete))
    outcome = (rng.random(n) < risk).astype(np.int64)
    features = complete.copy()
    features.loc[rng.random(n) < _P_SINGLE_SCAN, "new_enlarging_per_year"] = np.nan
    features.loc[rng.random(n) < _P_RELAPSES_UNKNOWN, ["relapses_1y", "relapses_2y"]] = np.nan
    ids = _ids(n)
    features.insert(0, "patient_id", ids)
    complete.insert(0, "patient_id", ids)
    return ClinicalCohort(features=features, features_complete=complete, outcome=outcome,
                          true_risk=risk, outcome_column=RESPONSE_OUTCOME)


def _relapses_within(visits: Sequence[Visit], visit: Visit, years: float) -> float:
    start = visit.acq_date - dt.timedelta(days=round(years * DAYS_PER_YEAR))
    counts = [v.relapses_since_last for v in visits if start < v.acq_date <= visit.acq_date]
    if any(c is None for c in counts):
        return float("nan")
    return float(sum(c for c in counts if c is not None))


def _dmt_key(visit: Visit) -> str:
    return (visit.dmt or "").strip().lower()


def response_features(prognosis_row: Mapping[str, Any], visits: Sequence[Visit],
                      visit: Visit) -> dict[str, float]:
    """One row of :data:`RESPONSE_FEATURES` for a visit on a DMT.

    Parameters
    ----------
    prognosis_row
        The visit's :data:`~ms_core.lesions.features.PROGNOSIS_FEATURES` (e.g. its row of
        :func:`ms_core.clinical.patient_features.patient_feature_table`); NaN/None = unknown.
    visits, visit
        The patient's visits and the scored one: ``years_on_dmt`` counts from the first visit
        of the current uninterrupted run of ``visit.dmt``, ``relapses_1y`` sums the relapses
        reported in the year up to ``visit`` (NaN when one count is missing).

    >>> import datetime as dt
    >>> v = [Visit("s", f"ses-0{i}", dt.date(2019 + i, 1, 1), 1.0, i, "natalizumab", None, None)
    ...      for i in (1, 2)]
    >>> r = response_features({"age_years": 40.0}, v, v[1])
    >>> round(r["years_on_dmt"], 2), r["relapses_1y"], r["edss_baseline"] != r["edss_baseline"]
    (1.0, 2.0, True)
    """
    unknown = sorted(set(prognosis_row) - set(PROGNOSIS_FEATURES) - {"session_id",
                                                                       "mri_measured"})
    if unknown:
        raise ValueError(f"unknown prognosis features {unknown}")
    row = dict.fromkeys(RESPONSE_FEATURES, float("nan"))
    for key in RESPONSE_FEATURES:
        value = prognosis_row.get(key)
        if value is not None and value == value:
            row[key] = float(value)
    ordered = sorted(visits, key=lambda v: (v.acq_date, v.session_id))
    if _dmt_key(visit) not in ("", "none", "n/a"):
        start = visit.acq_date
        for v in reversed([v for v in ordered if v.acq_date <= visit.acq_date]):
            if _dmt_key(v) != _dmt_key(visit):
                break
            start = v.acq_date
        row["years_on_dmt"] = (visit.acq_date - start).days / DAYS_PER_YEAR
    row["relapses_1y"] = _relapses_within(ordered, visit, 1.0)
    return row


# --- DMT switches -----------------------------------------------------------------------------

#: Columns of :func:`dmt_switch_activity`.
SWITCH_COLUMNS = (
    "switch_date", "from_dmt", "to_dmt",
    "before_years", "before_relapses", "before_arr",
    "after_years", "after_relapses", "after_arr",
    "before_new_enlarging", "before_mri_years", "before_new_enlarging_per_year",
    "after_new_enlarging", "after_mri_years", "after_new_enlarging_per_year",
    "relapse_source", "lesion_source",
)


def _interval_counts(ordered: Sequence[Visit], measured: pd.DataFrame | None,
                     truths: Mapping[str, Mapping[str, Any] | None] | None
                     ) -> list[tuple[dt.date, dt.date, float, str]]:
    """(previous date, date, new/enlarging count, source) per interval with a count."""
    by_session: dict[str, float] = {}
    if measured is not None and len(measured):
        if "session_id" not in measured.columns or "new_or_enlarging" not in measured.columns:
            raise ValueError("measured must have session_id and new_or_enlarging columns "
                             "(ms_core.longitudinal.measurements.measured_table), got "
                             f"{list(measured)}")
        for sid, value in zip(measured["session_id"], measured["new_or_enlarging"],
                              strict=True):
            if value == value and value is not None:
                by_session[str(sid)] = float(value)
    out = []
    for prev, visit in itertools.pairwise(ordered):
        if visit.session_id in by_session:
            out.append((prev.acq_date, visit.acq_date, by_session[visit.session_id],
                        "measured (pipeline)"))
            continue
        truth = (truths or {}).get(visit.session_id) or {}
        value = truth.get("new_or_enlarging")
        if isinstance(value, int | float) and not isinstance(value, bool):
            out.append((prev.acq_date, visit.acq_date, float(value), "ground truth (demo)"))
    return out


def _window(counts: Sequence[tuple[dt.date, dt.date, float, str]], lo: dt.date, hi: dt.date
            ) -> tuple[float, float, float, set[str]]:
    """Count, years, rate and sources of the intervals lying within (lo, hi]."""
    inside = [c for c in counts if c[0] >= lo and c[1] <= hi and c[1] > lo]
    years = sum((b - a).days for a, b, _, _ in inside) / DAYS_PER_YEAR
    total = float(sum(c[2] for c in inside))
    rate = total / years if years > 0 else float("nan")
    return (total if inside else float("nan")), years, rate, {c[3] for c in inside}


def dmt_switch_activity(visits: Sequence[Visit], measured: pd.DataFrame | None = None,
                        truths: Mapping[str, Mapping[str, Any] | None] | None = None
                        ) -> pd.DataFrame:
    """Observed activity before vs after each DMT switch (one row per switch).

    A switch is a boundary between two therapy periods of
    :func:`ms_core.longitudinal.timeline.dmt_periods` (a start from "none recorded" counts too).
    *Before* is the previous period, from its first visit to the switch visit; *after* is the next
    period, from the switch visit to its end (the next switch or the last visit).

    Relapses come from the clinical visits table (``relapses_since_last`` of the visits in the
    window; those reported at the switch visit happened before it): annualised relapse rate
    ``relapses / years``. New or enlarging T2 lesions come per interval between consecutive
    visits from ``measured`` (:func:`ms_core.longitudinal.measurements.measured_table`, preferred)
    or else from ``truths`` (session id -> parsed ``truth.json``, demo ground truth); only intervals
    with a count and lying inside the window count, and their length is ``*_mri_years``.
    ``lesion_source`` names where the counts came from ("" when none).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`SWITCH_COLUMNS`; rates NaN when the window has no time or no data; empty
        without a switch.

    >>> import datetime as dt
    >>> v = [Visit("s", f"ses-0{i}", dt.date(2018 + i, 1, 1), None, r, d, None, None)
    ...      for i, r, d in [(1, 0, "A"), (2, 2, "A"), (3, 0, "B"), (4, 0, "B")]]
    >>> t = dmt_switch_activity(v)
    >>> t[["from_dmt", "to_dmt", "before_relapses", "after_arr"]].values.tolist()
    [['A', 'B', 2.0, 0.0]]
    """
    periods = dmt_periods(visits)
    ordered = sorted(visits, key=lambda v: (v.acq_date, v.session_id))
    counts = _interval_counts(ordered, measured, truths)
    rows = []
    for i in range(1, len(periods)):
        before, after = periods.iloc[i - 1], periods.iloc[i]
        lo, switch, hi = (before["start"].date(), after["start"].date(), after["end"].date())
        row: dict[str, object] = {"switch_date": after["start"], "from_dmt": before["dmt"],
                                  "to_dmt": after["dmt"]}
        rel_sources: set[str] = set()
        lesion_sources: set[str] = set()
        for side, a, b in (("before", lo, switch), ("after", switch, hi)):
            years = (b - a).days / DAYS_PER_YEAR
            window = [v.relapses_since_last for v in ordered if a < v.acq_date <= b]
            known = [int(c) for c in window if c is not None]
            relapses = float(sum(known)) if window and len(known) == len(window) else \
                float("nan")
            if window:
                rel_sources.add("clinical visits table")
            row[f"{side}_years"] = years
            row[f"{side}_relapses"] = relapses
            row[f"{side}_arr"] = relapses / years if years > 0 else float("nan")
            total, mri_years, rate, sources = _window(counts, a, b)
            row[f"{side}_new_enlarging"] = total
            row[f"{side}_mri_years"] = mri_years
            row[f"{side}_new_enlarging_per_year"] = rate
            lesion_sources |= sources
        row["relapse_source"] = ", ".join(sorted(rel_sources))
        row["lesion_source"] = " + ".join(sorted(lesion_sources))
        rows.append(row)
    dtypes = {c: "float64" for c in SWITCH_COLUMNS} | {
        "switch_date": "datetime64[ns]", "from_dmt": "str", "to_dmt": "str",
        "relapse_source": "str", "lesion_source": "str"}
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=dtypes[c]) for c in SWITCH_COLUMNS})
    table = pd.DataFrame(rows, columns=list(SWITCH_COLUMNS)).astype(dtypes)
    table["from_dmt"] = table["from_dmt"].replace("", NO_DMT)
    return table
