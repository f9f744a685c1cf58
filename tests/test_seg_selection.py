"""Model-selection set of the segmentation training (no torch needed)."""

from __future__ import annotations

import pytest

from training.seg.selection import selection_patients, selection_visits


def test_selection_set_follows_the_reports_patients() -> None:
    patients = [f"sub-{i:02d}" for i in range(1, 13)]
    chosen = selection_patients(patients, skip=6, count=6)
    assert chosen == [f"sub-{i:02d}" for i in range(7, 13)]
    assert not set(chosen) & set(patients[:6])  # the report's visits stay out


def test_selection_set_refuses_a_study_too_small() -> None:
    with pytest.raises(ValueError, match="needs 12"):
        selection_patients([f"sub-{i:02d}" for i in range(1, 10)], skip=6, count=6)


def test_selection_visits_are_each_patients_first_visit() -> None:
    from types import SimpleNamespace

    def visit(sid: str) -> SimpleNamespace:
        return SimpleNamespace(session_id=sid)

    visits = {"sub-07": [visit("ses-01"), visit("ses-02")], "sub-08": [visit("ses-03")]}
    study = SimpleNamespace(visits=visits)
    assert selection_visits(study, ["sub-07", "sub-08"]) == [("sub-07", "ses-01"),
                                                              ("sub-08", "ses-03")]
