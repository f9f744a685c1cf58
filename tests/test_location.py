"""Tests for ms_core.lesions.location: MNI zones, the per-lesion rule and the demo-study accuracy.

Reference points are MNI152 2009a (nilearn) millimetres read off the template: the roof of the
left lateral ventricle body, the centrum semiovale, subcortical white matter of the precentral
gyrus, a cerebellar hemisphere and the pons.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ms_core.imaging.preprocess import Grid
from ms_core.lesions.location import (
    LOCATIONS,
    MIN_ZONE_SHARE,
    ZONES,
    classify_lesions,
    classify_shares,
    location_counts,
    location_zones,
    mni_zones,
    zone_shares,
)
from ms_core.synthetic.synth import anisotropic_affine, sphere_labels

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo"

PONS = (0.0, -28.0, -32.0)
CEREBELLUM = (20.0, -60.0, -30.0)
REFERENCE_POINTS = [
    ((-18.0, -5.0, 26.0), "periventricular"),
    ((24.0, -40.0, 18.0), "periventricular"),
    ((-26.0, -10.0, 38.0), "deep_white_matter"),
    ((26.0, -30.0, 30.0), "deep_white_matter"),
    ((-40.0, -20.0, 50.0), "juxtacortical"),
    ((42.0, -10.0, 48.0), "juxtacortical"),
    (CEREBELLUM, "infratentorial"),
    (PONS, "infratentorial"),
]


def _ball(centre_mm: tuple[float, float, float], radius_mm: float = 2.5,
          spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0), label: int = 1
          ) -> tuple[np.ndarray, np.ndarray]:
    """A ball of ``radius_mm`` on a small grid centred on ``centre_mm``: (labels, affine)."""
    half = np.ceil((radius_mm + 2.0) / np.asarray(spacing_mm)).astype(int)
    shape = (int(2 * half[0] + 1), int(2 * half[1] + 1), int(2 * half[2] + 1))
    origin = np.asarray(centre_mm) - half * np.asarray(spacing_mm)
    aff = anisotropic_affine(spacing_mm, (float(origin[0]), float(origin[1]), float(origin[2])))
    labels = sphere_labels(shape, aff, [(centre_mm, radius_mm)]) * label
    return labels.astype(np.int32), aff


def _translation(t: tuple[float, float, float]) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = t
    return m


@pytest.mark.parametrize(("centre", "expected"), REFERENCE_POINTS)
def test_reference_lesions_on_mni_grid_with_identity_transform(
        centre: tuple[float, float, float], expected: str) -> None:
    labels, aff = _ball(centre)
    assert classify_lesions(labels, aff, np.eye(4)) == {1: expected}


def test_anisotropic_grid_and_translated_subject_keep_the_class() -> None:
    # A 2D-FLAIR-like grid (0.9 x 1.1 x 3 mm); the subject sits 60 mm above MNI space.
    shift = (15.0, -4.0, -60.0)
    subject_centre = tuple(c - s for c, s in zip(CEREBELLUM, shift, strict=True))
    labels, aff = _ball(subject_centre, radius_mm=3.5, spacing_mm=(0.9, 1.1, 3.0), label=7)
    assert classify_lesions(labels, aff, _translation(shift)) == {7: "infratentorial"}
    # Without the transform the same voxels fall elsewhere (not below the tentorium).
    assert classify_lesions(labels, aff, np.eye(4))[7] != "infratentorial"


def test_several_lesions_keep_their_ids_sorted() -> None:
    aff = anisotropic_affine((1.0, 1.0, 1.0), (-60.0, -80.0, -50.0))
    labels = sphere_labels((100, 110, 110), aff, [(PONS, 2.5), ((-40.0, -20.0, 50.0), 2.5)])
    labels = np.where(labels == 1, 9, np.where(labels == 2, 3, 0)).astype(np.int16)
    assert classify_lesions(labels, aff, np.eye(4)) == {3: "juxtacortical", 9: "infratentorial"}


def test_empty_mask_gives_no_lesions() -> None:
    labels, aff = _ball(PONS)
    assert classify_lesions(np.zeros_like(labels), aff, np.eye(4)) == {}
    assert zone_shares(np.zeros_like(labels), aff, np.eye(4)) == {}


def test_single_voxel_lesion() -> None:
    labels, aff = _ball(PONS)
    one = np.zeros_like(labels)
    one[tuple(s // 2 for s in one.shape)] = 5
    assert classify_lesions(one, aff, np.eye(4)) == {5: "infratentorial"}
    assert zone_shares(one, aff, np.eye(4))[5]["infratentorial"] == 1.0


def test_lesion_outside_the_template_is_deep_white_matter() -> None:
    labels, aff = _ball((0.0, 0.0, 400.0))
    assert classify_lesions(labels, aff, np.eye(4)) == {1: "deep_white_matter"}


@pytest.mark.parametrize(("labels", "error"), [
    (np.zeros((4, 4, 4), np.float32), TypeError),
    (np.zeros((4, 4), np.int32), ValueError),
    (np.full((4, 4, 4), -1, np.int32), ValueError),
])
def test_bad_labels_are_rejected(labels: np.ndarray, error: type[Exception]) -> None:
    with pytest.raises(error):
        classify_lesions(labels, np.eye(4), np.eye(4))


def test_bad_affine_or_transform_is_rejected() -> None:
    labels = np.zeros((4, 4, 4), np.int32)
    with pytest.raises(ValueError, match=r"\(4, 4\)"):
        classify_lesions(labels, np.eye(3), np.eye(4))
    with pytest.raises(ValueError, match="subject_to_mni"):
        classify_lesions(labels, np.eye(4), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="subject_to_mni"):
        location_zones(Grid((4, 4, 4), np.eye(4)), np.eye(3))


def test_rule_priority_and_threshold() -> None:
    assert classify_shares({"infratentorial": 0.2, "periventricular": 0.9}) == "infratentorial"
    assert classify_shares({"periventricular": 0.1, "juxtacortical": 0.9}) == "periventricular"
    assert classify_shares({"juxtacortical": MIN_ZONE_SHARE}) == "juxtacortical"
    assert classify_shares({"juxtacortical": MIN_ZONE_SHARE / 2}) == "deep_white_matter"
    assert classify_shares({}) == "deep_white_matter"
    with pytest.raises(ValueError, match="min_share"):
        classify_shares({}, min_share=0.0)


def test_zone_masks_are_consistent() -> None:
    zones = mni_zones()
    assert set(zones.masks) == set(ZONES)
    infra = zones.masks["infratentorial"]
    assert not (infra & zones.masks["periventricular"]).any()
    assert not (infra & zones.masks["juxtacortical"]).any()
    assert not (zones.cortex & zones.deep_grey).any()
    assert zones.deep_grey.sum() > 20_000  # thalami and basal ganglia, about 30 ml in the map
    with pytest.raises(ValueError, match="read-only"):
        infra[0, 0, 0] = True


def test_location_zones_on_a_template_subgrid_match_the_mni_masks() -> None:
    zones = mni_zones()
    start = np.array([60, 40, 30])
    aff = zones.affine.copy()
    aff[:3, 3] += aff[:3, :3] @ start
    grid = Grid((50, 60, 70), aff)
    warped = location_zones(grid, np.eye(4))
    assert set(warped) == set(ZONES)
    for name, mask in warped.items():
        assert mask.shape == grid.shape and mask.dtype == bool
        ref = zones.masks[name][60:110, 40:100, 30:100]
        assert np.array_equal(mask, ref), name


def test_location_counts() -> None:
    counts = location_counts({1: "periventricular", 2: "periventricular", 4: "infratentorial"})
    assert counts == {"periventricular": 2, "juxtacortical": 0, "infratentorial": 1,
                      "deep_white_matter": 0}
    assert tuple(counts) == LOCATIONS
    with pytest.raises(ValueError, match="cortical"):
        location_counts({1: "cortical"})


@pytest.mark.skipif(not (DEMO / "participants.tsv").exists(), reason="demo study not built")
def test_demo_visit_locations_match_the_ground_truth() -> None:
    # One visit (1.5 T 2D FLAIR) with the app's own registration; about 10 s.
    from ms_core.foundation.io import load_lesion_mask, load_volume, read_json
    from ms_core.imaging.preprocess import template_to_subject
    from ms_core.study.derivatives import truth_dir
    from ms_core.study.layout import image_path

    flair = load_volume(image_path(DEMO, "sub-01", "ses-01", "FLAIR"), "FLAIR")
    labels = load_lesion_mask(truth_dir(DEMO, "sub-01", "ses-01") / "lesion_labels.nii.gz")
    truth = read_json(truth_dir(DEMO, "sub-01", "ses-01") / "truth.json")
    found = classify_lesions(labels.labels, labels.affine, template_to_subject(flair))
    expected = {int(t["lesion_id"]): t["location"] for t in truth["lesions"]
                if int(t["lesion_id"]) in found}
    assert len(expected) >= 10
    accuracy = np.mean([found[lid] == loc for lid, loc in expected.items()])
    assert accuracy >= 0.85


def test_zone_masks_read_from_the_cache_equal_a_fresh_derivation(derived_map_cache: Path
                                                                  ) -> None:
    from ms_core.imaging.anatomy import load_template
    from ms_core.lesions.location import _derive_zones

    zones = mni_zones()
    assert any(derived_map_cache.glob("mni_zones-*.npz"))  # the run's cache holds them
    fresh = _derive_zones()
    for name in ZONES:
        assert np.array_equal(zones.masks[name], fresh[name]), name
    assert np.array_equal(zones.cortex, fresh["cortex"])
    assert np.array_equal(zones.deep_grey, fresh["deep_grey"])
    tpl = load_template()
    assert tpl.brain.dtype == tpl.ventricles.dtype == np.float32
    assert set(np.unique(tpl.ventricles)) == {0.0, 1.0}
