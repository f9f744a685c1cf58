"""Tests for ms_core.services.importer (import one visit into a study) and the Import page
(AppTest).

Synthetic DICOM series come from ``tests/test_dicom.py``; NIfTI inputs are written here.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest
from test_dicom import PHI, SeriesSpec, write_series, zip_folder

from ms_core.foundation import io, state_keys
from ms_core.foundation.domain import Participant
from ms_core.foundation.errors import InputError
from ms_core.services import importer
from ms_core.services.importer import check_visit, import_visit, next_session_id, staged_uploads
from ms_core.study.derivatives import derivatives_dir
from ms_core.study.layout import image_path, load_study

REPO = Path(__file__).resolve().parents[1]
AFFINE = np.array([[0.0, 0.0, 3.0, -10.0], [-1.0, 0.0, 0.0, 6.0], [0.0, 1.2, 0.0, -4.0],
                   [0.0, 0.0, 0.0, 1.0]])  # a non-RAS voxel order, as scanners write them


def _nifti(path: Path, seed: int = 0, shape: tuple[int, int, int] = (12, 10, 8)) -> Path:
    data = np.random.default_rng(seed).integers(0, 500, size=shape).astype(np.int16)
    io.save_volume(path, data, AFFINE, np.int16)
    return path


def _snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` with the sha256 of its bytes ("dir" for folders)."""
    if not root.exists():
        return {}
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            out[str(Path(folder, name).relative_to(root))] = "dir"
        for name in files:
            path = Path(folder, name)
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _copy_study(source: Path, target: Path) -> Path:
    # Hard links: fast, and safe because every write of the importer replaces files by rename.
    return Path(shutil.copytree(source, target, copy_function=os.link))


def _assert_no_phi(root: Path, paths: list[str]) -> None:
    for rel in paths:
        payload = (root / rel).read_bytes() if (root / rel).is_file() else b""
        texts = [payload, gzip.decompress(payload) if rel.endswith(".gz") else b""]
        for value in [*PHI.values(), "Doe", "4711", "19710203"]:
            assert not any(value.encode() in t for t in texts), f"{value} found in {rel}"


# ----------------------------------------------------------------------------- import
def test_import_into_a_copy_of_the_small_study(small_study: Path, tmp_path: Path) -> None:
    root = _copy_study(small_study, tmp_path / "study")
    before, issues_before = _snapshot(root), {str(i) for i in load_study(root).issues}
    flair = _nifti(tmp_path / "in" / "flair.nii.gz")
    t1 = SeriesSpec(description="T1 MPRAGE", slope=1.0)
    write_series(tmp_path / "t1", t1)
    visit = import_visit(root, "sub-01", "ses-09", {
        "FLAIR": flair, "T1w": zip_folder(tmp_path / "t1", tmp_path / "in" / "t1.zip")},
        acq_date="2024-01-31", edss="3.5", relapses_since_last=1, dmt="ocrelizumab")

    assert (visit.participant_id, visit.session_id, visit.acq_date) == (
        "sub-01", "ses-09", dt.date(2024, 1, 31))
    assert (visit.edss, visit.relapses_since_last, visit.dmt) == (3.5, 1, "ocrelizumab")
    assert (visit.scanner, visit.field_strength_t) == ("Siemens Avanto", 1.5)  # from DICOM
    assert set(visit.images) == {"FLAIR", "T1w"}
    study = load_study(root)
    assert {str(i) for i in study.issues} == issues_before
    assert study.visit("sub-01", "ses-09") == visit
    got = io.load_volume(visit.images["FLAIR"], "FLAIR")
    want = io.load_volume(flair, "FLAIR")
    np.testing.assert_array_equal(got.data, want.data)
    np.testing.assert_allclose(got.affine, AFFINE)
    t1_volume = io.load_volume(visit.images["T1w"], "T1w")
    np.testing.assert_array_equal(t1_volume.data, t1.values)
    ijk = np.array([[0, 0, 0], [15, 13, 11]])
    np.testing.assert_allclose(t1_volume.affine[:3, :3] @ ijk.T + t1_volume.affine[:3, 3:],
                               t1.world_ras(ijk).T, atol=1e-4)

    after = _snapshot(root)
    changed = sorted(k for k in after if before.get(k) != after[k])
    assert {k for k in changed if after[k] != "dir"} == {
        "sub-01/sub-01_sessions.tsv", "sub-01/ses-09/anat/sub-01_ses-09_FLAIR.nii.gz",
        "sub-01/ses-09/anat/sub-01_ses-09_T1w.nii.gz",
        "derivatives/import/sub-01/ses-09/provenance.json"}
    assert not [k for k in before if k not in after]
    _assert_no_phi(root, changed)
    sessions = pd.read_csv(root / "sub-01" / "sub-01_sessions.tsv", sep="\t", dtype=str)
    assert sessions.iloc[-1].tolist() == ["ses-09", "2024-01-31", "3.5", "1", "ocrelizumab",
                                          "Siemens Avanto", "1.5"]
    prov = json.loads((derivatives_dir(root, "sub-01", "ses-09", "import")
                       / "provenance.json").read_text())
    assert prov["images"]["T1w"]["series_description"] == "T1 MPRAGE"
    assert prov["images"]["T1w"]["source"] == "dicom"
    assert prov["images"]["FLAIR"]["dtype"] == "int16"
    assert _snapshot(small_study) == {k: v for k, v in before.items()}  # the fixture is intact


