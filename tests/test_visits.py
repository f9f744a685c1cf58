"""Tests for ms_core.lesions.visits: visit summary, image geometry, lesion overlay, truth table."""

from __future__ import annotations

import datetime as dt
import gzip
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ms_core.foundation.domain import LesionMask, Visit
from ms_core.foundation.errors import NiftiError
from ms_core.foundation.io import save_volume
from ms_core.lesions.visits import (
    LESION_COLUMNS,
    LesionTotals,
    binary_overlay_bytes,
    image_geometry,
    lesion_totals,
    overlay_caption,
    read_geometry,
    summarize_visit,
    truth_lesion_table,
)
from ms_core.synthetic.synth import anisotropic_affine, sphere_labels


def _visit(**changes: object) -> Visit:
    values: dict[str, object] = {
        "participant_id": "sub-01", "session_id": "ses-02", "acq_date": dt.date(2021, 3, 4),
        "edss": 2.5, "relapses_since_last": 1, "dmt": "anti-CD20",
        "scanner": "SiteB Philips Ingenia 3T", "field_strength_t": 3.0,
    }
    values.update(changes)
    return Visit(**values)  # type: ignore[arg-type]


def _decode(payload: bytes) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(payload))


# ----------------------------------------------------------------------------- geometry
def test_geometry_of_anisotropic_ras_affine() -> None:
    g = image_geometry("FLAIR", (20, 30, 10), anisotropic_affine((0.9, 1.1, 3.0)))
    assert g.shape == (20, 30, 10)
    assert g.spacing_mm == (0.9, 1.1, 3.0)
    assert g.orientation == "RAS"


