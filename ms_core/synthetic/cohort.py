"""Synthetic prognosis cohort: baseline features, 3-year EDSS visits and 2-year CDW labels.

:func:`generate_cohort` draws one landmark visit per patient with every column of
:data:`ms_core.lesions.features.PROGNOSIS_FEATURES`, the generative probability of confirmed
disability worsening (CDW) within 2 years (``true_risk``), an EDSS trajectory consistent with a
Bernoulli(``true_risk``) draw, and the label obtained by running
:mod:`ms_core.longitudinal.outcomes` on that trajectory. The model, with every number and its
source, is in ``docs/prognosis_generative_model.md``; it is plausible in direction and size, not
fitted to data.

Steps (all from one ``np.random.default_rng(seed)``, so a seed gives identical frames):

1. two latent factors per patient, inflammatory activity and neurodegeneration (correlated);
2. clinical and MRI characteristics from the latents (:func:`_characteristics`);
3. the true risk, a logistic model in transformed features (:data:`RISK_LOG_ODDS`,
   :func:`risk_terms`), computed on the complete values;
4. the event draw and EDSS visits every 6 months for 3 years (:func:`_edss_visits`);
5. missing values, completely at random: scan-interval features of single-scan patients and a
   few relapse counts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from ms_core.lesions.features import LOCATION_FEATURES, PROGNOSIS_FEATURES
from ms_core.longitudinal.outcomes import EDSS_STEPS, cdw_table
from ms_core.synthetic.demo import DMT_EFFECT

__all__ = [
    "COHORT_VISIT_YEARS",
    "DMT_LESION_RATIO",
    "RISK_INTERCEPT",
    "RISK_LOG_ODDS",
    "Cohort",
    "cohort_table",
    "generate_cohort",
    "risk_terms",
    "true_log_odds",
]

log = logging.getLogger(__name__)

#: Scheduled EDSS visits, years after the landmark visit.
COHORT_VISIT_YEARS = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
#: Rate ratio of new/enlarging T2 lesions per DMT efficacy class, from the demo's trial-based
#: :data:`ms_core.synthetic.demo.DMT_EFFECT`: moderate = interferon beta-1a, high = geometric mean
#: of anti-CD20 and natalizumab.
DMT_LESION_RATIO = (
    1.0,
    DMT_EFFECT["interferon beta-1a"]["lesions"],
    float(np.sqrt(DMT_EFFECT["anti-CD20"]["lesions"] * DMT_EFFECT["natalizumab"]["lesions"])),
)
#: Log-odds of CDW within 2 years per unit of each term of :func:`risk_terms` (sources and
#: rounding in docs/prognosis_generative_model.md).
RISK_LOG_ODDS = {
    "age_per_10y": 0.20,
    "sex_male": 0.15,
    "edss_baseline": 0.20,
    "progressive_course": 0.40,
    "relapses_2y_capped4": 0.30,
    "log1p_new_enlarging_per_year": 0.50,
    "atrophy_pct_per_year": 1.00,
    "dmt_moderate": -0.30,
    "dmt_high": -0.55,
    "infratentorial_2plus": 0.40,
    "log1p_lesion_volume_ml": 0.25,
}
#: Log-odds at the reference values (age 40, all other terms 0); calibrated once for an event
#: rate of about 22 % (docs/prognosis_generative_model.md).
RISK_INTERCEPT = -3.35

_LOCATION_SHARE = (0.40, 0.25, 0.10, 0.25)
_LOCATION_SIZE = (1.5, 0.6, 0.7, 0.8)
_MIN_LESION_ML = 0.01
_P_MISSED_VISIT = 0.06
_P_SINGLE_SCAN = 0.20
_P_RELAPSES_UNKNOWN = 0.05


@dataclass(frozen=True, eq=False)
class Cohort:
    """A synthetic prognosis cohort of N patients.

    Attributes
    ----------
    features
        (N, 1 + F) ``patient_id`` and :data:`~ms_core.lesions.features.PROGNOSIS_FEATURES` in order,
        float64, NaN where not measured.
    outcome
        (N,) int64 0/1: CDW within 2 years, 24-week confirmed
        (:func:`ms_core.longitudinal.outcomes.cdw_table` on ``edss_visits``).
    true_risk
        (N,) float64: the generative probability of the outcome (depends on the complete
        values, never on missingness).
    edss_visits
        Long table ``patient_id, time_years, edss``, one row per attended visit.
    features_complete
        As ``features`` without missing values (what would have been measured).
    event_drawn
        (N,) bool: the Bernoulli(``true_risk``) draw the trajectory was built from; equal to
        ``outcome`` by construction.
    """

    features: pd.DataFrame
    outcome: np.ndarray
    true_risk: np.ndarray
    edss_visits: pd.DataFrame
    features_complete: pd.DataFrame
    event_drawn: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.features)
        expected = ["patient_id", *PROGNOSIS_FEATURES]
        for name, frame in (("features", self.features),
                            ("features_complete", self.features_complete)):
            if list(frame.columns) != expected:
                raise ValueError(f"{name} columns must be patient_id + PROGNOSIS_FEATURES, "
                                 f"got {list(frame.columns)}")
            if len(frame) != n:
                raise ValueError(f"{name} has {len(frame)} rows, expected {n}")
        for name, arr in (("outcome", self.outcome), ("true_risk", self.true_risk),
                          ("event_drawn", self.event_drawn)):
            if np.shape(arr) != (n,):
                raise ValueError(f"{name} must have shape ({n},), got {np.shape(arr)}")


def risk_terms(features: pd.DataFrame) -> pd.DataFrame:
    """Transformed features that enter the true risk, one column per :data:`RISK_LOG_ODDS` key.

    Parameters
    ----------
    features
        Complete (no NaN) :data:`~ms_core.lesions.features.PROGNOSIS_FEATURES` columns.

    Returns
    -------
    pandas.DataFrame
        Same index; ``age_per_10y = (age - 40) / 10``, ``relapses_2y_capped4 = min(r, 4)``,
        ``atrophy_pct_per_year = -pbvc``, ``log1p_*`` natural log of 1 + value, ``dmt_*`` and
        ``infratentorial_2plus`` (>= 2 infratentorial lesions) 0/1.

    >>> f = pd.DataFrame({c: [0.0] for c in PROGNOSIS_FEATURES}).assign(age_years=50.0)
    >>> risk_terms(f)["age_per_10y"].tolist()
    [1.0]
    """
    missing = [c for c in PROGNOSIS_FEATURES if c not in features.columns]
    if missing:
        raise ValueError(f"features lack columns {missing}")
    nan_cols = [c for c in PROGNOSIS_FEATURES if features[c].isna().any()]
    if nan_cols:
        raise ValueError(f"risk terms need complete values; NaN in {nan_cols}")
    f = features
    dmt = f["dmt_efficacy"].to_numpy(dtype=np.float64)
    terms = pd.DataFrame({
        "age_per_10y": (f["age_years"] - 40.0) / 10.0,
        "sex_male": f["sex_male"].astype(np.float64),
        "edss_baseline": f["edss_baseline"].astype(np.float64),
        "progressive_course": f["progressive_course"].astype(np.float64),
        "relapses_2y_capped4": np.minimum(f["relapses_2y"], 4.0),
        "log1p_new_enlarging_per_year": np.log1p(f["new_enlarging_per_year"]),
        "atrophy_pct_per_year": -f["pbvc_pct_per_year"],
        "dmt_moderate": (dmt == 1).astype(np.float64),
        "dmt_high": (dmt == 2).astype(np.float64),
        "infratentorial_2plus": (f["infratentorial_count"] >= 2).astype(np.float64),
        "log1p_lesion_volume_ml": np.log1p(f["lesion_volume_ml"]),
    }, index=features.index)
    return terms[list(RISK_LOG_ODDS)]


def true_log_odds(features: pd.DataFrame) -> np.ndarray:
    """Log-odds of CDW within 2 years: :data:`RISK_INTERCEPT` + terms @ :data:`RISK_LOG_ODDS`.

    Returns (N,) float64.
    """
    coef = np.array(list(RISK_LOG_ODDS.values()))
    return np.asarray(RISK_INTERCEPT + risk_terms(features).to_numpy() @ coef, dtype=np.float64)


def _truncnorm(rng: np.random.Generator, mean: np.ndarray, sd: float, lo: float,
               hi: float) -> np.ndarray:
    a, b = (lo - mean) / sd, (hi - mean) / sd
    return np.asarray(stats.truncnorm.rvs(a, b, loc=mean, scale=sd, random_state=rng),
                      dtype=np.float64)


def _snap_edss(latent: np.ndarray) -> np.ndarray:
    steps = np.asarray(EDSS_STEPS)
    idx = np.abs(latent[:, None] - steps[None, :]).argmin(axis=1)
    return np.asarray(steps[idx], dtype=np.float64)


def _characteristics(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Complete :data:`PROGNOSIS_FEATURES` of ``n`` patients.

    Every number is explained in docs/prognosis_generative_model.md, section "Patients".
    """
    act = rng.standard_normal(n)
    deg = 0.3 * act + np.sqrt(1.0 - 0.3**2) * rng.standard_normal(n)
    prog = rng.random(n) < 1.0 / (1.0 + np.exp(-(-2.05 + 0.8 * deg)))
    age = np.where(prog, _truncnorm(rng, np.full(n, 51.0), 8.0, 20.0, 65.0),
                   _truncnorm(rng, np.full(n, 38.0), 9.0, 20.0, 65.0))
    male = rng.random(n) < np.where(prog, 0.42, 0.27)
    dur = np.where(prog, 15.0 * np.exp(0.45 * rng.standard_normal(n)),
                   6.0 * np.exp(0.75 * rng.standard_normal(n)))
    dur = np.round(np.clip(dur, 0.2, age - 15.0), 1)
    edss_rr = 1.3 + 0.08 * dur + 0.015 * (age - 38.0) + 0.7 * rng.standard_normal(n)
    edss_prog = 4.6 + 0.04 * (dur - 15.0) + 0.015 * (age - 51.0) + 0.9 * rng.standard_normal(n)
    edss = _snap_edss(np.clip(np.where(prog, edss_prog, edss_rr) + 0.45 * deg, 0.0, 8.0))
    arr = np.where(prog, 0.12, 0.35 * np.exp(-0.02 * (age - 38.0))) * np.exp(0.55 * act)
    relapses = rng.poisson(2.0 * arr).astype(np.float64)
    dmt_logits = np.stack([
        np.zeros(n),
        0.9 - 0.015 * (age - 38.0) - 0.8 * prog,
        -0.2 + 0.8 * act + 0.5 * np.minimum(relapses, 3.0) - 0.8 * prog,
    ], axis=1)
    gumbel = -np.log(-np.log(rng.random((n, 3))))
    dmt = np.argmax(dmt_logits + gumbel, axis=1)
    log_vol = (np.log(5.5) + 0.035 * (dur - 7.0) + 0.45 * act + 0.30 * deg + 0.25 * prog
               + 0.75 * rng.standard_normal(n))
    volume = np.clip(np.exp(log_vol), 0.05, 80.0)
    count = 1 + rng.poisson(6.0 * volume**0.6 * np.exp(0.3 * rng.standard_normal(n)))
    volume = np.maximum(volume, count * 2.0 * _MIN_LESION_ML)
    shares = rng.dirichlet(20.0 * np.asarray(_LOCATION_SHARE), size=n)
    loc_count = rng.multinomial(count, shares)
    size = np.asarray(_LOCATION_SIZE)[None, :] * rng.gamma(4.0, 0.25, size=(n, 4))
    weight = loc_count * size
    loc_volume = (loc_count * _MIN_LESION_ML + (volume - count * _MIN_LESION_ML)[:, None]
                  * weight / weight.sum(axis=1, keepdims=True))
    loc_volume = np.round(loc_volume, 3)
    interval = rng.uniform(0.75, 1.5, n)
    rate = (1.5 * np.exp(0.9 * act) * np.asarray(DMT_LESION_RATIO)[dmt]
            * np.where(prog, 0.35, 1.0) * np.exp(-0.02 * (age - 38.0)))
    k_disp = 1.2
    new_count = rng.poisson(rng.gamma(k_disp, rate * interval / k_disp))
    new_per_year = np.round(new_count / interval, 2)
    pbvc = (-0.50 - 0.17 * deg - 0.06 * act - 0.20 * prog - 0.004 * (age - 38.0)
            + 0.08 * (dmt == 2) + 0.22 * rng.standard_normal(n))
    bpf = (0.860 - 0.0012 * (age - 20.0) - 0.0012 * dur - 0.012 * deg
           - 0.006 * np.log(np.sum(loc_volume, axis=1)) - 0.012 * prog
           + 0.012 * rng.standard_normal(n))
    bpf = np.round(np.clip(bpf, 0.68, 0.88), 4)
    gm_share = 0.57 - 0.008 * deg - 0.0004 * (age - 40.0) + 0.015 * rng.standard_normal(n)
    gm = np.round(bpf * np.clip(gm_share, 0.51, 0.64), 4)
    cols: dict[str, np.ndarray] = {
        "age_years": np.round(age, 1),
        "sex_male": male.astype(np.float64),
        "disease_duration_years": dur,
        "edss_baseline": edss,
        "relapses_2y": relapses,
        "dmt_efficacy": dmt.astype(np.float64),
        "progressive_course": prog.astype(np.float64),
        "lesion_volume_ml": np.round(loc_volume.sum(axis=1), 3),
        "lesion_count": count.astype(np.float64),
    }
    for i, loc in enumerate(LOCATION_FEATURES):
        cols[f"{loc}_volume_ml"] = loc_volume[:, i]
        cols[f"{loc}_count"] = loc_count[:, i].astype(np.float64)
    cols.update({
        "new_enlarging_per_year": new_per_year,
        "pbvc_pct_per_year": np.round(pbvc, 2),
        "bpf": bpf,
        "gm_fraction": gm,
        "wm_fraction": np.round(bpf - gm, 4),
    })
    return pd.DataFrame({c: cols[c] for c in PROGNOSIS_FEATURES})


