"""Diagnostics of bench/operating_points.py on constructed images (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from bench import operating_points
from bench.operating_points import edge_profile, intensity_profile, score, zone_labels


def _ball(shape: tuple[int, int, int], radius: float) -> np.ndarray:
    idx = np.indices(shape) - (np.array(shape)[:, None, None, None] - 1) / 2
    return np.sqrt((idx ** 2).sum(axis=0)) <= radius


def test_edge_profile_tells_a_sharp_lesion_from_a_graded_one() -> None:
    shape = (40, 40, 40)
    truth = _ball(shape, 8)
    brain = np.ones(shape, bool)
    sharp = np.where(truth, 2.0, 1.0)
    graded = 1.0 + ndi.gaussian_filter(truth.astype(float), 2.0)
    s, g = edge_profile(sharp, truth, brain), edge_profile(graded, truth, brain)
    assert s["core_over_surroundings"] == pytest.approx(2.0)
    assert s["profile"]["1"] == pytest.approx(1.0) and s["profile"]["-1"] == pytest.approx(0.0)
    # Blurred: the outline's voxels are fainter than the core, the first outside brighter than 0.
    assert g["profile"]["1"] < 0.9 and g["profile"]["-1"] > 0.1
    assert g["profile"]["3"] > g["profile"]["1"] > g["profile"]["-1"] > g["profile"]["-3"]


def test_edge_profile_without_a_core_says_so() -> None:
    truth = np.zeros((10, 10, 10), bool)
    truth[5, 5, 5] = True  # one voxel: nothing 2 voxels deep
    out = edge_profile(np.ones((10, 10, 10)), truth, np.ones((10, 10, 10), bool))
    assert out == {"core_over_surroundings": None, "profile": None}


def test_intensity_profile_counts_truth_voxels_per_band_and_the_found_share() -> None:
    flair = np.ones((20, 20, 20))
    truth = np.zeros_like(flair, dtype=bool)
    truth[2:4, 2:4, 2:4] = True  # 8 voxels at 1.45 x the median
    truth[10:12, 10:12, 10:12] = True  # 8 voxels at 1.15 x the median
    flair[2:4, 2:4, 2:4] = 1.45
    flair[10:12, 10:12, 10:12] = 1.15
    prob = np.where(flair > 1.3, 0.9, 0.1)
    rows = {r["band"]: r for r in intensity_profile(flair, truth, prob, 0.5)}
    assert rows["1.4-1.5"] == {"band": "1.4-1.5", "truth_voxels": 8, "found": 1.0}
    assert rows["1.1-1.2"] == {"band": "1.1-1.2", "truth_voxels": 8, "found": 0.0}
    assert rows["1.2-1.3"]["truth_voxels"] == 0 and rows["1.2-1.3"]["found"] is None


def test_score_thresholds_and_drops_small_components() -> None:
    affine = np.eye(4)
    truth = np.zeros((20, 20, 20), bool)
    truth[5:8, 5:8, 5:8] = True
    prob = np.zeros((20, 20, 20), np.float32)
    prob[5:8, 5:8, 5:8] = 0.6
    prob[15, 15, 15] = 0.9  # one voxel: under 10 mm^3, dropped
    at_half = score(prob, truth, affine, 0.5, 10.0)
    assert at_half["dice"] == pytest.approx(1.0) and at_half["fpr"] == 0.0
    assert score(prob, truth, affine, 0.7, 10.0)["tpr"] == 0.0


def test_results_name_paths_inside_the_repository_relative_to_it(tmp_path) -> None:
    from bench._common import REPO, repo_relative

    assert repo_relative(REPO / "models_onnx") == "models_onnx"
    assert repo_relative(REPO / "data" / "demo" / "..") == "data"
    outside = tmp_path / "models"
    assert repo_relative(outside) == str(outside.resolve())


def test_grown_labels_outline_found_lesions_only() -> None:
    from bench.operating_points import grown_labels

    affine = np.eye(4)
    prob = np.zeros((20, 20, 20), np.float32)
    prob[4:9, 4:9, 4:9] = 0.3  # a faint halo ...
    prob[6, 6, 6] = 0.8  # ... around a found core
    prob[14:17, 14:17, 14:17] = 0.3  # as faint but never found: not a lesion
    labels = grown_labels(prob, affine, 0.5, 0.2, 0.0)
    assert int(labels.max()) == 1 and int((labels > 0).sum()) == 125
    assert int((grown_labels(prob, affine, 0.5, 0.5, 0.0) > 0).sum()) == 1
    assert int(grown_labels(prob, affine, 0.5, 0.2, 200.0).max()) == 0  # 125 mm^3 < 200
    truth = prob > 0.2
    assert score(prob, truth, affine, 0.5, 0.0, grow=0.2)["tpr"] == 0.5
    assert score(prob, truth, affine, 0.5, 0.0)["dice"] < 0.02


def test_zone_labels_add_faint_lesions_only_in_the_named_zones(
        monkeypatch: pytest.MonkeyPatch) -> None:
    affine = np.eye(4)
    prob = np.zeros((30, 30, 30), np.float32)
    prob[2:6, 2:6, 2:6] = 0.8      # found at 0.5 anywhere
    prob[10:14, 10:14, 10:14] = 0.35  # faint, juxtacortical
    prob[20:24, 20:24, 20:24] = 0.35  # faint, deep white matter

    def by_position(labels: np.ndarray, aff: np.ndarray, to_mni: np.ndarray) -> dict[int, str]:
        assert np.array_equal(to_mni, np.eye(4))
        zones = {}
        for i in np.unique(labels[labels > 0]):
            x = int(np.argwhere(labels == i)[0][0])
            zones[int(i)] = ("periventricular" if x < 8 else "juxtacortical" if x < 18
                             else "deep_white_matter")
        return zones

    monkeypatch.setattr(operating_points, "classify_lesions", by_position)
    out = zone_labels(prob, affine, 0.5, 0.3, ("juxtacortical",), np.eye(4), 10.0)
    assert out.max() == 2 and out[3, 3, 3] > 0 and out[11, 11, 11] > 0 and out[21, 21, 21] == 0
    none = zone_labels(prob, affine, 0.5, 0.3, ("infratentorial",), np.eye(4), 10.0)
    assert none.max() == 1 and none[11, 11, 11] == 0
    truth = prob > 0.3
    scored = score(prob, truth, affine, 0.5, 10.0, labels=out)
    assert scored["tpr"] == pytest.approx(2 / 3, abs=1e-4) and scored["fpr"] == 0.0