def test_geometry_of_permuted_axes_names_each_axis() -> None:
    # Axis 0 runs Anterior, axis 1 Superior, axis 2 to the Left (a sagittal T1, as in the demo).
    affine = np.array([[0, 0, -1.2, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])
    g = image_geometry("T1w", (8, 9, 7), affine)
    assert g.orientation == "ASL"
    assert g.spacing_mm == (1.0, 1.0, 1.2)


def test_geometry_drops_singleton_fourth_axis_and_rejects_2d() -> None:
    assert image_geometry("FLAIR", (4, 5, 6, 1), np.eye(4)).shape == (4, 5, 6)
    with pytest.raises(ValueError, match="3D"):
        image_geometry("FLAIR", (4, 5), np.eye(4))


def test_geometry_rejects_bad_affine() -> None:
    with pytest.raises(ValueError, match=r"\(4, 4\)"):
        image_geometry("FLAIR", (4, 5, 6), np.eye(3))


def test_read_geometry_reads_header(tmp_path: Path) -> None:
    path = tmp_path / "flair.nii.gz"
    save_volume(path, np.zeros((6, 7, 8), np.float32), anisotropic_affine(), np.int16)
    g = read_geometry(path, "FLAIR")
    assert (g.shape, g.spacing_mm, g.orientation) == ((6, 7, 8), (0.9, 1.1, 3.0), "RAS")


def test_read_geometry_of_truncated_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "sub-01_ses-01_FLAIR.nii.gz"
    save_volume(path, np.ones((6, 7, 8), np.float32), np.eye(4))
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(NiftiError, match=re.escape(path.name)):
        read_geometry(path, "FLAIR")


# ----------------------------------------------------------------------------- summary
def test_summary_lists_clinical_facts_and_geometry() -> None:
    g = image_geometry("FLAIR", (20, 30, 10), anisotropic_affine((0.9, 1.1, 3.0)))
    rows = summarize_visit(_visit(), {"FLAIR": g}).as_dict()
    assert rows["Date"] == "2021-03-04"
    assert rows["EDSS"] == "2.5"
    assert rows["Relapses since last visit"] == "1"
    assert rows["DMT"] == "anti-CD20"
    assert rows["Scanner"] == "SiteB Philips Ingenia 3T"
    assert rows["Field strength"] == "3 T"
    assert rows["FLAIR shape (voxels)"] == "20 × 30 × 10"
    assert rows["FLAIR voxel size (mm)"] == "0.9 × 1.1 × 3"
    assert rows["FLAIR orientation"] == "RAS"


def test_summary_of_missing_values_reads_na() -> None:
    visit = _visit(edss=None, relapses_since_last=None, dmt=None, scanner=None,
                   field_strength_t=None)
    rows = summarize_visit(visit).as_dict()
    for label in ("EDSS", "Relapses since last visit", "DMT", "Scanner", "Field strength"):
        assert rows[label] == "n/a"
    assert not any("shape" in k for k in rows)


def test_summary_marks_unreadable_images() -> None:
    summary = summarize_visit(_visit(), {"FLAIR": None})
    assert summary.unreadable == ("FLAIR",)
    assert summary.as_dict()["FLAIR image"] == "unreadable"
    frame = summary.as_frame()
    assert frame.columns.tolist() == ["field", "value"]
    assert len(frame) == len(summary.as_dict())


# ----------------------------------------------------------------------------- overlay
def test_overlay_is_binary_uint8_on_the_mask_grid() -> None:
    affine = anisotropic_affine()
    labels = sphere_labels((30, 30, 12), affine, [((-27.0, -34.0, -12.0), 4.0),
                                                 ((-20.0, -30.0, -9.0), 3.0)])
    labels[labels == 2] = 7  # lesion ids need not be consecutive
    img = _decode(binary_overlay_bytes(LesionMask(labels, affine)))
    data = np.asarray(img.dataobj)
    assert data.dtype == np.uint8
    assert set(np.unique(data).tolist()) == {0, 1}
    assert np.array_equal(data > 0, labels > 0)
    assert np.allclose(img.affine, affine)


def test_overlay_of_empty_mask_is_all_zero() -> None:
    img = _decode(binary_overlay_bytes(LesionMask(np.zeros((4, 5, 6), np.int32), np.eye(4))))
    assert not np.asarray(img.dataobj).any()


def test_overlay_of_single_voxel() -> None:
    labels = np.zeros((4, 5, 6), np.int32)
    labels[1, 2, 3] = 200
    data = np.asarray(_decode(binary_overlay_bytes(LesionMask(labels, np.eye(4)))).dataobj)
    assert data.sum() == 1 and data[1, 2, 3] == 1


def test_overlay_caption_says_where_the_mask_comes_from() -> None:
    assert "segmentation" in overlay_caption("segmentation", Path("a/lesion_mask.nii.gz"))
    truth = overlay_caption("ground truth", Path("a/lesion_labels.nii.gz"))
    assert "ground truth" in truth and "lesion_labels.nii.gz" in truth
    with pytest.raises(ValueError, match="Unknown overlay source"):
        overlay_caption("atlas", "x.nii.gz")


# ----------------------------------------------------------------------------- truth table
def test_truth_table_columns_order_and_totals() -> None:
    truth = {"lesions": [
        {"lesion_id": 3, "location": "juxtacortical", "status": "new", "volume_ml": 0.2,
         "centroid_mm": [0, 0, 0]},
        {"lesion_id": 1, "location": "periventricular", "status": "enlarging",
         "volume_ml": 0.5},
        {"lesion_id": 2, "location": "infratentorial", "status": "stable", "volume_ml": 0.25},
        {"lesion_id": 4, "location": "periventricular", "status": "disappeared",
         "volume_ml": 0.0},
    ]}
    table = truth_lesion_table(truth)
    assert table.columns.tolist() == list(LESION_COLUMNS)
    assert table["lesion_id"].tolist() == [1, 2, 3, 4]
    # 0.5 + 0.25 + 0.2 present; the disappeared lesion does not count.
    assert lesion_totals(table) == LesionTotals(n_lesions=3, volume_ml=0.95,
                                                n_new_or_enlarging=2)


def test_truth_table_without_lesions_is_empty_with_columns() -> None:
    truths: list[dict[str, list[object]]] = [{}, {"lesions": []}]
    for truth in truths:
        table = truth_lesion_table(truth)
        assert table.empty and table.columns.tolist() == list(LESION_COLUMNS)
        assert lesion_totals(table) == LesionTotals(0, 0.0, 0)


def test_truth_table_rejects_non_list_lesions() -> None:
    with pytest.raises(ValueError, match="must be a list"):
        truth_lesion_table({"lesions": {"1": {}}})


def test_truth_table_keeps_missing_volume_as_nan() -> None:
    table = truth_lesion_table({"lesions": [{"lesion_id": 1, "status": "new"}]})
    assert pd.isna(table.loc[0, "volume_ml"]) and pd.isna(table.loc[0, "location"])
    assert lesion_totals(table) == LesionTotals(1, 0.0, 1)