def _edss_visits(patient_ids: np.ndarray, baseline: np.ndarray, event: np.ndarray,
                 p_transient: np.ndarray, p_late: np.ndarray,
                 rng: np.random.Generator) -> pd.DataFrame:
    """EDSS every 6 months for 3 years; CDW within 2 years exactly where ``event`` is True.

    Works on indices into :data:`~ms_core.longitudinal.outcomes.EDSS_STEPS` (one index = 0.5 EDSS,
    1.0 between 0 and 1.0). ``L`` is baseline + threshold, ``kL`` its index.

    * measurement noise: -1/0/+1 index with p 0.15/0.70/0.15, kept below ``L``;
    * event: from a visit at 0.5-2.0 years (uniform) the EDSS is ``L`` (or one step more,
      p 0.25) with the same noise, never below ``L``; that visit and the next are attended;
    * no event: with ``p_transient`` a relapse-like rise to ``L`` (or one step more) at a visit
      at 0.5-2.0 years that is back below ``L`` at the next visit (attended); with ``p_late``
      a sustained worsening from 2.5 or 3.0 years (after the horizon);
    * each later visit missed with p :data:`_P_MISSED_VISIT` unless protected above.
    """
    n, n_vis = len(baseline), len(COHORT_VISIT_YEARS)
    steps = np.asarray(EDSS_STEPS)
    top = len(steps) - 1
    kb = np.searchsorted(steps, baseline)
    limit = baseline + np.where(baseline == 0.0, 1.5, np.where(baseline > 5.5, 0.5, 1.0))
    kl = np.searchsorted(steps, limit - 1e-9)
    col = np.arange(n_vis)[None, :]
    noise_p = [0.15, 0.70, 0.15]
    noise = rng.choice([-1, 0, 1], p=noise_p, size=(n, n_vis))
    noise[:, 0] = 0
    k = np.clip(kb[:, None] + noise, 0, kl[:, None] - 1)
    worse_noise = rng.choice([-1, 0, 1], p=noise_p, size=(n, n_vis))
    worse_extra = (rng.random(n) < 0.25).astype(np.int64)
    k_worse = np.clip((kl + worse_extra)[:, None] + worse_noise, kl[:, None], top)
    ev_vis = rng.integers(1, 5, n)
    k = np.where(event[:, None] & (col >= ev_vis[:, None]), k_worse, k)
    transient = ~event & (rng.random(n) < p_transient)
    tr_vis = rng.integers(1, 5, n)
    tr_level = np.minimum(kl + (rng.random(n) < 0.3), top)
    k = np.where(transient[:, None] & (col == tr_vis[:, None]), tr_level[:, None], k)
    late = ~event & (rng.random(n) < p_late)
    late_vis = np.where(transient & (tr_vis == 4), 6, rng.integers(5, 7, n))
    k = np.where(late[:, None] & (col >= late_vis[:, None]), k_worse, k)
    missed = rng.random((n, n_vis)) < _P_MISSED_VISIT
    missed[:, 0] = False
    protect = ((event[:, None] & ((col == ev_vis[:, None]) | (col == ev_vis[:, None] + 1)))
               | (transient[:, None] & (col == tr_vis[:, None] + 1)))
    attended = ~missed | protect
    rows, cols = np.nonzero(attended)
    return pd.DataFrame({
        "patient_id": patient_ids[rows],
        "time_years": np.asarray(COHORT_VISIT_YEARS)[cols],
        "edss": steps[k[rows, cols]],
    })


