"""Tests of ms_core.clinical.trial: intervals, Kaplan-Meier, NEDA-3, per-patient and per-arm end
points."""

from __future__ import annotations

import datetime as dt
import math
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ms_core.clinical.statistics import kaplan_meier, poisson_rate_ci, wilson_ci
from ms_core.clinical.trial import (
    ARM_COLUMNS,
    GROUND_TRUTH,
    MEASURED,
    NO_ARM,
    NO_SOURCE,
    PATIENT_COLUMNS,
    arm_summary,
    filter_patients,
    km_by_arm,
    neda3,
    patient_endpoints,
    patient_table,
    study_endpoints,
)
from ms_core.clinical.trial_qc import QC_COLUMNS, uncertain_volume_fraction, visit_qc_table
from ms_core.foundation.domain import Participant, Visit
from ms_core.study.derivatives import truth_dir
from ms_core.study.layout import load_study

# ----------------------------------------------------------------------------- Kaplan-Meier
#: Remission times (weeks) of the 6-MP arm of Freireich et al., Blood 21:699-716 (1963), as
#: listed by Gehan (1965) and used as the Kaplan-Meier example in Kleinbaum & Klein, "Survival
#: Analysis: A Self-Learning Text", 3rd ed. (2012), ch. 2. False: censored (still in remission).
SIX_MP_WEEKS = [6, 6, 6, 6, 7, 9, 10, 10, 11, 13, 16, 17, 19, 20, 22, 23, 25, 32, 32, 34, 35]
SIX_MP_EVENT = [1, 1, 1, 0, 1, 0, 1, 0, 0, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0]
#: At each relapse time: n at risk, S(t) (Kleinbaum & Klein, table of the 6-MP group), Greenwood
#: standard error and 95 % log-log bounds as printed by R survival::survfit(conf.type =
#: "log-log") and Stata ``sts list`` for these data.
SIX_MP_REFERENCE = [
    # time, at risk, S(t), SE, lower, upper
    (6, 21, 0.8571, 0.0764, 0.6197, 0.9516),
    (7, 17, 0.8067, 0.0869, 0.5631, 0.9228),
    (10, 15, 0.7529, 0.0963, 0.5032, 0.8894),
    (13, 12, 0.6902, 0.1068, 0.4316, 0.8491),
    (16, 11, 0.6275, 0.1141, 0.3675, 0.8049),
    (22, 7, 0.5378, 0.1282, 0.2678, 0.7468),
    (23, 6, 0.4482, 0.1346, 0.1881, 0.6801),
]


def test_kaplan_meier_matches_the_6mp_textbook_example() -> None:
    km = kaplan_meier(SIX_MP_WEEKS, np.array(SIX_MP_EVENT, dtype=bool))
    assert km.n_patients == 21 and km.total_events == 9
    table = km.table().set_index("time_years")
    for t, n, s, se, lo, hi in SIX_MP_REFERENCE:
        row = table.loc[float(t)]
        assert row.n_at_risk == n
        assert row.survival == pytest.approx(s, abs=5e-5)
        assert row.std_err == pytest.approx(se, abs=5e-5)
        assert (row.ci_lo, row.ci_hi) == pytest.approx((lo, hi), abs=5e-5)
    # Censored-only times keep the curve flat and drop the number at risk.
    assert table.loc[9.0].survival == table.loc[7.0].survival and table.loc[9.0].n_at_risk == 16
    assert km.median_years() == 23.0
    assert km.at(8.0)[0] == pytest.approx(0.8067, abs=5e-5)
    assert math.isnan(km.at(36.0)[0])  # beyond the last follow-up
    # The plain interval is S +- 1.96 SE, clipped: at 6 weeks 0.8571 + 0.1497 > 1.
    plain = kaplan_meier(SIX_MP_WEEKS, np.array(SIX_MP_EVENT, dtype=bool), ci="plain")
    assert (plain.ci_lo[1], plain.ci_hi[1]) == pytest.approx((0.8571 - 1.96 * 0.0764, 1.0),
                                                            abs=2e-4)


