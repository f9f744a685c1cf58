"""Tests for ms_core.synthetic.cohort: the synthetic prognosis cohort.

Reference ranges come from docs/prognosis_generative_model.md (which quotes the published figures
they are rounded from); the event rate and oracle AUC ranges were measured over seeds 0-19.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from ms_core.lesions.features import LOCATION_FEATURES, PROGNOSIS_FEATURES
from ms_core.longitudinal.outcomes import EDSS_STEPS, cdw_table, cdw_threshold, confirmed_worsening
from ms_core.synthetic.cohort import (
    COHORT_VISIT_YEARS,
    RISK_LOG_ODDS,
    Cohort,
    cohort_table,
    generate_cohort,
    risk_terms,
    true_log_odds,
)

N = 3000
SCAN_FEATURES = ["new_enlarging_per_year", "pbvc_pct_per_year"]
FEATURES = list(PROGNOSIS_FEATURES)


@pytest.fixture(scope="module")
def cohort() -> Cohort:
    return generate_cohort(N, seed=0)


def test_columns_in_schema_order(cohort: Cohort) -> None:
    expected = ["patient_id", *PROGNOSIS_FEATURES]
    assert list(cohort.features.columns) == expected
    assert list(cohort.features_complete.columns) == expected
    assert cohort.features["patient_id"].is_unique
    assert cohort.features["patient_id"].iloc[0] == "P0001"
    assert all(cohort.features[c].dtype == np.float64 for c in PROGNOSIS_FEATURES)
    assert cohort.outcome.dtype == np.int64 and cohort.true_risk.dtype == np.float64
    assert cohort.outcome.shape == cohort.true_risk.shape == (N,)


def test_clinical_ranges(cohort: Cohort) -> None:
    f = cohort.features_complete
    assert f["age_years"].between(20, 65).all()
    assert 0.65 <= 1 - f["sex_male"].mean() <= 0.75  # ~70 % female
    assert 0.12 <= f["progressive_course"].mean() <= 0.18  # ~15 % progressive
    for col in ("sex_male", "progressive_course"):
        assert set(f[col].unique()) <= {0.0, 1.0}
    assert set(f["dmt_efficacy"].unique()) == {0.0, 1.0, 2.0}
    assert f["edss_baseline"].isin(EDSS_STEPS).all()
    assert f["edss_baseline"].max() <= 8.0
    assert (f["disease_duration_years"] >= 0).all()
    assert (f["disease_duration_years"] <= f["age_years"] - 15 + 1e-9).all()
    rel = f["relapses_2y"]
    assert (rel >= 0).all() and (rel == np.round(rel)).all()
    # Direction of the latent structure: progressive patients are older with higher EDSS.
    by_course = f.groupby("progressive_course")[["age_years", "edss_baseline"]].median()
    assert (by_course.loc[1.0] > by_course.loc[0.0]).all()
    # More high-efficacy DMT with more relapses (activity).
    assert f.loc[f.relapses_2y >= 2, "dmt_efficacy"].eq(2).mean() > \
        f.loc[f.relapses_2y == 0, "dmt_efficacy"].eq(2).mean()


def test_lesion_counts_and_volumes_are_consistent(cohort: Cohort) -> None:
    f = cohort.features_complete
    counts = f[[f"{loc}_count" for loc in LOCATION_FEATURES]].to_numpy()
    volumes = f[[f"{loc}_volume_ml" for loc in LOCATION_FEATURES]].to_numpy()
    assert (counts >= 0).all() and (counts == np.round(counts)).all()
    assert (f["lesion_count"] >= 1).all()
    np.testing.assert_array_equal(counts.sum(axis=1), f["lesion_count"])
    np.testing.assert_allclose(volumes.sum(axis=1), f["lesion_volume_ml"], atol=1e-6)
    assert ((volumes > 0) == (counts > 0)).all()  # no volume without a lesion and vice versa
    assert 5.0 <= f["lesion_volume_ml"].median() <= 10.0
    shares = counts.sum(axis=0) / counts.sum()
    np.testing.assert_allclose(shares, [0.40, 0.25, 0.10, 0.25], atol=0.02)
    new = f["new_enlarging_per_year"]
    assert (new >= 0).all()
    # Fewer new lesions under high-efficacy DMT despite more active patients.
    assert new[f.dmt_efficacy == 2].mean() < new[f.dmt_efficacy == 0].mean()


def test_atrophy_and_tissue_fractions(cohort: Cohort) -> None:
    f = cohort.features_complete
    pbvc = f["pbvc_pct_per_year"]
    assert pbvc.mean() == pytest.approx(-0.5, abs=0.08)
    assert pbvc.std() == pytest.approx(0.3, abs=0.06)
    assert pbvc[f.progressive_course == 1].mean() < pbvc[f.progressive_course == 0].mean()
    for col in ("bpf", "gm_fraction", "wm_fraction"):
        assert ((f[col] > 0) & (f[col] < 1)).all(), col
    assert f["bpf"].between(0.68, 0.88).all()
    np.testing.assert_allclose(f["gm_fraction"] + f["wm_fraction"], f["bpf"], atol=1e-6)
    assert (f["gm_fraction"] > f["wm_fraction"]).all()
    assert np.corrcoef(f["age_years"], f["bpf"])[0, 1] < -0.3


def test_missingness_is_mcar_and_near_spec(cohort: Cohort) -> None:
    feat, full = cohort.features, cohort.features_complete
    nan_rate = feat[FEATURES].isna().mean()
    assert set(nan_rate[nan_rate > 0].index) == {"relapses_2y", *SCAN_FEATURES}
    assert nan_rate["new_enlarging_per_year"] == pytest.approx(0.20, abs=0.03)
    assert nan_rate["relapses_2y"] == pytest.approx(0.05, abs=0.015)
    # Single-scan patients lack both scan-interval features.
    assert (feat["new_enlarging_per_year"].isna() == feat["pbvc_pct_per_year"].isna()).all()
    assert not full[FEATURES].isna().any().any()
    pd.testing.assert_frame_equal(feat.fillna(full), full)
    # The risk comes from the complete values; missingness is unrelated to it.
    np.testing.assert_allclose(cohort.true_risk, 1 / (1 + np.exp(-true_log_odds(full))))
    missing = feat["pbvc_pct_per_year"].isna().to_numpy()
    assert abs(cohort.true_risk[missing].mean() - cohort.true_risk[~missing].mean()) < 0.03


def test_event_rate_and_oracle_auc(cohort: Cohort) -> None:
    # Documented: about 22 % (seeds 0-19, n = 2400: 21.5-24.5 %), oracle AUC 0.738-0.782.
    assert 0.18 <= cohort.outcome.mean() <= 0.27
    assert cohort.true_risk.mean() == pytest.approx(cohort.outcome.mean(), abs=0.03)
    assert 0.72 <= roc_auc_score(cohort.outcome, cohort.true_risk) <= 0.80


def test_same_seed_same_cohort(cohort: Cohort) -> None:
    again = generate_cohort(N, seed=0)
    pd.testing.assert_frame_equal(again.features, cohort.features)
    pd.testing.assert_frame_equal(again.edss_visits, cohort.edss_visits)
    np.testing.assert_array_equal(again.outcome, cohort.outcome)
    np.testing.assert_array_equal(again.true_risk, cohort.true_risk)
    other = generate_cohort(N, seed=1)
    assert not np.array_equal(other.true_risk, cohort.true_risk)


def test_outcome_is_the_cdw_definition_on_the_trajectories(cohort: Cohort) -> None:
    np.testing.assert_array_equal(cohort.outcome, cohort.event_drawn.astype(np.int64))
    table = cdw_table(cohort.edss_visits)
    assert table["patient_id"].tolist() == cohort.features["patient_id"].tolist()
    np.testing.assert_array_equal(table["event"].astype(np.int64), cohort.outcome)
    # The single-series function agrees on a sample of patients.
    visits = cohort.edss_visits.groupby("patient_id", sort=False)
    for pid, outcome in list(zip(cohort.features["patient_id"], cohort.outcome, strict=True))[:300]:
        v = visits.get_group(pid)
        assert confirmed_worsening(v["time_years"], v["edss"]).event == bool(outcome), pid


def test_trajectories_are_realistic(cohort: Cohort) -> None:
    v = cohort.edss_visits
    assert list(v.columns) == ["patient_id", "time_years", "edss"]
    assert v["time_years"].isin(COHORT_VISIT_YEARS).all()
    assert v["edss"].isin(EDSS_STEPS).all()
    base = v[v.time_years == 0.0].set_index("patient_id")["edss"]
    np.testing.assert_array_equal(base.loc[cohort.features["patient_id"]],
                                  cohort.features["edss_baseline"])
    n_vis = len(COHORT_VISIT_YEARS)
    assert 0.9 * N * n_vis < len(v) < N * n_vis  # some missed visits
    table = cdw_table(v).set_index("patient_id")
    limit = (table["baseline_edss"] + table["threshold"]).rename("limit")
    w = v.join(limit, on="patient_id")
    within = w[(w.time_years > 0) & (w.time_years <= 2.0) & (w.edss >= w.limit)]
    non_event = set(table.index[~table["event"]])
    transient = within["patient_id"].isin(non_event)
    assert transient.any()  # unconfirmed transient worsening exists among non-events
    late = cdw_table(v, horizon_years=3.0)
    assert (late["event"] & ~table["event"].to_numpy()).sum() > 0.02 * N  # after 2 years
    # Confirmation at 12 weeks would not change anything on a 6-monthly schedule.
    np.testing.assert_array_equal(cdw_table(v, confirm_years=0.25)["event"], table["event"])
    small = np.array([cdw_threshold(b) for b in (0.0, 3.0, 6.0)])
    np.testing.assert_array_equal(small, [1.5, 1.0, 0.5])


def test_effect_directions_refit(cohort: Cohort) -> None:
    # Refit the generative model on the complete values: the clear effects keep their sign and
    # every coefficient lands within 0.6 of the truth (standard errors 0.05-0.25 at n = 3000).
    terms = risk_terms(cohort.features_complete)
    fit = LogisticRegression(C=1e6, max_iter=5000).fit(terms, cohort.outcome)
    coef = dict(zip(terms.columns, fit.coef_[0], strict=True))
    for name in ("edss_baseline", "relapses_2y_capped4", "age_per_10y",
                 "log1p_new_enlarging_per_year", "atrophy_pct_per_year"):
        assert coef[name] > 0, name
    assert coef["dmt_high"] < 0
    for name, true in RISK_LOG_ODDS.items():
        assert coef[name] == pytest.approx(true, abs=0.6), name
    # Same directions on raw features (EDSS, high-efficacy DMT, relapses), and crude risk by
    # course (progressive patients are also older, more disabled and more atrophic).
    f = cohort.features_complete
    raw = f[["edss_baseline", "relapses_2y", "age_years"]].assign(
        dmt_high=(f.dmt_efficacy == 2).astype(float), dmt_moderate=(f.dmt_efficacy == 1) * 1.0)
    c2 = LogisticRegression(C=1e6, max_iter=5000).fit(raw, cohort.outcome).coef_[0]
    assert c2[0] > 0 and c2[1] > 0 and c2[3] < 0
    prog = f["progressive_course"].to_numpy() == 1
    assert cohort.outcome[prog].mean() > 2 * cohort.outcome[~prog].mean()
    assert cohort.true_risk[prog].mean() > 2 * cohort.true_risk[~prog].mean()


def test_generation_is_fast() -> None:
    start = time.perf_counter()
    generate_cohort(2400, seed=5)
    assert time.perf_counter() - start < 5.0


def test_single_patient_and_bad_sizes() -> None:
    one = generate_cohort(1, seed=3)
    assert one.features.shape == (1, 1 + len(PROGNOSIS_FEATURES))
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="n_patients must be a positive integer"):
            generate_cohort(bad, seed=0)  # type: ignore[arg-type]


def test_cohort_table_format(cohort: Cohort) -> None:
    table = cohort_table(cohort)
    assert list(table.columns) == ["patient_id", *PROGNOSIS_FEATURES, "cdw_2y", "true_risk"]
    assert set(table["cdw_2y"].unique()) == {0, 1}
    np.testing.assert_array_equal(table["cdw_2y"], cohort.outcome)
    assert table[FEATURES].isna().sum().sum() == \
        cohort.features[FEATURES].isna().sum().sum()


def test_cohort_and_risk_terms_validate(cohort: Cohort) -> None:
    with pytest.raises(ValueError, match="features columns"):
        Cohort(cohort.features.drop(columns="bpf"), cohort.outcome, cohort.true_risk,
               cohort.edss_visits, cohort.features_complete, cohort.event_drawn)
    with pytest.raises(ValueError, match="outcome must have shape"):
        Cohort(cohort.features, cohort.outcome[:-1], cohort.true_risk, cohort.edss_visits,
               cohort.features_complete, cohort.event_drawn)
    with pytest.raises(ValueError, match=r"NaN in \['relapses_2y'"):
        risk_terms(cohort.features)
    with pytest.raises(ValueError, match=r"lack columns \['bpf'\]"):
        risk_terms(cohort.features_complete.drop(columns="bpf"))
