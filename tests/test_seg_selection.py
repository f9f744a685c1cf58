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


def test_found_by_location_counts_lesions_touched_by_the_prediction() -> None:
    import numpy as np

    from training.seg.selection import found_by_location

    truth = np.zeros((10, 10, 10), np.int32)
    truth[1:3, 1:3, 1:3] = 1   # periventricular, hit in one voxel
    truth[5:7, 5:7, 5:7] = 2   # periventricular, missed
    truth[8, 8, 8] = 4         # juxtacortical, hit
    pred = np.zeros(truth.shape, bool)
    pred[2, 2, 2] = pred[8, 8, 8] = True
    pred[0, 9, 0] = True       # a false positive changes nothing here
    locations = {1: "periventricular", 2: "periventricular", 3: "infratentorial",
                 4: "juxtacortical"}  # lesion 3 is listed but not on this grid
    assert found_by_location(pred, truth, locations) == {"periventricular": [1, 2],
                                                         "juxtacortical": [1, 1]}


def test_missed_lesions_lists_the_lesions_without_a_predicted_voxel() -> None:
    import numpy as np

    from training.seg.selection import missed_lesions

    truth = np.zeros((12, 12, 12), bool)
    truth[0:2, 0:2, 0:2] = True     # 8 voxels, missed
    truth[5:8, 5:8, 5:8] = True     # 27 voxels, hit
    truth[10, 10, 10] = True        # 1 voxel, missed
    flair = np.full(truth.shape, 100.0)
    flair[truth] = 130.0
    pred = np.zeros(truth.shape, bool)
    pred[6, 6, 6] = True
    prob = np.where(truth, 0.2, 0.0)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    missed = missed_lesions(pred, prob, truth, flair, affine)
    assert [m["voxels"] for m in missed] == [8, 1]
    assert missed[0]["centroid_mm"] == [1.0, 1.0, 1.0]
    assert missed[1]["centroid_mm"] == [20.0, 20.0, 20.0]
    assert missed[0]["max_prob"] == 0.2
    assert missed[0]["flair_ratio"] == 1.3 and missed[0]["surroundings_ratio"] == 1.0
    assert missed_lesions(truth, prob, truth, flair, affine) == []