def test_import_into_a_new_folder_creates_the_study(tmp_path: Path) -> None:
    root = tmp_path / "new" / "study"
    person = Participant("sub-13", "F", 1980, "RR", 2005, "control")
    visit = import_visit(root, "sub-13", "ses-01", {"FLAIR": _nifti(tmp_path / "f.nii.gz")},
                         acq_date=dt.date(2024, 1, 31), participant=person)
    assert visit.images.keys() == {"FLAIR"}
    assert (visit.edss, visit.scanner, visit.field_strength_t) == (None, None, None)
    study = load_study(root)
    assert study.issues == ()
    assert study.participants["sub-13"] == person
    import_visit(root, "sub-13", "ses-02", {"FLAIR": _nifti(tmp_path / "g.nii.gz", 1)},
                 acq_date="2025-02-01", edss=2)
    study = load_study(root)
    assert [v.session_id for v in study.visits["sub-13"]] == ["ses-01", "ses-02"]
    assert len(pd.read_csv(root / "participants.tsv", sep="\t")) == 1
    assert next_session_id(study, "sub-13") == "ses-03"
    assert next_session_id(study, "sub-99") == "ses-01"


def test_a_folder_that_is_not_a_study_is_refused(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"x")
    before = _snapshot(tmp_path)
    with pytest.raises(InputError, match=r"not empty and has no participants\.tsv"):
        import_visit(tmp_path / "photos", "sub-01", "ses-01",
                     {"FLAIR": _nifti(tmp_path / "in" / "f.nii.gz")}, acq_date="2024-01-31")
    assert {k: v for k, v in _snapshot(tmp_path).items() if not k.startswith("in")} == {
        k: v for k, v in before.items()}


def test_bad_file_is_named_and_the_study_is_unchanged(tmp_path: Path) -> None:
    root = tmp_path / "study"
    import_visit(root, "sub-01", "ses-01", {"FLAIR": _nifti(tmp_path / "f.nii.gz")},
                 acq_date="2024-01-31")
    before = _snapshot(root)
    good = _nifti(tmp_path / "good.nii.gz", 2)
    bad = tmp_path / "bad_t1.nii.gz"
    bad.write_bytes(_nifti(tmp_path / "x.nii.gz").read_bytes()[:200])
    with pytest.raises(InputError) as info:
        import_visit(root, "sub-01", "ses-02", {"FLAIR": good, "T1w": bad}, acq_date="2024-02-01")
    assert info.value.path == bad
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(InputError, match="unsupported file") as info:
        import_visit(root, "sub-02", "ses-01", {"FLAIR": text}, acq_date="2024-02-01")
    assert info.value.path == text
    with pytest.raises(InputError, match="a FLAIR image is required"):
        import_visit(root, "sub-02", "ses-01", {"T1w": good}, acq_date="2024-02-01")
    dicom_dir = tmp_path / "dcm"
    write_series(dicom_dir, SeriesSpec(), skip=[4])
    with pytest.raises(InputError, match=r"1 slice\(s\) missing") as info:
        import_visit(root, "sub-02", "ses-01", {"FLAIR": dicom_dir}, acq_date="2024-02-01")
    assert info.value.path == dicom_dir
    tiny = tmp_path / "tiny"
    write_series(tiny, SeriesSpec(spacing_mm=(0.05, 0.05, 3.0)))
    with pytest.raises(InputError, match=r"voxel size \[0.05, 0.05, 3.0\] mm is outside"):
        import_visit(root, "sub-02", "ses-01", {"FLAIR": tiny}, acq_date="2024-02-01")
    assert _snapshot(root) == before


