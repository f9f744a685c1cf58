"""Tests for ms_core.lesions.components: components, thresholds, per-lesion table."""

from __future__ import annotations

import numpy as np
import pytest

from ms_core.lesions.components import (
    LESION_TABLE_COLUMNS,
    label_components,
    lesion_table,
    threshold_probability,
)
from ms_core.synthetic.synth import anisotropic_affine, sphere_labels, sphere_volume_ml

AFF = anisotropic_affine((0.5, 0.5, 0.5), (-20.0, -20.0, -20.0))


def test_table_of_two_balls_has_known_volumes_and_centroids() -> None:
    # Reference: exact ball volumes; 0.5 mm voxels keep the voxelisation error under 2 %.
    labels = sphere_labels((80, 80, 80), AFF, [((-8.0, 0.0, 0.0), 5.0), ((9.0, 5.0, 2.0), 3.0)])
    prob = np.where(labels > 0, 0.9, 0.1).astype(np.float32)
    table = lesion_table(label_components(labels, affine=AFF), affine=AFF, prob=prob)
    assert list(table.columns) == list(LESION_TABLE_COLUMNS)
    assert len(table) == 2
    big = table.sort_values("volume_ml").iloc[-1]
    assert big.volume_ml == pytest.approx(sphere_volume_ml(5.0), rel=0.02)
    assert (big.centroid_x_mm, big.centroid_y_mm, big.centroid_z_mm) == pytest.approx(
        (-8.0, 0.0, 0.0), abs=0.05)
    assert table.mean_prob.tolist() == pytest.approx([0.9, 0.9])


def test_26_connectivity_joins_corner_neighbours() -> None:
    m = np.zeros((4, 4, 4), bool)
    m[0, 0, 0] = m[1, 1, 1] = True  # touch by a corner only
    assert label_components(m, affine=np.eye(4)).max() == 1


def test_min_lesion_size_removes_small_components_and_renumbers() -> None:
    labels = sphere_labels((80, 80, 80), AFF, [((-8.0, 0.0, 0.0), 5.0), ((9.0, 5.0, 2.0), 1.0)])
    small_mm3 = sphere_volume_ml(1.0) * 1000
    kept = label_components(labels > 0, affine=AFF, min_lesion_mm3=small_mm3 * 2)
    assert set(np.unique(kept)) == {0, 1}


def test_empty_and_single_voxel() -> None:
    empty = np.zeros((5, 5, 5), np.float32)
    table = lesion_table(threshold_probability(empty, affine=AFF), affine=AFF)
    assert table.empty and list(table.columns) == list(LESION_TABLE_COLUMNS)
    one = empty.copy()
    one[2, 3, 4] = 0.7
    table = lesion_table(threshold_probability(one, affine=AFF), affine=AFF, prob=one)
    assert table.n_voxels.tolist() == [1]
    assert table.volume_ml.iloc[0] == pytest.approx(0.125 / 1000)
    assert table.max_prob.iloc[0] == pytest.approx(0.7)
    assert table.centroid_z_mm.iloc[0] == pytest.approx(-20.0 + 4 * 0.5)


@pytest.mark.parametrize(("threshold", "min_mm3"), [(0.0, 0.0), (1.5, 0.0), (0.5, -1.0)])
def test_bad_threshold_arguments(threshold: float, min_mm3: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        threshold_probability(np.zeros((2, 2, 2)), affine=AFF, threshold=threshold,
                              min_lesion_mm3=min_mm3)