def test_kaplan_meier_edge_cases() -> None:
    empty = kaplan_meier([], [])
    assert empty.time_years.tolist() == [0.0] and empty.n_patients == 0
    assert math.isnan(empty.at(0.0)[0]) and math.isnan(empty.median_years())
    single = kaplan_meier([1.0], [True])
    assert single.survival.tolist() == [1.0, 0.0]
    assert (single.ci_lo[-1], single.ci_hi[-1]) == (0.0, 0.0)
    censored = kaplan_meier([2.0, 3.0], [False, False])
    assert censored.survival.tolist() == [1.0, 1.0, 1.0] and censored.total_events == 0
    assert censored.ci_lo.tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="event has 1"):
        kaplan_meier([1.0, 2.0], [True])
    with pytest.raises(ValueError, match="got -1"):
        kaplan_meier([-1.0], [True])
    with pytest.raises(ValueError, match="ci must be"):
        kaplan_meier([1.0], [True], ci="log")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- intervals
@pytest.mark.parametrize(("k", "n", "lo", "hi"), [
    # Newcombe, Stat Med 17:857-872 (1998), Table II, method 3 (Wilson score, no correction).
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_ci_matches_newcombe(k: int, n: int, lo: float, hi: float) -> None:
    assert wilson_ci(k, n) == pytest.approx((lo, hi), abs=5e-5)


def test_wilson_ci_edge_cases() -> None:
    assert all(math.isnan(x) for x in wilson_ci(0, 0))
    lo, hi = wilson_ci(29, 29)
    assert hi == 1.0 and 0.88 < lo < 0.89
    with pytest.raises(ValueError, match="k=3, n=2"):
        wilson_ci(3, 2)
    with pytest.raises(ValueError, match="alpha"):
        wilson_ci(1, 2, alpha=0.0)


@pytest.mark.parametrize(("count", "lo", "hi"), [
    # Exact (Garwood 1936) 95 % limits of a Poisson count, e.g. Ulm, Am J Epidemiol 131:373
    # (1990), and every table of Poisson confidence limits.
    (0, 0.0, 3.689),
    (1, 0.0253, 5.572),
    (5, 1.623, 11.668),
    (10, 4.795, 18.390),
])
def test_poisson_rate_ci_matches_exact_limits(count: int, lo: float, hi: float) -> None:
    assert poisson_rate_ci(count, 1.0) == pytest.approx((lo, hi), abs=5e-4)
    # A rate per patient-year: the limits scale with the exposure.
    assert poisson_rate_ci(count, 4.0) == pytest.approx((lo / 4, hi / 4), abs=2e-4)


def test_poisson_rate_ci_rejects_bad_input() -> None:
    assert all(math.isnan(x) for x in poisson_rate_ci(0, 0.0))
    with pytest.raises(ValueError, match="whole number"):
        poisson_rate_ci(1.5, 1.0)
    with pytest.raises(ValueError, match="exposure"):
        poisson_rate_ci(1, -1.0)


# ----------------------------------------------------------------------------- NEDA-3
@pytest.mark.parametrize(("parts", "expected"), [
    ((True, True, True), True),
    ((False, True, True), False),  # a relapse
    ((True, False, True), False),  # a new or enlarging T2 lesion
    ((True, True, False), False),  # confirmed disability worsening
    ((None, True, True), None),  # relapses unknown
    ((True, True, None), None),  # CDW not evaluable
    ((None, False, None), False),  # activity rules NEDA out whatever is unknown
])
def test_neda3_three_valued_logic(parts: tuple[bool | None, bool | None, bool | None],
                                  expected: bool | None) -> None:
    assert neda3(*parts) is expected


# ----------------------------------------------------------------------------- per patient
PATIENT = Participant("sub-01", "F", 1980, "RR", 2005, "control")


def _visits(edss: Sequence[float | None], relapses: Sequence[int | None],
            years: Sequence[int] | None = None) -> list[Visit]:
    years = years or list(range(len(edss)))
    return [Visit("sub-01", f"ses-{i + 1:02d}", dt.date(2020 + y, 1, 1), e, r, None, None, None)
            for i, (e, r, y) in enumerate(zip(edss, relapses, years, strict=True))]


def _truths(new: list[int], brain_ml: list[float] | None = None) -> dict[str, dict[str, float]]:
    brain_ml = brain_ml or [1000.0] * len(new)
    return {f"ses-{i + 1:02d}": {"new_or_enlarging": n, "brain_volume_ml": b}
            for i, (n, b) in enumerate(zip(new, brain_ml, strict=True))}


def test_quiet_patient_has_neda3_and_ground_truth_sources() -> None:
    row = patient_endpoints(PATIENT, _visits([2.0, 2.0, 2.0], [1, 0, 0]),
                            truths=_truths([5, 0, 0], [1000.0, 990.0, 980.1]))
    assert set(row) == set(PATIENT_COLUMNS)
    # The first visit's relapses and lesions come before baseline and do not count.
    assert row["relapses"] == 0.0 and row["new_enlarging"] == 0.0
    assert row["followup_years"] == pytest.approx(731 / 365.25)
    # 1000 -> 980.1 ml: -1.99 % over the follow-up.
    assert row["pbvc_pct"] == pytest.approx(-1.99)
    assert row["pbvc_pct_per_year"] == pytest.approx(-1.99 / (731 / 365.25))
    assert row["lesion_source"] == row["pbvc_source"] == GROUND_TRUTH
    assert row["cdw_event"] is False and row["cdw_time_years"] == pytest.approx(731 / 365.25)
    assert row["neda3"] is True and row["notes"] == ""


@pytest.mark.parametrize(("edss", "relapses", "new", "broken"), [
    ([2.0, 2.0, 2.0], [0, 1, 0], [0, 0, 0], "relapse"),
    ([2.0, 2.0, 2.0], [0, 0, 0], [0, 0, 1], "lesion"),
    ([2.0, 3.0, 3.0], [0, 0, 0], [0, 0, 0], "cdw"),
])
def test_each_component_breaks_neda3(edss: list[float], relapses: list[int], new: list[int],
                                     broken: str) -> None:
    row = patient_endpoints(PATIENT, _visits(edss, relapses), truths=_truths(new))
    assert row["neda3"] is False
    assert (row["relapses"] > 0) == (broken == "relapse")
    assert (row["new_enlarging"] > 0) == (broken == "lesion")
    assert row["cdw_event"] is (broken == "cdw")
    if broken == "cdw":  # EDSS 2.0 -> 3.0 at 1 year, still 3.0 a year later: onset at 1 year
        assert row["cdw_time_years"] == pytest.approx(366 / 365.25)


def test_unknown_components_give_unknown_neda3() -> None:
    missing_relapses = patient_endpoints(PATIENT, _visits([2.0, 2.0], [0, None]),
                                         truths=_truths([0, 0]))
    assert math.isnan(missing_relapses["relapses"]) and missing_relapses["neda3"] is None
    assert "relapse count missing" in missing_relapses["notes"]
    no_truth = patient_endpoints(PATIENT, _visits([2.0, 2.0], [0, 0]))
    assert no_truth["lesion_source"] == NO_SOURCE and no_truth["neda3"] is None
    unrated = patient_endpoints(PATIENT, _visits([None, 2.0], [0, 0]), truths=_truths([0, 0]))
    assert unrated["cdw_event"] is None and "baseline EDSS not rated" in unrated["notes"]
    assert unrated["neda3"] is None
    single = patient_endpoints(PATIENT, _visits([2.0], [0]), truths=_truths([0]))
    assert single["followup_years"] == 0.0 and math.isnan(single["relapses_per_year"])
    assert single["neda3"] is None and single["cdw_event"] is None


def test_sources_are_never_mixed_within_a_patient() -> None:
    visits = _visits([2.0, 2.0, 2.0], [0, 0, 0])
    truths = _truths([0, 1, 1])
    complete = {"ses-02": 4.0, "ses-03": 0.0}
    partial = {"ses-02": 4.0, "ses-03": None}
    auto = patient_endpoints(PATIENT, visits, truths=truths, measured_new_enlarging=complete)
    assert (auto["new_enlarging"], auto["lesion_source"]) == (4.0, MEASURED)
    fallback = patient_endpoints(PATIENT, visits, truths=truths, measured_new_enlarging=partial)
    assert (fallback["new_enlarging"], fallback["lesion_source"]) == (2.0, GROUND_TRUTH)
    only = patient_endpoints(PATIENT, visits, truths=truths, measured_new_enlarging=partial,
                             source=MEASURED)
    assert math.isnan(only["new_enlarging"]) and only["lesion_source"] == NO_SOURCE
    truth = patient_endpoints(PATIENT, visits, truths=truths, measured_new_enlarging=complete,
                              source=GROUND_TRUTH)
    assert truth["lesion_source"] == GROUND_TRUTH
    # Measured interval PBVC (not annualised) chain: -1 % then -1 %.
    pbvc = patient_endpoints(PATIENT, visits, truths=truths,
                             measured_pbvc_pct={"ses-02": -1.0, "ses-03": -1.0})
    assert pbvc["pbvc_source"] == MEASURED and pbvc["pbvc_pct"] == pytest.approx(-1.99)
    with pytest.raises(ValueError, match="source must be"):
        patient_endpoints(PATIENT, visits, truths=truths, source="mixed")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- per arm
def _synthetic_patients() -> pd.DataFrame:
    def row(pid: str, arm: str | None, years: float, new: float, src: str, neda: bool | None,
            event: bool | None, t: float, pbvc: float, sex: str = "F") -> dict[str, object]:
        return {"participant_id": pid, "trial_arm": arm or NO_ARM, "ms_type": "RR", "sex": sex,
                "n_visits": 3, "first_visit": pd.Timestamp("2020-01-01"),
                "followup_years": years, "relapses": 0.0, "relapses_per_year": 0.0,
                "new_enlarging": new, "new_enlarging_per_year": new / years,
                "lesion_source": src, "pbvc_pct": pbvc * years, "pbvc_pct_per_year": pbvc,
                "pbvc_source": GROUND_TRUTH if pbvc == pbvc else NO_SOURCE,
                "baseline_edss": 2.0, "cdw_event": event, "cdw_time_years": t, "neda3": neda,
                "notes": ""}

    nan = math.nan
    return patient_table([
        row("sub-01", "A", 2.0, 2.0, GROUND_TRUTH, False, True, 1.0, -0.4),
        row("sub-02", "A", 1.0, 0.0, GROUND_TRUTH, True, False, 1.0, -0.6, sex="M"),
        row("sub-03", "B", 3.0, 0.0, MEASURED, True, False, 3.0, -0.5),
        row("sub-04", "B", 1.0, 1.0, GROUND_TRUTH, False, False, 1.0, nan),
        row("sub-05", "B", 2.0, nan, NO_SOURCE, None, None, nan, nan),
        row("sub-06", None, 1.0, 0.0, GROUND_TRUTH, True, False, 1.0, -0.2),
    ])


def test_arm_summary_pools_each_arm() -> None:
    patients = _synthetic_patients()
    assert patients["neda3"].dtype == "boolean" and patients["cdw_event"].dtype == "boolean"
    summary = arm_summary(patients).set_index("trial_arm")
    assert list(summary.reset_index().columns) == list(ARM_COLUMNS)
    assert summary.index.tolist() == ["A", "B", NO_ARM]
    a, b = summary.loc["A"], summary.loc["B"]
    assert (a.n_patients, a.patient_years, a.new_enlarging) == (2, 3.0, 2.0)
    assert a.new_enlarging_per_py == pytest.approx(2 / 3)
    assert (a.new_enlarging_ci_lo, a.new_enlarging_ci_hi) == pytest.approx(
        poisson_rate_ci(2, 3.0))
    assert (a.neda3_n, a.neda3_evaluable, a.neda3_prop) == (1, 2, 0.5)
    assert (a.neda3_ci_lo, a.neda3_ci_hi) == pytest.approx(wilson_ci(1, 2))
    assert a.pbvc_mean_pct_per_year == pytest.approx(-0.5)
    assert a.pbvc_sd_pct_per_year == pytest.approx(np.std([-0.4, -0.6], ddof=1))
    # Arm A: one event at 1 year among 2 at risk -> S(2 y) = 0.5 = the median.
    assert (a.cdw_n, a.cdw_events, a.cdw_median_years) == (2, 1, 1.0)
    assert math.isnan(a.cdw_free)  # the landmark (2 y) is beyond arm A's follow-up (1 y)
    # Arm B: the patient without lesion data adds patient-years but no exposure.
    assert (b.patient_years, b.new_enlarging_patient_years) == (6.0, 4.0)
    assert b.lesion_source == "measured (1), ground truth (1)"
    assert (b.neda3_evaluable, b.pbvc_n) == (2, 1) and math.isnan(b.pbvc_sd_pct_per_year)
    assert (b.cdw_n, b.cdw_events, b.cdw_free) == (2, 0, 1.0)
    kms = km_by_arm(patients)
    assert sorted(kms) == ["A", "B", NO_ARM] and kms["B"].n_patients == 2


def test_filter_patients_and_empty_summary() -> None:
    patients = _synthetic_patients()
    assert filter_patients(patients, arms=["A"]).participant_id.tolist() == ["sub-01", "sub-02"]
    assert filter_patients(patients, sexes=["M"]).participant_id.tolist() == ["sub-02"]
    assert len(filter_patients(patients)) == len(patients)
    none = filter_patients(patients, ms_types=["PP"])
    assert none.empty and arm_summary(none).empty


# ----------------------------------------------------------------------------- QC
def test_uncertain_volume_fraction() -> None:
    table = pd.DataFrame({"volume_ml": [0.3, 0.1, 0.6], "mean_prob": [0.9, 0.5, 0.69]})
    assert uncertain_volume_fraction(table) == pytest.approx(0.7)
    assert uncertain_volume_fraction(table, prob_below=0.5) == 0.0
    assert math.isnan(uncertain_volume_fraction(table.iloc[:0]))  # no lesions
    with pytest.raises(ValueError, match="mean_prob"):
        uncertain_volume_fraction(table[["volume_ml"]])


def test_visit_qc_flags_protocol_change_without_derivatives(tmp_path: Path) -> None:
    visits = [Visit("sub-01", "ses-01", dt.date(2020, 1, 1), 2.0, 0, None, "A 1.5T", 1.5),
              Visit("sub-01", "ses-02", dt.date(2021, 1, 1), 2.0, 0, None, "B 3T", 3.0)]
    qc = visit_qc_table(tmp_path, visits)
    assert list(qc.columns) == list(QC_COLUMNS)
    assert qc["qc_flags"].iloc[0] == ""
    assert "field strength changed: 1.5 T -> 3 T" in qc["qc_flags"].iloc[1]
    assert qc["segmented"].tolist() == [False, False] and qc["registration_ncc"].isna().all()


# ----------------------------------------------------------------------------- a study
def test_small_study_end_points(small_study: Path) -> None:
    study = load_study(small_study)
    result = study_endpoints(study)
    patients = result.patients
    assert result.problems == ()
    assert patients.participant_id.tolist() == ["sub-01", "sub-02"]
    assert patients.trial_arm.tolist() == ["control", "treatment"]
    assert (patients.n_visits == 3).all()
    # Nothing measured yet: every lesion and PBVC value comes from the ground truth.
    assert set(patients.lesion_source) == set(patients.pbvc_source) == {GROUND_TRUTH}
    assert (patients.pbvc_pct_per_year < 0).all()  # the demo's brains shrink
    sub01 = patients.iloc[0]
    assert sub01.followup_years == pytest.approx((dt.date(2022, 11, 12)
                                                  - dt.date(2018, 6, 9)).days / 365.25)
    # EDSS 3.5, 3.5, 4.0: +0.5 is below the +1.0 needed from 3.5, so censored at the last visit.
    assert not sub01.cdw_event and sub01.cdw_time_years == sub01.followup_years
    assert sub01.relapses == 0.0
    summary = arm_summary(patients)
    assert summary.trial_arm.tolist() == ["control", "treatment"]
    assert summary.n_patients.tolist() == [1, 1]
    assert summary.patient_years.tolist() == pytest.approx(patients.followup_years.tolist())
    assert (summary.lesion_source == GROUND_TRUTH).all()
    measured = study_endpoints(study, source=MEASURED).patients
    assert measured.new_enlarging.isna().all() and (measured.lesion_source == NO_SOURCE).all()


def test_unreadable_truth_becomes_a_problem(small_study: Path, tmp_path: Path) -> None:
    root = tmp_path / "study"
    shutil.copytree(small_study, root, ignore=shutil.ignore_patterns("*.nii.gz"))
    bad = truth_dir(root, "sub-02", "ses-02") / "truth.json"
    bad.write_text("{not json", encoding="utf-8")
    result = study_endpoints(load_study(root, check_images=False))
    assert len(result.problems) == 1 and str(bad) in result.problems[0]
    sub02 = result.patients.set_index("participant_id").loc["sub-02"]
    assert math.isnan(sub02.new_enlarging) and sub02.lesion_source == NO_SOURCE
    assert result.patients.set_index("participant_id").loc["sub-01"].lesion_source == GROUND_TRUTH