def test_existing_visit_is_protected_unless_replace(tmp_path: Path) -> None:
    root = tmp_path / "study"
    first = _nifti(tmp_path / "f1.nii.gz", 1)
    import_visit(root, "sub-01", "ses-01", {"FLAIR": first}, acq_date="2024-01-31", edss=2.0)
    stale = derivatives_dir(root, "sub-01", "ses-01") / "lesion_mask.nii.gz"
    io.save_labels(stale, np.zeros((12, 10, 8), np.uint8), AFFINE)
    before = _snapshot(root)
    second = _nifti(tmp_path / "f2.nii.gz", 2, shape=(14, 10, 8))
    with pytest.raises(InputError, match="already exists"):
        import_visit(root, "sub-01", "ses-01", {"FLAIR": second}, acq_date="2024-01-31")
    assert _snapshot(root) == before

    visit = import_visit(root, "sub-01", "ses-01", {"FLAIR": second}, acq_date="2024-03-01",
                         edss="4.5", replace=True)
    assert (visit.acq_date, visit.edss) == (dt.date(2024, 3, 1), 4.5)
    assert io.load_volume(visit.images["FLAIR"], "FLAIR").shape == (14, 10, 8)
    assert not stale.exists()  # results of the old images are gone with them
    sessions = pd.read_csv(root / "sub-01" / "sub-01_sessions.tsv", sep="\t", dtype=str)
    assert sessions.session_id.tolist() == ["ses-01"]
    prov = json.loads((derivatives_dir(root, "sub-01", "ses-01", "import")
                       / "provenance.json").read_text())
    assert prov["replaced_existing_visit"] is True
    assert load_study(root).issues == ()
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no staging left


@pytest.mark.parametrize("existing", [False, True])
def test_failure_while_writing_restores_the_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  existing: bool) -> None:
    root = tmp_path / "study"
    if existing:
        import_visit(root, "sub-01", "ses-01", {"FLAIR": _nifti(tmp_path / "a.nii.gz")},
                     acq_date="2024-01-31")
        derivative = derivatives_dir(root, "sub-01", "ses-01") / "lesions.csv"
        derivative.parent.mkdir(parents=True)
        derivative.write_text("lesion_id\n")
    before = _snapshot(root)
    real = importer.write_tsv

    def failing(path: Path, table: pd.DataFrame) -> None:
        if Path(path).name in {"participants.tsv", "sub-01_sessions.tsv"}:
            raise OSError("disk full")
        real(path, table)

    monkeypatch.setattr(importer, "write_tsv", failing)
    with pytest.raises(OSError, match="disk full"):
        import_visit(root, "sub-02", "ses-01", {"FLAIR": _nifti(tmp_path / "b.nii.gz")},
                     acq_date="2024-01-31")
    if existing:
        with pytest.raises(OSError, match="disk full"):  # a replace that fails keeps the old
            import_visit(root, "sub-01", "ses-01", {"FLAIR": _nifti(tmp_path / "b.nii.gz")},
                         acq_date="2024-01-31", replace=True)
    assert _snapshot(root) == before
    assert root.exists() == existing


def test_check_visit_lists_every_problem_and_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "study"
    check = check_visit(root, "patient 1", "visit1", {"T1w": tmp_path / "nope.nii.gz",
                                                      "PD": tmp_path / "x.nii"},
                        acq_date=dt.date.today() + dt.timedelta(days=3), edss="3.3",
                        dmt="a\tb", relapses_since_last=-1)
    messages = [str(p) for p in check.problems]
    for expected in ("participant id 'patient 1'", "session id 'visit1'", "in the future",
                     "not a multiple of 0.5", "tabs or line breaks", "relapses since",
                     "unknown image types ['PD']", "a FLAIR image is required",
                     "nope.nii.gz: file not found"):
        assert any(expected in m for m in messages), (expected, messages)
    assert not check.ok and check.session_row == {}
    assert not root.exists()
    with pytest.raises(InputError, match="; "):
        importer.write_visit(check)


