"""Fine-tuning on a study's own expert masks (issue 33): a few steps on the small synthetic
study, whose ground truth is copied into the expert-mask layout, then the export loads and
segments; and the refusals for masks that cannot be used."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ms_core.foundation.errors import InputError
from ms_core.study.derivatives import truth_dir
from ms_core.study.layout import load_study
from tests.conftest import copy_study

SHARED_MNI = Path(__file__).resolve().parents[2] / "shared/data/open_ms_data/cross_sectional/MNI"

pytest.importorskip("torch")
from training.seg import finetune  # noqa: E402  (after the torch check)


def _with_masks(study: Path, visits: list[tuple[str, str]]) -> Path:
    """Copy each visit's ground truth into derivatives/manual_masks as an expert mask."""
    for pid, sid in visits:
        target = finetune.mask_path(study / finetune.DEFAULT_MASKS, pid, sid)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(truth_dir(study, pid, sid) / "lesion_labels.nii.gz", target)
    return study


@pytest.fixture()
def study(small_study: Path, tmp_path: Path) -> Path:
    root = copy_study(small_study, tmp_path / "study")
    visits = load_study(root).visits
    first = [(pid, v[0].session_id) for pid, v in visits.items()]
    return _with_masks(root, [*first, ("sub-01", visits["sub-01"][1].session_id)])


def test_split_is_by_patient_and_seeded() -> None:
    patients = [f"sub-{i:02d}" for i in range(1, 9)]
    train, val = finetune.split_patients(patients, seed=3)
    assert len(val) == 2 and not set(train) & set(val) and sorted(train + val) == patients
    assert finetune.split_patients(patients, seed=3) == (train, val)
    assert finetune.split_patients(patients, seed=4) != (train, val)
    with pytest.raises(ValueError, match="no expert mask"):
        finetune.split_patients(patients, seed=0, val=["sub-99"])
    with pytest.raises(ValueError, match="keep one to train on"):
        finetune.split_patients(["a", "b"], seed=0, val=["a", "b"])


def test_masks_that_cannot_be_used_are_refused_by_name(small_study: Path,
                                                       tmp_path: Path) -> None:
    root = copy_study(small_study, tmp_path / "study")
    masks = root / finetune.DEFAULT_MASKS
    with pytest.raises(InputError, match=r"no expert mask found.*desc-lesion_mask"):
        finetune.labelled_visits(root, masks)
    sid = load_study(root).visits["sub-01"][0].session_id
    _with_masks(root, [("sub-01", sid)])
    with pytest.raises(InputError, match=r"1 patient\(s\) \(sub-01\).*at least two"):
        finetune.labelled_visits(root, masks)
    other = load_study(root).visits["sub-02"][0].session_id
    _with_masks(root, [("sub-02", other)])
    assert len(finetune.labelled_visits(root, masks)) == 2
    # A mask cut to another shape, then one shifted by 2 mm, is not on its FLAIR's grid.
    path = finetune.mask_path(masks, "sub-02", other)
    img = nib.load(path)
    data = np.asarray(img.dataobj)
    nib.save(nib.Nifti1Image(data[:-1], img.affine), path)
    with pytest.raises(InputError, match=r"sub-02_.*desc-lesion_mask.*not on its FLAIR's grid"):
        finetune.labelled_visits(root, masks)
    shifted = img.affine.copy()
    shifted[0, 3] += 2.0
    nib.save(nib.Nifti1Image(data, shifted), path)
    with pytest.raises(InputError, match=r"affine differs.*by up to 2 mm"):
        finetune.labelled_visits(root, masks)


@pytest.mark.skipif(not SHARED_MNI.is_dir(), reason="../shared (open_ms_data) not present")
def test_a_few_steps_lower_the_loss_and_export_a_model_that_segments(study: Path,
                                                                     tmp_path: Path) -> None:
    out = tmp_path / "site_models"
    code = finetune.main(["--study", str(study), "--out", str(out), "--steps", "12",
                          "--lr", "1e-3", "--seed", "1", "--synthetic-fraction", "0.25",
                          "--val-participants", "sub-02", "--bn-batches", "4",
                          "--threads", "2"])
    assert code == 0
    report = json.loads((out / "finetune_report.json").read_text())
    assert report["train_participants"] == ["sub-01"] and report["val_participants"] == ["sub-02"]
    assert report["train_visits"] == 2 and report["val_visits"] == 1
    assert report["held_loss_after"] < report["held_loss_before"]
    from ms_core.segmentation.model_store import load_segmentation_card

    card = load_segmentation_card(out)  # sha256 checked against manifest and card
    assert card.version.endswith("-ft.1")
    assert not card.uses_t1  # FLAIR only, as the shipped model it started from
    raw = card.raw
    assert raw["training"]["finetune"]["val_participants"] == ["sub-02"]
    assert "fine-tuned on the expert masks" in raw["training"]["data"]
    (key,) = report["after"]
    assert key.startswith("sub-02/") and set(report["before"]) == {key}
    after = raw["evaluation"]["site_validation"]["after"][key]
    assert after == report["after"][key] and after["true_ml"] > 0
    assert 0.0 <= after["dice"] <= 1.0 and after["pred_ml"] > 0
