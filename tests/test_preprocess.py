"""Tests for ms_core.preprocess: grids, resampling, normalisation, cropping, brain extraction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ms_core.domain import Volume
from ms_core.evaluate import dice
from ms_core.io import load_lesion_mask, load_volume
from ms_core.preprocess import (
    Grid,
    brain_mask_from_template,
    crop_box,
    normalize_intensity,
    pad_to_multiple,
    resample_to_grid,
    working_grid,
)
from ms_core.study import image_path, truth_dir
from ms_core.synth import anisotropic_affine, sphere_labels, sphere_volume_ml


def test_working_grid_covers_an_oblique_lps_volume() -> None:
    aff = np.diag([-0.9, -0.9, 3.0, 1.0])
    aff[:3, 3] = [100.0, 120.0, -60.0]
    vol = Volume(np.zeros((200, 240, 40)), aff, "FLAIR")
    g = working_grid(vol, 1.0)
    assert np.allclose(np.diag(g.affine)[:3], 1.0)
    corners = [aff @ np.array([i, j, k, 1.0]) for i in (0, 199) for j in (0, 239) for k in (0, 39)]
    inv = np.linalg.inv(g.affine)
    for c in corners:
        idx = inv @ c
        assert np.all(idx[:3] >= -1e-6) and np.all(idx[:3] <= np.asarray(g.shape) - 1 + 1e-6)
    with pytest.raises(ValueError, match="spacing_mm"):
        working_grid(vol, 0.0)


def test_resampling_labels_keeps_sphere_volume_across_grids() -> None:
    src_aff = anisotropic_affine((0.9, 1.1, 3.0))
    labels = sphere_labels((90, 90, 30), src_aff, [((0.0, 0.0, 10.0), 12.0)])
    grid = working_grid(Volume(labels.astype(np.float32), src_aff, "mask"), 1.0)
    out = resample_to_grid(labels, src_aff, grid, order=0)
    assert out.dtype == labels.dtype
    # Reference: the exact ball volume; two voxelisations add up to about 6 % error.
    assert (out > 0).sum() / 1000 == pytest.approx(sphere_volume_ml(12.0), rel=0.06)
    with pytest.raises(ValueError, match="order"):
        resample_to_grid(labels, src_aff, grid, order=2)


def test_normalize_intensity() -> None:
    data = np.full((4, 4, 4), 300.0, np.float32)
    data[0, 0, 0] = 900.0
    brain = np.ones((4, 4, 4), bool)
    brain[3] = False
    out = normalize_intensity(data, brain)
    assert out[1, 1, 1] == pytest.approx(1.0) and out[0, 0, 0] == pytest.approx(3.0)
    assert np.all(out[3] == 0)
    with pytest.raises(ValueError, match="empty"):
        normalize_intensity(data, np.zeros_like(brain))
    with pytest.raises(ValueError, match="blank"):
        normalize_intensity(np.zeros_like(data), brain)


def test_crop_and_pad() -> None:
    m = np.zeros((30, 30, 30), bool)
    assert crop_box(m) == (slice(0, 30),) * 3  # empty mask: whole image
    m[10, 12, 14] = True
    assert crop_box(m, 2) == (slice(8, 13), slice(10, 15), slice(12, 17))
    padded, back = pad_to_multiple(np.ones((2, 5, 9, 17)), 8, minimum=16)
    assert padded.shape == (2, 16, 16, 24)
    assert padded[back].shape == (2, 5, 9, 17) and padded.sum() == 2 * 5 * 9 * 17


def test_brain_extraction_on_demo_matches_truth(small_study: Path) -> None:
    # The truth is the parenchyma; our mask is the intracranial brain (with sulcal CSF), so a
    # Dice of 0.9 and almost no parenchyma outside the mask is the expected agreement.
    for pid in ("sub-01", "sub-02"):
        vol = load_volume(image_path(small_study, pid, "ses-02", "FLAIR"), "FLAIR")
        grid = working_grid(vol)
        mask = brain_mask_from_template(vol, grid)
        truth = load_lesion_mask(truth_dir(small_study, pid, "ses-02") / "brain_mask.nii.gz")
        t = resample_to_grid(truth.labels, truth.affine, grid, order=0) > 0
        assert dice(mask, t) > 0.9
        assert (t & ~mask).sum() / t.sum() < 0.01
        assert np.array_equal(mask, brain_mask_from_template(vol, grid))  # deterministic
        assert isinstance(grid, Grid)
