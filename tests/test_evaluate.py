"""Tests for ms_core.segmentation.evaluate: Dice, lesion-wise detection (both overlap rules),
volumes."""

from __future__ import annotations

import numpy as np
import pytest

from ms_core.foundation.domain import LesionMask
from ms_core.foundation.errors import InputError
from ms_core.segmentation.evaluate import calibration_error, dice, evaluate_masks, lesion_detection


def _mask(*boxes: tuple[slice, slice, slice], shape: tuple[int, int, int] = (20, 20, 20)
          ) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    for b in boxes:
        m[b] = 1
    return m


def test_dice_cases() -> None:
    a = _mask(np.s_[0:4, 0:4, 0:4])
    assert dice(a, a) == 1.0
    assert dice(a, np.zeros_like(a)) == 0.0
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0
    half = _mask(np.s_[0:2, 0:4, 0:4])
    assert dice(a, half) == pytest.approx(2 * 32 / (64 + 32))


def test_lesion_detection_any_voxel_and_10pct_rules() -> None:
    truth = _mask(np.s_[0:5, 0:5, 0:5], np.s_[10:15, 10:15, 10:15], np.s_[0:2, 18:20, 0:2])
    # Prediction: touches lesion 1 by a single voxel (1/125 < 10 %), covers lesion 2 fully,
    # misses lesion 3, and adds one lesion far from everything.
    pred = _mask(np.s_[4:7, 4:7, 4:7], np.s_[10:15, 10:15, 10:15], np.s_[17:20, 0:3, 17:20])
    any_rule = lesion_detection(pred, truth, 0.0)
    assert any_rule == {"n_true": 3, "n_pred": 3, "detected": 2, "false_positives": 1,
                        "tpr": pytest.approx(2 / 3), "fpr": pytest.approx(1 / 3),
                        "f1": pytest.approx(2 / 3)}
    strict = lesion_detection(pred, truth, 0.10)
    assert strict["detected"] == 1  # lesion 1 overlaps by 1 of 125 voxels only
    assert strict["false_positives"] == 2  # 1 of 27 predicted voxels overlap: under 10 %


def test_detection_with_empty_masks_gives_none_rates() -> None:
    empty = np.zeros((5, 5, 5), np.uint8)
    one = empty.copy()
    one[2, 2, 2] = 1
    assert lesion_detection(empty, empty)["tpr"] is None
    r = lesion_detection(one, empty)
    assert (r["tpr"], r["fpr"], r["f1"]) == (None, 1.0, None)
    r = lesion_detection(empty, one)
    assert (r["tpr"], r["fpr"]) == (0.0, None)


def test_evaluate_masks_volumes_and_grid_check() -> None:
    aff = np.diag([1.0, 1.0, 2.0, 1.0])
    truth = LesionMask(_mask(np.s_[0:5, 0:5, 0:5]), aff)
    pred = LesionMask(_mask(np.s_[0:5, 0:5, 0:4]), aff)
    out = evaluate_masks(pred, truth)
    assert out["truth_volume_ml"] == pytest.approx(0.25)
    assert out["abs_volume_diff_ml"] == pytest.approx(0.05)
    assert out["dice"] == pytest.approx(2 * 100 / 225)
    shifted = LesionMask(pred.labels, np.diag([1.0, 1.0, 3.0, 1.0]))
    with pytest.raises(InputError, match="does not match truth grid"):
        evaluate_masks(shifted, truth)


