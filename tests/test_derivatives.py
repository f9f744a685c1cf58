"""The derivatives API: where results live and whether a stored record is current."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from ms_core.foundation.domain import Visit
from ms_core.foundation.io import write_json
from ms_core.study import derivatives as d


def _visit(session: str) -> Visit:
    return Visit("sub-01", session, dt.date(2020, 1, 1), None, None, None, None, None)


def test_every_stage_folder_is_under_the_patient_folder(tmp_path: Path) -> None:
    base, follow = _visit("ses-01"), _visit("ses-02")
    patient = tmp_path / "derivatives" / "ms_dash" / "sub-01"
    assert d.patient_dir(tmp_path, "sub-01") == patient
    assert d.derivatives_dir(tmp_path, "sub-01", "ses-02") == patient / "ses-02"
    assert d.tracking_dir(tmp_path, base, follow) == patient / "ses-02" / "change_from_ses-01"
    assert d.atrophy_dir(tmp_path, follow) == patient / "ses-02" / "atrophy"
    assert d.truth_dir(tmp_path, "sub-01", "ses-01") == (
        tmp_path / "derivatives" / "ground_truth" / "sub-01" / "ses-01")


def test_a_record_is_read_only_when_it_is_a_whole_json_object(tmp_path: Path) -> None:
    path = tmp_path / "provenance.json"
    assert d.read_record(path) is None  # missing
    path.write_text('{"inputs": ')  # cut short
    assert d.read_record(path) is None
    path.write_text("[1, 2]")  # not an object
    assert d.read_record(path) is None
    write_json(path, {"inputs": {}})
    assert d.read_record(path) == {"inputs": {}}


def test_inputs_are_current_while_every_file_keeps_its_bytes(tmp_path: Path) -> None:
    image, mask = tmp_path / "a.nii.gz", tmp_path / "m.nii.gz"
    image.write_bytes(b"image")
    mask.write_bytes(b"mask")
    record = {"inputs": d.input_record({"image": image, "lesion_mask": None})}
    assert set(record["inputs"]) == {"image"}  # a missing optional input is left out
    assert d.inputs_current(record, {"image": image, "lesion_mask": None})
    assert not d.inputs_current(record, {"image": image, "lesion_mask": mask})  # one more input
    image.write_bytes(b"other")
    assert not d.inputs_current(record, {"image": image, "lesion_mask": None})
    assert not d.inputs_current({"inputs": "broken"}, {"image": image})
    image.unlink()
    assert not d.inputs_current(record, {"image": image})  # unreadable: not current


def test_outputs_are_intact_only_with_their_recorded_size_and_hash(tmp_path: Path) -> None:
    names = ("lesion_mask.nii.gz", "lesions.csv")
    for name in names:
        (tmp_path / name).write_bytes(name.encode())
    record = {"outputs": d.output_record(tmp_path, names)}
    assert d.outputs_intact(tmp_path, record, names)
    assert not d.outputs_intact(tmp_path, record, (*names, "lesion_prob.nii.gz"))
    (tmp_path / "lesions.csv").write_bytes(b"lesions.csX")  # same size, other bytes
    assert not d.outputs_intact(tmp_path, record, names)
    (tmp_path / "lesions.csv").unlink()
    assert not d.outputs_intact(tmp_path, record, names)
    assert not d.outputs_intact(tmp_path, {}, names)  # an old record: the files must exist
    (tmp_path / "lesions.csv").write_bytes(b"x")
    assert d.outputs_intact(tmp_path, {}, names)
