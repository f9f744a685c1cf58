"""ms_core.imaging.appearance: lesion intensities relative to white matter."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from ms_core.imaging.appearance import appearance, white_matter_mode


def _phantom(lesion_level: float, halo: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 48^3 brain of white matter (100) and some grey matter (125), a 5-voxel-radius ball of
    ``lesion_level`` x white matter, and a one-voxel shell (26-neighbours) of ``halo`` x white
    matter around it."""
    rng = np.random.default_rng(0)
    shape = (48, 48, 48)
    brain = np.ones(shape, dtype=bool)
    image = np.full(shape, 100.0) + rng.normal(0.0, 2.0, shape)
    image[:, :, :8] += 25.0  # a slab of grey matter, brighter than white matter
    d = np.sqrt(((np.indices(shape) - 24) ** 2).sum(axis=0))
    lesion = d <= 5.0
    image[lesion] *= lesion_level
    image[ndi.binary_dilation(lesion, np.ones((3, 3, 3), dtype=bool)) & ~lesion] *= halo
    return image.astype(np.float32), lesion, brain


def test_white_matter_is_the_histogram_mode() -> None:
    image, _, brain = _phantom(1.5, 1.0)
    assert white_matter_mode(image, brain) == pytest.approx(100.0, abs=1.5)


def test_lesion_and_edge_figures_are_relative_to_white_matter() -> None:
    image, lesion, brain = _phantom(1.5, 1.2)
    look = appearance(image, lesion, brain)
    assert look["lesion_median"] == pytest.approx(1.5, abs=0.03)
    assert look["core"] == pytest.approx(1.5, abs=0.03)
    assert look["ring_1"] == pytest.approx(1.2, abs=0.03)
    assert look["ring_2"] == pytest.approx(1.0, abs=0.03)
    assert look["lesions"] == 1 and look["lesions_ge_20_voxels"] == 1
    assert look["per_lesion_mean"][0] == pytest.approx(1.5, abs=0.03)


def test_a_mask_without_lesion_voxels_is_rejected() -> None:
    image, lesion, brain = _phantom(1.5, 1.0)
    with pytest.raises(ValueError, match="no lesion voxel"):
        appearance(image, np.zeros_like(lesion), brain)