def test_size_views_leave_small_lesions_out_of_both_masks_and_count_by_band() -> None:
    aff = np.diag([2.0, 2.0, 2.0, 1.0])  # 8 mm^3 voxels
    # Truth: a 1-voxel lesion (8 mm^3), a 2-voxel one (16 mm^3), a 4^3 cube (512 mm^3).
    truth = LesionMask(_mask(np.s_[0:1, 0:1, 0:1], np.s_[5:7, 5:6, 5:6],
                             np.s_[10:14, 10:14, 10:14]), aff)
    # Prediction: finds the 1-voxel lesion and the cube, misses the 2-voxel one, and adds a
    # 1-voxel false lesion and a 2-voxel false lesion.
    pred = LesionMask(_mask(np.s_[0:1, 0:1, 0:1], np.s_[11:13, 11:13, 11:13],
                            np.s_[18:19, 0:1, 0:1], np.s_[18:20, 18:19, 18:19]), aff)
    out = evaluate_masks(pred, truth)
    all_lesions = out["lesion_any_voxel"]
    assert (all_lesions["n_true"], all_lesions["detected"], all_lesions["n_pred"],
            all_lesions["false_positives"]) == (3, 2, 4, 2)
    # Under 10 mm^3 out of both masks: truth keeps the 2-voxel lesion and the cube, the
    # prediction its cube hit and the 2-voxel false lesion.
    large = out["lesion_any_voxel_min_size"]
    assert out["min_lesion_mm3"] == 10.0
    assert (large["n_true"], large["detected"], large["n_pred"], large["false_positives"]) == \
        (2, 1, 2, 1)
    assert large["f1"] == pytest.approx(0.5)
    assert [(b["band_mm3"], b["n_true"], b["detected"]) for b in out["lesion_by_size"]] == \
        [("<10", 1, 1), ("10-100", 1, 0), (">=100", 1, 1)]
    # A floor of 20 mm^3 leaves only the cube on each side.
    floor20 = evaluate_masks(pred, truth, min_lesion_mm3=20.0)["lesion_any_voxel_min_size"]
    assert (floor20["n_true"], floor20["detected"], floor20["n_pred"]) == (1, 1, 1)
    with pytest.raises(ValueError, match="min_lesion_mm3"):
        evaluate_masks(pred, truth, min_lesion_mm3=-1.0)


def test_evaluate_cli_prints_json(tmp_path) -> None:
    import json
    import subprocess
    import sys

    from ms_core.foundation.io import save_labels

    aff = np.eye(4)
    save_labels(tmp_path / "t.nii.gz", _mask(np.s_[0:5, 0:5, 0:5]), aff)
    save_labels(tmp_path / "p.nii.gz", _mask(np.s_[0:5, 0:5, 0:4]), aff)
    out = subprocess.run([sys.executable, "-m", "ms_core", "evaluate", "--pred",
                          str(tmp_path / "p.nii.gz"), "--truth", str(tmp_path / "t.nii.gz")],
                         capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(out.stdout)
    assert result["dice"] == pytest.approx(2 * 100 / 225)
    assert result["lesion_any_voxel"]["f1"] == 1.0
    bad = subprocess.run([sys.executable, "-m", "ms_core", "evaluate", "--pred",
                          str(tmp_path / "missing.nii.gz"), "--truth", str(tmp_path / "t.nii.gz")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "missing.nii.gz: file not found" in bad.stderr
    negative = subprocess.run([sys.executable, "-m", "ms_core", "evaluate", "--pred",
                               str(tmp_path / "p.nii.gz"), "--truth", str(tmp_path / "t.nii.gz"),
                               "--min-lesion-mm3", "-1"], capture_output=True, text=True,
                              timeout=120)
    assert negative.returncode == 2 and "--min-lesion-mm3 must be >= 0" in negative.stderr


def test_calibration_error_is_zero_for_a_calibrated_map_and_grows_with_overconfidence() -> None:
    rng = np.random.default_rng(0)
    prob = rng.uniform(0.0, 1.0, 200_000)
    truth = rng.uniform(0.0, 1.0, prob.size) < prob  # lesion with exactly that probability
    region = np.ones(prob.size, bool)
    assert calibration_error(prob, truth, region) < 0.01
    sharp = np.where(prob > 0.5, 0.99, 0.01)  # same ranking, overconfident
    assert calibration_error(sharp, truth, region) > 0.2
    # Only the region counts, and min_prob leaves out the certain background.
    assert calibration_error(prob, truth, np.zeros(prob.size, bool)) is None
    assert calibration_error(np.zeros(4), np.zeros(4), np.ones(4, bool), min_prob=0.05) is None
    with pytest.raises(ValueError, match="one grid"):
        calibration_error(prob[:10], truth, region)