def generate_cohort(n_patients: int = 2400, seed: int = 0) -> Cohort:
    """Draw a synthetic prognosis cohort (model: docs/prognosis_generative_model.md).

    Parameters
    ----------
    n_patients
        Number of patients (>= 1); ids ``P0001``, ``P0002``, ...
    seed
        Seed of ``np.random.default_rng``; the same seed gives identical frames.

    Returns
    -------
    Cohort
        Features with missing values, 2-year CDW outcome, true risk and EDSS visits.

    >>> c = generate_cohort(50, seed=1)
    >>> c.features.shape, bool((c.outcome == c.event_drawn).all())
    ((50, 23), True)
    """
    if isinstance(n_patients, bool) or not isinstance(n_patients, int | np.integer) \
            or n_patients < 1:
        raise ValueError(f"n_patients must be a positive integer, got {n_patients!r}")
    rng = np.random.default_rng(seed)
    n = int(n_patients)
    complete = _characteristics(n, rng)
    risk = 1.0 / (1.0 + np.exp(-true_log_odds(complete)))
    event = rng.random(n) < risk
    width = max(4, len(str(n)))
    ids = np.array([f"P{i + 1:0{width}d}" for i in range(n)])
    relapses = complete["relapses_2y"].to_numpy()
    p_transient = np.where(complete["progressive_course"] == 1, 0.05,
                           np.minimum(0.08 + 0.10 * relapses, 0.5))
    visits = _edss_visits(ids, complete["edss_baseline"].to_numpy(), event, p_transient,
                          0.5 * risk, rng)
    outcome = cdw_table(visits)["event"].to_numpy().astype(np.int64)
    features = complete.copy()
    single_scan = rng.random(n) < _P_SINGLE_SCAN
    features.loc[single_scan, ["new_enlarging_per_year", "pbvc_pct_per_year"]] = np.nan
    features.loc[rng.random(n) < _P_RELAPSES_UNKNOWN, "relapses_2y"] = np.nan
    features.insert(0, "patient_id", ids)
    complete.insert(0, "patient_id", ids)
    mismatch = int((outcome != event).sum())
    if mismatch:  # pragma: no cover - guarded by tests/test_cohort.py
        log.warning("%d trajectories disagree with their drawn event", mismatch)
    return Cohort(features=features, outcome=outcome, true_risk=risk, edss_visits=visits,
                  features_complete=complete, event_drawn=event)


def cohort_table(cohort: Cohort) -> pd.DataFrame:
    """The cohort as one table: ``patient_id``, the features, ``cdw_2y`` and ``true_risk``.

    This is the format of a bring-your-own cohort CSV: ``patient_id`` + the
    :data:`~ms_core.lesions.features.PROGNOSIS_FEATURES` columns (NaN/empty where not measured) +
    ``cdw_2y`` (0/1); ``true_risk`` is optional and only exists for synthetic data.

    >>> list(cohort_table(generate_cohort(5)).columns[-2:])
    ['cdw_2y', 'true_risk']
    """
    table = cohort.features.copy()
    table["cdw_2y"] = np.asarray(cohort.outcome, dtype=np.int64)
    table["true_risk"] = np.asarray(cohort.true_risk, dtype=np.float64)
    return table