def test_staged_uploads_keep_base_names_and_are_removed(tmp_path: Path) -> None:
    with staged_uploads({"FLAIR": ("../../etc/My Scan (1).nii.gz", b"abc"),
                         "T1w": ("C:\\Users\\x\\t1.zip", b"z")}) as files:
        assert files["FLAIR"].name == "My Scan _1_.nii.gz"
        assert files["T1w"].name == "t1.zip"
        assert files["FLAIR"].read_bytes() == b"abc"
        folder = files["FLAIR"].parents[1]
    assert not folder.exists()


# ----------------------------------------------------------------------------- the page
def _button(at: AppTest, label: str):  # type: ignore[no-untyped-def]
    return next(b for b in at.button if b.label == label)


def test_import_page_validates_imports_and_opens_the_visit(small_study: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    root = _copy_study(small_study, tmp_path / "study")
    monkeypatch.setenv("MS_DASH_STUDY", str(root))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=60)
    at.run()
    at.switch_page("pages/import_data.py").run()
    assert not at.exception
    assert at.title[0].value == "Import a visit"
    session = next(w for w in at.text_input if w.label == "Session id")
    assert session.value == "ses-04"

    for n, description in enumerate(("ax FLAIR", "T1 MPRAGE")):
        write_series(tmp_path / "exam" / str(n), SeriesSpec(description=description))
    exam = zip_folder(tmp_path / "exam", tmp_path / "exam.zip").read_bytes()
    at.file_uploader[1].set_value(("exam.zip", exam, "application/zip")).run()
    picker = next(w for w in at.selectbox if w.label == "T1w series")
    assert picker.value.description == "T1 MPRAGE"
    assert picker.options == ["series 3 'ax FLAIR' (12 images)",
                              "series 7 'T1 MPRAGE' (12 images)"]
    at.file_uploader[1].set_value(None).run()

    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not an image")
    at.file_uploader[0].set_value(("flair.nii.gz", bad.read_bytes(), "application/gzip"))
    _button(at, "Validate").click().run()
    assert not at.exception
    assert any(e.value.startswith("FLAIR (flair.nii.gz): cannot read NIfTI header")
               for e in at.error)

    flair = _nifti(tmp_path / "flair.nii.gz").read_bytes()
    at.file_uploader[0].set_value(("flair.nii.gz", flair, "application/gzip"))
    next(w for w in at.date_input if w.label == "Visit date").set_value(dt.date(2024, 1, 31))
    next(w for w in at.number_input if w.label == "EDSS").set_value(2.5)
    _button(at, "Validate").click().run()
    assert not at.exception and not at.error
    assert any("No problems found" in s.value for s in at.success)
    assert at.dataframe[0].value["grid"].tolist() == ["12 × 10 × 8"]
    assert "ses-04" not in {v.session_id for v in load_study(root).visits["sub-01"]}

    _button(at, "Import").click().run()
    assert not at.exception and not at.error
    assert any(s.value == "Imported sub-01 ses-04." for s in at.success)
    visit = load_study(root).visit("sub-01", "ses-04")
    assert (visit.acq_date, visit.edss) == (dt.date(2024, 1, 31), 2.5)

    _button(at, "Open the visit").click().run()
    assert not at.exception
    assert at.session_state[state_keys.SESSION] == "ses-04"
    assert at.sidebar.selectbox(key=state_keys.visit_picker(str(root), "sub-01")).value == "ses-04"
    assert at.title[0].value == "Patient sub-01"

    # Read-only demo mode: app.py does not offer the Import page, and the page itself, if
    # reached anyway, shows a notice instead of the form.
    monkeypatch.setenv("MS_DASH_READ_ONLY", "1")
    at.switch_page("pages/import_data.py").run()
    assert not at.exception
    assert len(at.file_uploader) == 0
    assert at.title[0].value != "Import a visit" or any("read-only" in i.value for i in at.info)


def test_import_paths_in_the_study_layout(tmp_path: Path) -> None:
    visit = import_visit(tmp_path / "s", "sub-7", "ses-b", {"FLAIR": _nifti(tmp_path / "f.nii")},
                         acq_date="2020-01-01")
    assert visit.images["FLAIR"] == image_path(tmp_path / "s", "sub-7", "ses-b", "FLAIR")
