"""Tests for ms_core.longitudinal.outcomes: confirmed disability worsening (CDW) from EDSS series.

Expected values are worked out by hand from the definition (thresholds +1.5 from 0, +1.0 from
1.0-5.5, +0.5 above 5.5; confirmation at least ``confirm_years`` later, sustained in between).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ms_core.longitudinal.outcomes import (
    CDW_COLUMNS,
    EDSS_STEPS,
    CdwResult,
    cdw_table,
    cdw_threshold,
    check_edss,
    confirmed_worsening,
)

SIX_MONTHLY = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]


def test_edss_steps() -> None:
    assert EDSS_STEPS[:3] == (0.0, 1.0, 1.5) and EDSS_STEPS[-1] == 10.0 and len(EDSS_STEPS) == 20


@pytest.mark.parametrize(("base", "thr"), [(0.0, 1.5), (1.0, 1.0), (5.5, 1.0), (6.0, 0.5),
                                           (9.5, 0.5)])
def test_threshold_rules(base: float, thr: float) -> None:
    assert cdw_threshold(base) == thr


def test_threshold_from_zero_needs_1_5() -> None:
    assert not confirmed_worsening(SIX_MONTHLY, [0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]).event
    r = confirmed_worsening(SIX_MONTHLY, [0, 1.0, 1.5, 1.5, 1.5, 1.5, 1.5])
    assert r == CdwResult(True, 1.0, 1.5, 0.0, 1.5)


def test_threshold_mid_range_needs_1_0() -> None:
    assert not confirmed_worsening(SIX_MONTHLY, [3.0, 3.5, 3.5, 3.5, 3.5, 3.5, 3.5]).event
    r = confirmed_worsening(SIX_MONTHLY, [5.5, 6.0, 6.5, 6.5, 6.5, 6.5, 6.5])
    assert (r.event, r.event_time_years, r.threshold) == (True, 1.0, 1.0)


def test_threshold_above_5_5_needs_0_5() -> None:
    r = confirmed_worsening(SIX_MONTHLY, [6.0, 6.0, 6.5, 6.5, 6.0, 6.0, 6.0])
    assert r == CdwResult(True, 1.0, 1.5, 6.0, 0.5)


def test_transient_worsening_is_not_confirmed() -> None:
    # Relapse at 6 months (+1.5), back to baseline at 12 months.
    r = confirmed_worsening(SIX_MONTHLY, [2.0, 3.5, 2.0, 2.0, 2.0, 2.0, 2.0])
    assert r == CdwResult(False, None, None, 2.0, 1.0)


def test_dip_before_confirmation_breaks_sustained() -> None:
    # 12-week confirmation on a 3-monthly schedule: the 1.25 dip spoils the 1.0 worsening
    # for confirm_years=0.5, and the 1.5 worsening is confirmed at 2.0.
    t = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]
    e = [2.0, 2.0, 2.0, 2.0, 3.0, 2.5, 3.0, 3.0, 3.0]
    assert confirmed_worsening(t, e).event_time_years == 1.5
    assert confirmed_worsening(t, e).confirmed_time_years == 2.0


def test_later_event_after_a_transient() -> None:
    r = confirmed_worsening(SIX_MONTHLY, [2.0, 3.0, 2.0, 3.0, 3.0, 2.0, 2.0])
    assert (r.event_time_years, r.confirmed_time_years) == (1.5, 2.0)


def test_worsening_after_horizon_is_excluded() -> None:
    e = [2.0, 2.0, 2.0, 2.0, 2.0, 3.0, 3.0]  # starts at 2.5 years
    assert not confirmed_worsening(SIX_MONTHLY, e).event
    assert confirmed_worsening(SIX_MONTHLY, e, horizon_years=2.5).event_time_years == 2.5


def test_confirmation_after_horizon_is_allowed() -> None:
    r = confirmed_worsening(SIX_MONTHLY, [2.0, 2.0, 2.0, 2.0, 3.0, 3.0, 2.0])
    assert r == CdwResult(True, 2.0, 2.5, 2.0, 1.0)


def test_unconfirmable_worsening_is_not_an_event() -> None:
    # Worsening at the last visit, or with the next visit too early.
    assert not confirmed_worsening([0.0, 1.0, 2.0], [2.0, 2.0, 3.0]).event
    assert not confirmed_worsening([0.0, 1.0, 1.25], [2.0, 3.0, 3.0]).event


def test_confirm_window_is_configurable() -> None:
    t = [0.0, 0.25, 0.5, 0.75, 1.0]
    e = [2.0, 3.0, 3.0, 2.0, 2.0]  # sustained for 12 weeks, not 24
    assert not confirmed_worsening(t, e).event
    r = confirmed_worsening(t, e, confirm_years=0.25)
    assert (r.event, r.event_time_years, r.confirmed_time_years) == (True, 0.25, 0.5)
    # A window: the confirming visit 23 weeks later counts with confirm_years=0.44.
    t2 = [0.0, 1.0, 1.0 + 23 / 52]
    assert not confirmed_worsening(t2, [2.0, 3.0, 3.0]).event
    assert confirmed_worsening(t2, [2.0, 3.0, 3.0], confirm_years=0.44).event


def test_confirmation_uses_first_visit_far_enough() -> None:
    # Confirmed at 1.5 (first visit >= 0.5 after 1.0); the later dip at 2.0 does not matter.
    r = confirmed_worsening([0.0, 1.0, 1.25, 1.5, 2.0], [2.0, 3.0, 3.5, 3.0, 2.0])
    assert (r.event_time_years, r.confirmed_time_years) == (1.0, 1.5)


def test_nan_visits_are_skipped() -> None:
    r = confirmed_worsening(SIX_MONTHLY[:4], [2.0, 3.0, np.nan, 3.0])
    assert (r.event_time_years, r.confirmed_time_years) == (0.5, 1.5)
    # A NaN does not hide a dip: the rated 2.0 at 1.0 still breaks the worsening at 0.5.
    r2 = confirmed_worsening(SIX_MONTHLY[:4], [2.0, 3.0, 2.0, np.nan])
    assert not r2.event


def test_visits_before_landmark_are_ignored() -> None:
    r = confirmed_worsening([-1.0, 0.0, 0.5, 1.0], [1.0, 2.0, 3.0, 3.0])
    assert (r.baseline_edss, r.event_time_years) == (2.0, 0.5)


def test_empty_and_single_visit_series() -> None:
    assert confirmed_worsening([], []) == CdwResult(False, None, None, None, None)
    assert confirmed_worsening([0.0, 1.0], [np.nan, np.nan]).baseline_edss is None
    assert confirmed_worsening([0.0], [4.0]) == CdwResult(False, None, None, 4.0, 1.0)


def test_edss_10_baseline_cannot_worsen() -> None:
    assert not confirmed_worsening([0.0, 1.0, 2.0], [10.0, 10.0, 10.0]).event


@pytest.mark.parametrize(("times", "edss", "match"), [
    ([0.0, 0.5], [2.0, 0.5], "invalid EDSS 0.5"),
    ([0.0, 0.5], [2.0, 10.5], "invalid EDSS 10.5"),
    ([0.0, 0.5], [2.0, 3.25], "invalid EDSS 3.25"),
    ([0.0, 0.5], [-1.0, 3.0], "invalid EDSS -1.0"),
    ([0.0, 1.0, 1.0], [2.0, 2.0, 2.0], "strictly increasing, got 1.0 after 1.0"),
    ([0.0, 1.0, 0.5], [2.0, 2.0, 2.0], "got 0.5 after 1.0"),
    ([0.0, np.inf], [2.0, 2.0], "finite, got inf"),
    ([0.0, 1.0], [2.0], "2 visits but edss has 1"),
    ([0.5, 1.0], [2.0, 2.0], "first rated visit is at 0.5"),
    ([0.0, 1.0], [np.nan, 2.0], "first rated visit is at 1.0"),
])
def test_bad_input(times: list[float], edss: list[float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        confirmed_worsening(times, edss)


@pytest.mark.parametrize(("kwargs", "match"), [({"horizon_years": 0.0}, "horizon_years"),
                                               ({"confirm_years": -0.5}, "confirm_years"),
                                               ({"confirm_years": np.nan}, "confirm_years")])
def test_bad_parameters(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        confirmed_worsening([0.0, 1.0], [1.0, 1.0], **kwargs)


def test_threshold_rejects_invalid_baseline() -> None:
    with pytest.raises(ValueError, match=r"invalid EDSS 0\.5"):
        cdw_threshold(0.5)
    with pytest.raises(ValueError, match="NaN"):
        cdw_threshold(float("nan"))
    with pytest.raises(ValueError, match="for patient 'x'"):
        check_edss([11.0], where="patient 'x'")


def _long(series: dict[str, tuple[list[float], list[float]]]) -> pd.DataFrame:
    rows = [(pid, t, e) for pid, (ts, es) in series.items() for t, e in zip(ts, es, strict=True)]
    return pd.DataFrame(rows, columns=["patient_id", "time_years", "edss"])


SERIES = {
    "zero": (SIX_MONTHLY, [0, 1.0, 1.5, 1.5, 1.5, 1.5, 1.5]),
    "transient": (SIX_MONTHLY, [2.0, 3.5, 2.0, 2.0, 2.0, 2.0, 2.0]),
    "late": (SIX_MONTHLY, [2.0, 2.0, 2.0, 2.0, 2.0, 3.0, 3.0]),
    "edge": (SIX_MONTHLY, [2.0, 2.0, 2.0, 2.0, 3.0, 3.0, 2.0]),
    "high": (SIX_MONTHLY, [6.0, 6.0, 6.5, 6.5, 6.0, 6.0, 6.0]),
    "nan": (SIX_MONTHLY[:4], [2.0, 3.0, np.nan, 3.0]),
    "one": ([0.0], [4.0]),
    "unrated": ([0.0, 0.5], [np.nan, np.nan]),
    "short": ([-0.5, 0.0, 1.0, 1.25, 1.5, 2.0], [1.0, 2.0, 3.0, 3.5, 3.0, 2.0]),
}


@pytest.mark.parametrize("confirm_years", [0.5, 0.25])
def test_table_matches_single_series(confirm_years: float) -> None:
    table = cdw_table(_long(SERIES), confirm_years=confirm_years)
    assert tuple(table.columns) == CDW_COLUMNS
    assert table["patient_id"].tolist() == list(SERIES)
    assert table["event"].dtype == bool
    for row, (times, edss) in zip(table.itertuples(index=False), SERIES.values(), strict=True):
        r = confirmed_worsening(times, edss, confirm_years=confirm_years)
        assert row.event == r.event, row.patient_id
        for got, want in [(row.event_time_years, r.event_time_years),
                          (row.confirmed_time_years, r.confirmed_time_years),
                          (row.baseline_edss, r.baseline_edss), (row.threshold, r.threshold)]:
            assert (np.isnan(got) and want is None) or got == want, row.patient_id


def test_table_sorts_rows_within_patients() -> None:
    long = _long(SERIES)
    shuffled = long.sample(frac=1.0, random_state=3)
    first_seen = list(dict.fromkeys(shuffled["patient_id"]))
    table = cdw_table(shuffled).set_index("patient_id")
    expected = cdw_table(long).set_index("patient_id").loc[first_seen]
    pd.testing.assert_frame_equal(table, expected)


def test_table_empty() -> None:
    empty = pd.DataFrame({"patient_id": pd.Series(dtype=str), "time_years": pd.Series(dtype=float),
                          "edss": pd.Series(dtype=float)})
    table = cdw_table(empty)
    assert table.empty and tuple(table.columns) == CDW_COLUMNS


def test_table_bad_input() -> None:
    good = _long(SERIES)
    with pytest.raises(ValueError, match=r"lacks columns \['edss'\]"):
        cdw_table(good.drop(columns="edss"))
    bad = good.copy()
    bad.loc[3, "edss"] = 0.5
    with pytest.raises(ValueError, match=r"invalid EDSS 0\.5 for patient 'zero' at 1\.5 years"):
        cdw_table(bad)
    dup = pd.concat([good, good.iloc[[2]]])
    with pytest.raises(ValueError, match=r"patient 'zero' has two visits at 1\.0 years"):
        cdw_table(dup)
    late = good[~((good.patient_id == "late") & (good.time_years == 0.0))]
    with pytest.raises(ValueError, match="patient 'late' has no rated EDSS at the landmark"):
        cdw_table(late)
    inf = good.copy()
    inf.loc[5, "time_years"] = np.nan
    with pytest.raises(ValueError, match="finite, got nan for patient 'zero'"):
        cdw_table(inf)
