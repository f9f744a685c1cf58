"""Tests for ms_core.longitudinal.timeline: per-visit table, DMT periods and relapse rows."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ms_core.foundation.domain import Visit
from ms_core.longitudinal.timeline import (
    NO_DMT,
    NO_TRUTH,
    PERIOD_COLUMNS,
    VISIT_COLUMNS,
    clinical_source,
    dmt_periods,
    has_volumes,
    relapse_visits,
    truth_source,
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


# ----------------------------------------------------------------------------- sources
def _clinical_study(root: Path) -> list[Visit]:
    """A study with a sessions table and, for ses-01 only, a demo ``truth.json``."""
    from ms_core.foundation.io import write_json
    from ms_core.study.derivatives import truth_dir
    from ms_core.study.layout import load_study

    root.mkdir(exist_ok=True)
    (root / "participants.tsv").write_text(
        "participant_id\tsex\tbirth_year\tms_type\tonset_year\nsub-01\tF\t1980\tRR\t2010\n")
    (root / "sub-01").mkdir()
    (root / "sub-01" / "sub-01_sessions.tsv").write_text(
        "session_id\tacq_date\tedss\trelapses_since_last\tdmt\tscanner\tfield_strength_t\n"
        "ses-01\t2020-01-01\t2.5\t0\tA\tS\t3\nses-02\t2021-01-01\t3.5\t2\tA\tS\t3\n")
    folder = truth_dir(root, "sub-01", "ses-01")
    folder.mkdir(parents=True)
    write_json(folder / "truth.json", {"lesion_volume_ml": 1.5, "brain_volume_ml": 1200.0})
    return list(load_study(root, check_images=False).visits["sub-01"])


def test_sources_name_the_files_the_numbers_were_read_from(tmp_path: Path) -> None:
    from ui import helpers as ui_helpers

    visits = _clinical_study(tmp_path)
    truths, problems = ui_helpers.truths_for(tmp_path, visits)
    assert problems == []
    table = visit_table(visits, truths)
    clinical = table["clinical_source"].tolist()
    assert clinical[0] == clinical[1] == ("sub-01/sub-01_sessions.tsv (as entered with the "
                                          "study, not computed by the app)")
    assert (tmp_path / clinical[0].split(" ")[0]).read_text().count("ses-0") == 2
    truth = table["truth_source"].tolist()
    assert truth[0].startswith("demo ground truth (known by construction): ")
    assert (tmp_path / truth[0].rsplit(" ", 1)[1]).exists()
    assert truth[1] == NO_TRUTH
    assert truth_source(visits[0], {}) == truth[0]  # an empty truth.json is still the source
    assert clinical_source(visits[1]) == clinical[1]


def test_edss_and_volume_hovers_show_their_source(tmp_path: Path) -> None:
    from ui import figures as ui_figures
    from ui import helpers as ui_helpers

    visits = _clinical_study(tmp_path)
    table = visit_table(visits, ui_helpers.truths_for(tmp_path, visits)[0])
    edss = ui_figures.edss_figure(table, dmt_periods(visits))
    assert [t.name for t in edss.data] == ["EDSS", "Relapses since last visit"]
    line, stars = edss.data
    assert all("sub-01_sessions.tsv" in row[2] for row in line.customdata)
    assert "EDSS from %{customdata[2]}" in line.hovertemplate
    assert stars.customdata[0][0] == 2 and "sub-01_sessions.tsv" in stars.customdata[0][1]
    assert "%{customdata[1]}" in stars.hovertemplate
    volumes = ui_figures.volume_figure(table)
    assert len(volumes.data) == 2
    for trace in volumes.data:
        hovers = [row[1].replace("<br>", " ") for row in trace.customdata]
        assert hovers[0].endswith("derivatives/ground_truth/sub-01/ses-01/truth.json")
        assert hovers[1] == NO_TRUTH
        assert "%{customdata[1]}" in trace.hovertemplate


def test_a_shared_figure_is_built_once_per_distinct_data(tmp_path: Path) -> None:
    """Reruns reuse the built figure; a change in the table (a new EDSS) builds a new one."""
    from ui import figures as ui_figures
    from ui import helpers as ui_helpers

    visits = _clinical_study(tmp_path)
    table = visit_table(visits, ui_helpers.truths_for(tmp_path, visits)[0])
    calls: list[int] = []

    def build(frame: pd.DataFrame, periods: pd.DataFrame) -> object:
        calls.append(len(frame))
        return ui_figures.edss_figure(frame, periods)

    first = ui_figures.shared_figure(build, table, dmt_periods(visits))
    again = ui_figures.shared_figure(build, table.copy(), dmt_periods(visits))
    assert again is first and calls == [2]
    changed = table.copy()
    changed.loc[1, "edss"] = 6.5
    other = ui_figures.shared_figure(build, changed, dmt_periods(visits))
    assert other is not first and calls == [2, 2]
    assert 6.5 in list(other.data[0].y) and 6.5 not in list(first.data[0].y)


def test_study_is_reloaded_when_its_files_change_but_not_for_new_results(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cached study follows participants, sessions and images; results under
    derivatives/ (which load_study never reads) are not walked and cause no reload."""
    import os

    from ms_core.study.derivatives import derivatives_dir
    from ui import helpers as ui_helpers

    _clinical_study(tmp_path)
    monkeypatch.setenv("MS_DASH_STUDY", str(tmp_path))  # inside the app's study roots
    loads: list[str] = []
    real = ui_helpers.load_study

    def counting(root: str) -> object:
        loads.append(root)
        return real(root)

    monkeypatch.setattr(ui_helpers, "load_study", counting)
    first = ui_helpers.cached_study(tmp_path)
    assert len(loads) == 1 and [v.session_id for v in first.visits["sub-01"]] == ["ses-01",
                                                                                   "ses-02"]
    results = derivatives_dir(tmp_path, "sub-01", "ses-02")
    results.mkdir(parents=True)
    (results / "lesions.csv").write_text("lesion_id\n1\n")
    assert ui_helpers.cached_study(tmp_path).participants == first.participants
    assert len(loads) == 1  # a new result: no reload
    assert "derivatives/ms_dash/sub-01/ses-02/lesions.csv" not in {
        name.replace(os.sep, "/") for name, *_ in ui_helpers._tree_signature(tmp_path)}
    sessions = tmp_path / "sub-01" / "sub-01_sessions.tsv"
    sessions.write_text(sessions.read_text() + "ses-03\t2022-01-01\t4.0\t0\tA\tS\t3\n")
    again = ui_helpers.cached_study(tmp_path)
    assert len(loads) == 2 and [v.session_id for v in again.visits["sub-01"]][-1] == "ses-03"
