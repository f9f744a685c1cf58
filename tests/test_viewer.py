"""The viewer's data: live lesion preview, status colours, click lookup, linked crosshairs and
compact display copies (ms_core/services/viewer.py, ui_viewer.viewer_spec)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ms_core.foundation.io import nifti_bytes
from ms_core.imaging.preprocess import Grid
from ms_core.lesions.components import lesion_table, threshold_probability
from ms_core.services.viewer import (
    STATUS_STYLES,
    UNCLASSIFIED,
    image_viewer_bytes,
    label_lut,
    labels_viewer_bytes,
    lesion_at,
    link_transforms,
    preview_lesions,
    status_labels,
    status_labels_at_baseline,
)

AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])
AFFINE[:3, 3] = [-20.0, -30.0, -10.0]


def _ball(shape: tuple[int, int, int], centre: tuple[int, int, int], r: float,
          peak: float) -> np.ndarray:
    grid = np.indices(shape).astype(float)
    d2 = sum((grid[i] - c) ** 2 for i, c in enumerate(centre))
    return np.asarray(peak * np.exp(-d2 / (2 * r * r)), np.float32)


@pytest.fixture()
def prob() -> np.ndarray:
    shape = (40, 40, 20)
    return np.maximum.reduce([
        _ball(shape, (10, 10, 10), 2.5, 0.95),   # large, clear
        _ball(shape, (30, 30, 10), 1.2, 0.9),    # small
        _ball(shape, (10, 30, 5), 2.0, 0.4),     # faint: below 0.5, above 0.3
    ])


def _stored(prob: np.ndarray, threshold: float = 0.5, min_mm3: float = 10.0
            ) -> tuple[np.ndarray, pd.DataFrame]:
    labels = threshold_probability(prob, affine=AFFINE, threshold=threshold,
                                   min_lesion_mm3=min_mm3)
    table = lesion_table(labels, affine=AFFINE, prob=prob)
    table["location"] = [f"zone_{i}" for i in table.lesion_id]
    return (labels > 0).astype(np.uint8), table


def test_preview_at_the_stored_settings_reproduces_the_stored_table(prob: np.ndarray) -> None:
    mask, stored = _stored(prob)
    found = preview_lesions(prob, AFFINE, threshold=0.5, min_lesion_mm3=10.0,
                            stored_mask=mask, stored_table=stored)
    pd.testing.assert_frame_equal(found.table, stored)
    full = np.zeros(mask.shape, np.int32)  # the labels cover the box around the lesions
    box = tuple(slice(o, o + n) for o, n in zip(found.offset, found.labels.shape, strict=True))
    full[box] = found.labels
    assert np.array_equal(full > 0, mask > 0)
    assert found.labels.size < mask.size
    assert np.allclose(found.affine[:3, 3], (AFFINE @ np.array([*found.offset, 1.0]))[:3])


def test_preview_follows_threshold_and_size_and_carries_locations(prob: np.ndarray) -> None:
    mask, stored = _stored(prob)
    lower = preview_lesions(prob, AFFINE, threshold=0.3, min_lesion_mm3=10.0,
                            stored_mask=mask, stored_table=stored)
    assert len(lower.table) == len(stored) + 1                  # the faint lesion appears
    assert lower.table.volume_ml.sum() > stored.volume_ml.sum()  # and the others grow
    assert sorted(lower.table.location) == sorted([*stored.location, UNCLASSIFIED])
    bigger = preview_lesions(prob, AFFINE, threshold=0.5, min_lesion_mm3=60.0,
                             stored_mask=mask, stored_table=stored)
    assert len(bigger.table) == len(stored) - 1                 # the small lesion is dropped
    kept = stored.loc[stored.volume_ml.idxmax()]
    assert bigger.table.location.tolist() == [kept.location]
    assert bigger.table.volume_ml.iloc[0] == pytest.approx(kept.volume_ml)
    with pytest.raises(ValueError, match="threshold"):
        preview_lesions(prob, AFFINE, threshold=0.0, min_lesion_mm3=0.0)


def test_status_labels_colour_each_lesion_by_its_status() -> None:
    ids = np.zeros((6, 6, 6), np.int32)
    ids[0, 0, 0], ids[1, 1, 1], ids[2, 2, 2], ids[3, 3, 3] = 1, 2, 3, 7
    changes = pd.DataFrame({"lesion_id": [1, 2, 3], "status": ["new", "stable", "disappeared"]})
    codes = {s.name: s.code for s in STATUS_STYLES}
    out = status_labels(ids, changes)
    assert out.dtype == np.uint8
    assert (out[0, 0, 0], out[1, 1, 1], out[2, 2, 2]) == (
        codes["new"], codes["stable"], codes["disappeared"])
    assert out[3, 3, 3] == 0 and int((out > 0).sum()) == 3     # id 7 is not in the table
    with pytest.raises(ValueError, match="unknown lesion status"):
        status_labels(ids, pd.DataFrame({"lesion_id": [1], "status": ["growing"]}))


def test_status_colours_at_baseline_follow_the_registration_and_leave_out_what_is_new() -> None:
    codes = {s.name: s.code for s in STATUS_STYLES}
    shape = (30, 30, 20)
    status = np.zeros(shape, np.uint8)
    change = np.zeros(shape, np.uint8)
    blocks = {"stable": (5, 5, 5), "new": (15, 5, 5), "disappeared": (5, 15, 5),
              "enlarging": (15, 15, 10)}
    for name, (x, y, z) in blocks.items():
        status[x:x + 4, y:y + 4, z:z + 4] = codes[name]
    change[5:9, 15:19, 5:9] = 2        # the disappeared lesion's tissue went away
    change[15:19, 15:19, 12:14] = 1    # the enlarging lesion grew at its top two slices
    change[15:19, 5:9, 5:9] = 1        # the new lesion's tissue appeared
    followup_affine = np.diag([1.0, 1.0, 2.0, 1.0])
    followup_affine[:3, 3] = [-15.0, -15.0, -20.0]
    f2b = np.eye(4)
    f2b[:3, 3] = [4.0, -2.0, 6.0]      # follow-up world mm -> baseline world mm
    baseline_affine = np.diag([0.5, 0.5, 1.0, 1.0])
    baseline_affine[:3, 3] = [-12.1, -20.1, -18.3]  # no baseline voxel maps onto a half voxel
    grid = Grid((80, 80, 50), baseline_affine)

    out = status_labels_at_baseline(status, change, followup_affine, f2b, grid)
    assert out.shape == grid.shape and out.dtype == np.uint8
    to_baseline_voxel = np.linalg.inv(baseline_affine) @ f2b @ followup_affine

    def at(v: tuple[float, float, float]) -> int:
        i, j, k = np.rint(to_baseline_voxel @ np.array([*v, 1.0]))[:3].astype(int)
        return int(out[i, j, k])

    assert at((6.5, 6.5, 6.5)) == codes["stable"]
    assert at((6.5, 16.5, 6.5)) == codes["disappeared"]
    assert at((16.5, 16.5, 10.5)) == codes["enlarging"]   # the part that was there
    assert at((16.5, 16.5, 12.5)) == 0                    # the tissue that appeared
    assert at((16.5, 6.5, 6.5)) == 0                      # a new lesion was not there yet
    assert codes["new"] not in np.unique(out)
    # every coloured voxel maps back onto a follow-up voxel of the same status
    back = np.linalg.inv(to_baseline_voxel)
    ijk = np.argwhere(out > 0)
    src = np.rint((back @ np.c_[ijk, np.ones(len(ijk))].T)[:3].T).astype(int)
    assert np.array_equal(status[tuple(src.T)], out[tuple(ijk.T)])
    with pytest.raises(ValueError, match="differ in shape"):
        status_labels_at_baseline(status, change[:-1], followup_affine, f2b, grid)
    with pytest.raises(ValueError, match="4x4"):
        status_labels_at_baseline(status, change, followup_affine, np.eye(3), grid)


def test_label_lut_gives_each_code_its_colour_and_keeps_zero_transparent() -> None:
    lut = label_lut(STATUS_STYLES)
    assert lut["I"] == list(range(len(STATUS_STYLES) + 1))
    assert lut["A"][0] == 0 and all(a == 255 for a in lut["A"][1:])
    new = STATUS_STYLES[0]
    assert (lut["R"][new.code], lut["G"][new.code], lut["B"][new.code]) == new.rgb
    assert lut["labels"][new.code] == "new"
    json.dumps(lut)  # goes to the browser as JSON


def test_lesion_at_finds_the_clicked_lesion(prob: np.ndarray) -> None:
    labels = threshold_probability(prob, affine=AFFINE, threshold=0.5)
    table = lesion_table(labels, affine=AFFINE)
    for row in table.itertuples():
        mm = (row.centroid_x_mm, row.centroid_y_mm, row.centroid_z_mm)
        assert lesion_at(labels, AFFINE, mm) == row.lesion_id
    world = AFFINE @ np.array([0, 0, 0, 1.0])
    assert lesion_at(labels, AFFINE, tuple(world[:3])) is None          # background
    assert lesion_at(labels, AFFINE, (1e4, 0.0, 0.0)) is None          # outside the image
    edge = np.zeros_like(labels)
    edge[5, 5, 5] = 4
    near = AFFINE @ np.array([6, 5, 5, 1.0])                            # one voxel off
    assert lesion_at(edge, AFFINE, tuple(near[:3])) == 4
    assert lesion_at(edge, AFFINE, tuple(near[:3]), radius_vox=0) is None


def test_link_transforms_are_inverse_and_refuse_bad_matrices() -> None:
    f2b = np.eye(4)
    f2b[:3, 3] = [3.0, -2.0, 1.0]
    b2f, back = link_transforms(f2b)
    assert np.allclose(b2f @ back, np.eye(4))
    point = np.array([10.0, 20.0, 30.0, 1.0])
    assert np.allclose(b2f @ (f2b @ point), point)
    assert np.array_equal(link_transforms(None)[0], np.eye(4))
    with pytest.raises(ValueError, match="4x4"):
        link_transforms(np.full((4, 4), np.nan))


def test_display_copy_is_small_cropped_uint8_and_stays_in_place(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = np.zeros((60, 70, 40), np.float32)
    data[15:45, 20:50, 10:30] = rng.uniform(200, 1000, (30, 30, 20))
    affine = np.diag([0.9, 0.9, 3.0, 1.0])
    affine[:3, 3] = [-27.0, -31.5, -60.0]
    path = tmp_path / "flair.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    blob = image_viewer_bytes(path, "FLAIR", margin_vox=2)
    img = nib.Nifti1Image.from_bytes(gzip.decompress(blob))
    assert img.get_data_dtype() == np.uint8
    assert img.shape == (34, 34, 24)
    out = np.asarray(img.dataobj)
    # The same world point holds the same (rescaled) intensity.
    src_vox = np.array([20, 25, 12])
    world = affine @ np.array([*src_vox, 1.0])
    out_vox = np.rint(np.linalg.inv(img.affine) @ world)[:3].astype(int)
    top = np.percentile(data[13:47, 18:52, 8:32][::2, ::2, ::2], 99.9)
    assert out[tuple(out_vox)] == round(min(data[tuple(src_vox)] / top, 1.0) * 255)
    assert len(blob) < 0.5 * len(nifti_bytes(data, affine, np.int16))


def test_coarse_display_copy_keeps_world_coordinates(tmp_path: Path) -> None:
    data = np.random.default_rng(1).uniform(100, 900, (40, 44, 30)).astype(np.float32)
    affine = np.diag([1.0, 1.0, 1.5, 1.0])
    affine[:3, 3] = [-20.0, -22.0, -20.0]
    path = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    full = nib.Nifti1Image.from_bytes(gzip.decompress(image_viewer_bytes(path, "T1w")))
    coarse = nib.Nifti1Image.from_bytes(gzip.decompress(
        image_viewer_bytes(path, "T1w", step=2)))
    assert coarse.shape == tuple((n + 1) // 2 for n in full.shape)
    assert np.allclose(np.diag(coarse.affine)[:3], 2 * np.diag(full.affine)[:3])
    # coarse voxel (i, j, k) is full voxel (2i, 2j, 2k): same place, same value
    assert np.allclose(coarse.affine @ [3, 4, 5, 1], full.affine @ [6, 8, 10, 1])
    assert np.asarray(coarse.dataobj)[3, 4, 5] == np.asarray(full.dataobj)[6, 8, 10]
    with pytest.raises(ValueError, match="step"):
        image_viewer_bytes(path, "T1w", step=0)


def test_labels_viewer_bytes_refuse_codes_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match="0-255"):
        labels_viewer_bytes(np.full((2, 2, 2), 300), np.eye(4))
