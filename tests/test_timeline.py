"""Tests for ms_core.timeline: per-visit table, DMT periods and relapse rows."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from ms_core.domain import Visit
from ms_core.timeline import (
    NO_DMT,
    PERIOD_COLUMNS,
    VISIT_COLUMNS,
    dmt_periods,
    has_volumes,
    relapse_visits,
    visit_table,
)


def _visit(sid: str, date: str, edss: float | None = 2.0, relapses: int | None = 0,
           dmt: str | None = "interferon beta-1a") -> Visit:
    return Visit("sub-01", sid, dt.date.fromisoformat(date), edss, relapses, dmt, "S", 3.0)


THREE = [
    _visit("ses-01", "2018-01-10", 2.0, 0, "interferon beta-1a"),
    _visit("ses-02", "2019-01-10", 3.0, 2, "interferon beta-1a"),
    _visit("ses-03", "2020-07-01", 3.5, 1, "natalizumab"),
]


# ----------------------------------------------------------------------------- empty / one visit
def test_empty_visit_list_gives_empty_tables_with_columns() -> None:
    table = visit_table([])
    periods = dmt_periods([])
    assert table.empty and table.columns.tolist() == list(VISIT_COLUMNS)
    assert periods.empty and periods.columns.tolist() == list(PERIOD_COLUMNS)
    assert relapse_visits(table).empty
    assert not has_volumes(table)


def test_one_visit_gives_one_row_and_one_zero_length_period() -> None:
    visit = _visit("ses-01", "2020-05-01", 1.5, None, "anti-CD20")
    table = visit_table([visit])
    assert table["session_id"].tolist() == ["ses-01"]
    assert table.loc[0, "years_from_first"] == 0.0
    assert table.loc[0, "edss"] == 1.5
    assert pd.isna(table.loc[0, "relapses_since_last"])
    periods = dmt_periods([visit])
    assert len(periods) == 1
    assert periods.loc[0, "dmt"] == "anti-CD20"
    assert periods.loc[0, "start"] == periods.loc[0, "end"] == pd.Timestamp("2020-05-01")
    assert periods.loc[0, "n_visits"] == 1


# ----------------------------------------------------------------------------- DMT periods
def test_dmt_switch_gives_two_periods_meeting_at_the_switch_visit() -> None:
    periods = dmt_periods(THREE)
    assert periods["dmt"].tolist() == ["interferon beta-1a", "natalizumab"]
    assert periods["start"].tolist() == [pd.Timestamp("2018-01-10"), pd.Timestamp("2020-07-01")]
    # The first therapy lasts until the visit that records the new one.
    assert periods["end"].tolist() == [pd.Timestamp("2020-07-01"), pd.Timestamp("2020-07-01")]
    assert periods["first_session"].tolist() == ["ses-01", "ses-03"]
    assert periods["last_session"].tolist() == ["ses-02", "ses-03"]
    assert periods["n_visits"].tolist() == [2, 1]


def test_switching_back_starts_a_new_period() -> None:
    visits = [_visit("ses-01", "2018-01-01", dmt="A"), _visit("ses-02", "2019-01-01", dmt="B"),
              _visit("ses-03", "2020-01-01", dmt="A"), _visit("ses-04", "2021-01-01", dmt="A")]
    periods = dmt_periods(visits)
    assert periods["dmt"].tolist() == ["A", "B", "A"]
    assert periods["end"].dt.year.tolist() == [2019, 2020, 2021]


def test_missing_dmt_is_its_own_labelled_period() -> None:
    visits = [_visit("ses-01", "2018-01-01", dmt=None), _visit("ses-02", "2019-01-01", dmt=None),
              _visit("ses-03", "2020-01-01", dmt="A")]
    assert dmt_periods(visits)["dmt"].tolist() == [NO_DMT, "A"]
    assert visit_table(visits)["dmt"].tolist() == [NO_DMT, NO_DMT, "A"]


def test_unsorted_visits_are_sorted_by_date() -> None:
    table = visit_table(THREE[::-1])
    assert table["session_id"].tolist() == ["ses-01", "ses-02", "ses-03"]
    assert dmt_periods(THREE[::-1])["dmt"].tolist() == ["interferon beta-1a", "natalizumab"]


# ----------------------------------------------------------------------------- visit table
def test_years_from_first_use_julian_years() -> None:
    table = visit_table(THREE)
    # 365 and 903 days after the first visit, / 365.25.
    assert np.allclose(table["years_from_first"], [0.0, 365 / 365.25, 903 / 365.25])
    assert table["acq_date"].dtype.kind == "M"


def test_missing_edss_stays_missing_and_step_carries_forward() -> None:
    visits = [_visit("ses-01", "2018-01-01", edss=None), _visit("ses-02", "2019-01-01", 2.5),
              _visit("ses-03", "2020-01-01", edss=None), _visit("ses-04", "2021-01-01", 4.0)]
    table = visit_table(visits)
    assert table["edss"].isna().tolist() == [True, False, True, False]
    step = table["edss_step"].tolist()
    assert np.isnan(step[0]) and step[1:] == [2.5, 2.5, 4.0]


def test_relapse_visits_are_those_with_relapses() -> None:
    visits = [*THREE, _visit("ses-04", "2021-01-01", relapses=None)]
    rows = relapse_visits(visit_table(visits))
    assert rows["session_id"].tolist() == ["ses-02", "ses-03"]
    assert rows["relapses_since_last"].tolist() == [2, 1]


def test_truth_volumes_join_by_session_and_missing_truth_is_nan() -> None:
    truths = {
        "ses-01": {"lesion_volume_ml": 1.5, "brain_volume_ml": 1200.0, "lesion_count": 4,
                   "new_or_enlarging": 0},
        "ses-02": None,
        "ses-03": {"lesion_volume_ml": 2.0, "brain_volume_ml": "n/a"},
    }
    table = visit_table(THREE, truths)
    assert table["lesion_volume_ml"].tolist()[::2] == [1.5, 2.0]
    assert np.isnan(table.loc[1, "lesion_volume_ml"])
    assert table.loc[0, "brain_volume_ml"] == 1200.0
    assert np.isnan(table.loc[2, "brain_volume_ml"])  # not a number: left missing
    assert has_volumes(table)
    assert not has_volumes(visit_table(THREE))


@pytest.mark.parametrize("column", VISIT_COLUMNS)
def test_visit_table_dtypes_match_empty_table(column: str) -> None:
    # Same dtypes whether or not there are visits, so callers can concatenate tables.
    assert visit_table(THREE)[column].dtype == visit_table([])[column].dtype
