"""Tests for ms_core.imaging.registration: recovers a known rigid motion, deterministically."""

from __future__ import annotations

import numpy as np

from ms_core.imaging.anatomy import load_template, synthetic_head
from ms_core.imaging.preprocess import Grid, resample_to_grid
from ms_core.imaging.registration import register_affine


def _rot_z(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    m = np.eye(4)
    m[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    return m


def test_recovers_known_rigid_motion_and_is_deterministic() -> None:
    tpl = load_template()
    image = synthetic_head("T1w")[::2, ::2, ::2]
    aff = tpl.affine @ np.diag([2.0, 2.0, 2.0, 1.0])
    # The subject is the template moved by `motion` (template point p appears at motion @ p).
    motion = _rot_z(6.0)
    motion[:3, 3] = [5.0, -4.0, 3.0]
    subject_grid = Grid(image.shape, aff)
    subject = resample_to_grid(image, motion @ aff, subject_grid, order=1)
    found = register_affine(subject, aff, image, aff, rigid_only=True, shrink=(2, 1),
                            sampling=0.3, seed=3)
    expected = np.linalg.inv(motion)  # subject world -> template world
    brain = np.argwhere(tpl.brain[::2, ::2, ::2] > 0.5)[::50]
    pts = (aff @ np.c_[brain, np.ones(len(brain))].T)
    err = np.linalg.norm((found @ pts - expected @ pts)[:3], axis=0)
    assert err.max() < 1.5  # mm, on 2 mm images
    again = register_affine(subject, aff, image, aff, rigid_only=True, shrink=(2, 1),
                            sampling=0.3, seed=3)
    np.testing.assert_array_equal(found, again)


def test_blank_images_are_refused_with_a_clear_message() -> None:
    import pytest

    blank = np.zeros((20, 20, 20), np.float32)
    with pytest.raises(ValueError, match="fixed image is blank"):
        register_affine(blank, np.eye(4), blank + 1, np.eye(4))
