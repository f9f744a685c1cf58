"""Tests for ms_core.lesions.features: shape, first-order and GLCM features per lesion.

Reference values are analytic: ball volume 4/3 pi r^3 and area 4 pi r^2; a solid ellipsoid with
semi-axes a >= b >= c has second moments a^2/5, b^2/5, c^2/5, so elongation = b/a and
flatness = c/a; a 1 x 1 x 3 mm voxel has moments 9/12 and 1/12 (elongation 1/3).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from ms_core.lesions.features import (
    FIRST_ORDER,
    GLCM_FEATURES,
    feature_columns,
    first_order,
    glcm_features,
    lesion_features,
    principal_axes_mm,
    surface_area_mm2,
)
from ms_core.synthetic.synth import anisotropic_affine, sphere_labels, sphere_volume_ml

FINE = anisotropic_affine((0.5, 0.5, 0.5), (-10.0, -10.0, -10.0))
FLAIR_2D = anisotropic_affine((0.9, 1.1, 3.0), (-20.0, -20.0, -20.0))


def _ellipsoid(shape: tuple[int, int, int], affine: np.ndarray, semi_axes_mm: tuple[float, ...],
               rotation: np.ndarray | None = None) -> np.ndarray:
    """Label 1 inside an ellipsoid centred at the world origin, axes rotated by ``rotation``."""
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
    xyz = affine[:3, :3] @ ijk + affine[:3, 3:4]
    rot = np.eye(3) if rotation is None else rotation
    local = rot.T @ xyz
    r2 = sum((local[i] / semi_axes_mm[i]) ** 2 for i in range(3))
    return (r2 <= 1.0).reshape(shape).astype(np.int32)


def test_ball_volume_area_and_sphericity() -> None:
    # 0.5 mm voxels, radius 6 mm (12 voxels): the Crofton area is within 3 % of 4 pi r^2.
    labels = sphere_labels((40, 40, 40), FINE, [((0.3, -0.2, 0.1), 6.0)])
    row = lesion_features(labels, FINE, {}).iloc[0]
    assert row.volume_ml == pytest.approx(sphere_volume_ml(6.0), rel=0.01)
    assert row.surface_area_mm2 == pytest.approx(4 * math.pi * 36.0, rel=0.03)
    assert row.sphericity == pytest.approx(1.0, abs=0.03)
    assert row.elongation == pytest.approx(1.0, abs=0.02)
    assert row.flatness == pytest.approx(1.0, abs=0.02)
    assert row.major_axis_mm == pytest.approx(12.0, rel=0.02)
    assert (row.centroid_x_mm, row.centroid_y_mm, row.centroid_z_mm) == pytest.approx(
        (0.3, -0.2, 0.1), abs=0.05)


def test_ball_on_anisotropic_grid() -> None:
    # 0.9 x 1.1 x 3 mm (2D FLAIR): radius 9 mm, area within 5 %, sphericity within 0.06.
    labels = sphere_labels((40, 40, 14), FLAIR_2D, [((0.0, 0.0, 0.0), 9.0)])
    row = lesion_features(labels, FLAIR_2D, {}).iloc[0]
    assert row.volume_ml == pytest.approx(sphere_volume_ml(9.0), rel=0.03)
    assert row.surface_area_mm2 == pytest.approx(4 * math.pi * 81.0, rel=0.05)
    assert row.sphericity == pytest.approx(1.0, abs=0.06)
    assert row.elongation == pytest.approx(1.0, abs=0.06)  # 0.96: 3 mm slices


@pytest.mark.parametrize(("semi_axes", "elongation", "flatness"), [
    ((8.0, 4.0, 4.0), 0.5, 0.5),
    ((8.0, 4.0, 2.0), 0.5, 0.25),
])
def test_ellipsoid_elongation_and_flatness(semi_axes: tuple[float, float, float],
                                           elongation: float, flatness: float) -> None:
    # Rotated 30 degrees about z so the axes are not the grid's.
    c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    labels = _ellipsoid((40, 40, 40), FINE, semi_axes, rot)
    row = lesion_features(labels, FINE, {}).iloc[0]
    assert row.elongation == pytest.approx(elongation, abs=0.02)
    assert row.flatness == pytest.approx(flatness, abs=0.02)
    assert row.major_axis_mm == pytest.approx(2 * semi_axes[0], rel=0.02)
    assert row.least_axis_mm == pytest.approx(2 * semi_axes[2], rel=0.05)
    assert row.sphericity < 0.95


def test_single_voxel_lesion() -> None:
    labels = np.zeros((5, 5, 5), np.int32)
    labels[2, 2, 2] = 3
    aff = anisotropic_affine((1.0, 1.0, 3.0))
    image = np.full((5, 5, 5), 7.0)
    row = lesion_features(labels, aff, {"FLAIR": image}).iloc[0]
    assert row.lesion_id == 3 and row.n_voxels == 1
    assert row.volume_ml == pytest.approx(0.003)
    assert row.surface_area_mm2 == pytest.approx(surface_area_mm2(labels > 0, aff))
    assert 0.0 < row.surface_area_mm2 < 2 * 1.0 + 4 * 3.0  # below the voxel's own faces
    assert row.elongation == pytest.approx(1 / 3)
    assert row.FLAIR_mean == 7.0 and row.FLAIR_sd == 0.0 and row.FLAIR_entropy == 0.0
    assert math.isnan(row.FLAIR_skewness)
    assert all(math.isnan(row[f"FLAIR_glcm_{f}"]) for f in GLCM_FEATURES)


def test_empty_mask_gives_empty_table_with_all_columns() -> None:
    table = lesion_features(np.zeros((6, 6, 6), np.int32), np.eye(4),
                            {"FLAIR": np.zeros((6, 6, 6)), "T1w": np.zeros((6, 6, 6))})
    assert table.empty
    assert tuple(table.columns) == feature_columns(["FLAIR", "T1w"])
    assert table.lesion_id.dtype == np.int64


def test_two_lesions_sorted_with_image_statistics() -> None:
    aff = anisotropic_affine((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    labels = np.zeros((20, 20, 20), np.int32)
    labels[2:6, 2:6, 2:6] = 8
    labels[10:13, 10:14, 10:15] = 2
    rng = np.random.default_rng(0)
    flair = rng.normal(100.0, 10.0, labels.shape)
    table = lesion_features(labels, aff, {"FLAIR": flair, "T1w": -flair})
    assert table.lesion_id.tolist() == [2, 8]
    assert tuple(table.columns) == feature_columns(["FLAIR", "T1w"])
    vals = flair[labels == 8]
    row = table.set_index("lesion_id").loc[8]
    assert row.n_voxels == 64
    assert row.FLAIR_mean == pytest.approx(vals.mean())
    assert row.FLAIR_sd == pytest.approx(vals.std())
    assert row.FLAIR_p90 == pytest.approx(np.percentile(vals, 90))
    assert row.T1w_max == pytest.approx(-vals.min())
    assert row.T1w_skewness == pytest.approx(-row.FLAIR_skewness)
    assert (row.centroid_x_mm, row.centroid_y_mm, row.centroid_z_mm) == (3.5, 3.5, 3.5)


def test_first_order_of_known_values() -> None:
    stats = first_order(np.array([1.0, 2.0, 3.0, 4.0, 100.0]))
    assert tuple(stats) == FIRST_ORDER
    assert stats["skewness"] > 1.0 and stats["kurtosis"] > 2.0
    normal = first_order(np.random.default_rng(1).normal(size=200_000))
    assert normal["kurtosis"] == pytest.approx(3.0, abs=0.05)  # not excess kurtosis
    assert normal["skewness"] == pytest.approx(0.0, abs=0.02)
    assert normal["entropy"] <= math.log2(32)
    assert all(math.isnan(v) for v in first_order(np.array([])).values())


def test_glcm_of_constant_and_striped_boxes() -> None:
    inside = np.ones((4, 4, 4), bool)
    flat = glcm_features(np.full((4, 4, 4), 5.0), inside)
    assert flat == {"contrast": 0.0, "homogeneity": 1.0, "energy": 1.0, "correlation": 1.0}
    stripes = np.zeros((4, 4, 4))
    stripes[1::2] = 1.0
    striped = glcm_features(stripes, inside, levels=2)
    # Directions with an x step (9 of 13) pair levels 0 and 1 only: contrast 1 each.
    assert striped["contrast"] == pytest.approx(9 / 13)
    assert -1.0 <= striped["correlation"] <= 1.0
    with pytest.raises(ValueError, match="same shape"):
        glcm_features(stripes, inside[:2])
    with pytest.raises(ValueError, match="levels"):
        glcm_features(stripes, inside, levels=1)


def test_surface_area_and_axes_helpers() -> None:
    # Grid-aligned flat faces come out about 10 % low (documented bias of 13 directions).
    cube = np.ones((20, 20, 20), bool)
    assert surface_area_mm2(cube, np.eye(4)) == pytest.approx(2400.0, rel=0.12)
    # The area does not depend on where the mask sits or on padding.
    padded = np.pad(cube, 3)
    assert surface_area_mm2(padded, np.eye(4)) == pytest.approx(surface_area_mm2(cube, np.eye(4)))
    # Scaling the voxels by 2 scales the area by 4.
    assert surface_area_mm2(cube, np.diag([2.0, 2.0, 2.0, 1.0])) == pytest.approx(
        4 * surface_area_mm2(cube, np.eye(4)))
    assert surface_area_mm2(np.zeros((3, 3, 3), bool), np.eye(4)) == 0.0
    with pytest.raises(ValueError, match="ijk"):
        principal_axes_mm(np.zeros((0, 3)), np.eye(4))


@pytest.mark.parametrize(("labels", "affine", "images", "error", "match"), [
    (np.zeros((4, 4, 4), np.float32), np.eye(4), {}, TypeError, "integer"),
    (np.zeros((4, 4), np.int32), np.eye(4), {}, ValueError, "3D"),
    (np.full((4, 4, 4), -2, np.int32), np.eye(4), {}, ValueError, "-2"),
    (np.zeros((4, 4, 4), np.int32), np.eye(3), {}, ValueError, r"\(4, 4\)"),
    (np.zeros((4, 4, 4), np.int32), np.eye(4), {"FLAIR": np.zeros((4, 4, 5))}, ValueError,
     r"FLAIR.*\(4, 4, 5\)"),
    (np.zeros((4, 4, 4), np.int32), np.eye(4), {"": np.zeros((4, 4, 4))}, ValueError, "names"),
])
def test_bad_input_is_rejected(labels: np.ndarray, affine: np.ndarray,
                               images: dict[str, np.ndarray], error: type[Exception],
                               match: str) -> None:
    with pytest.raises(error, match=match):
        lesion_features(labels, affine, images)
