"""Tests for ms_core.study.layout: layout, validation messages, partial loading of broken
studies."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ms_core.foundation import io
from ms_core.foundation.errors import StudyError
from ms_core.study.derivatives import derivatives_dir, truth_dir
from ms_core.study.layout import image_path, lesion_overlay_path, load_study, parse_edss

PARTICIPANTS = pd.DataFrame({
    "participant_id": ["sub-01", "sub-02"], "sex": ["F", "M"], "birth_year": [1980, 1975],
    "ms_type": ["RR", "SP"], "onset_year": [2005, 1999], "trial_arm": ["control", "n/a"],
})


def _sessions(dates: list[str], edss: list[str] | None = None) -> pd.DataFrame:
    n = len(dates)
    return pd.DataFrame({
        "session_id": [f"ses-{i + 1:02d}" for i in range(n)], "acq_date": dates,
        "edss": edss or ["2.0"] * n, "relapses_since_last": ["0"] * n,
        "dmt": ["interferon beta-1a"] * n, "scanner": ["SiteA"] * n,
        "field_strength_t": ["1.5"] * n,
    })


def _image(path: Path) -> None:
    io.save_volume(path, np.ones((6, 6, 4), np.float32), np.diag([1.0, 1.0, 3.0, 1.0]), np.int16)


def make_study(root: Path, participants: pd.DataFrame = PARTICIPANTS,
               sessions: dict[str, pd.DataFrame] | None = None) -> Path:
    io.write_tsv(root / "participants.tsv", participants)
    sessions = sessions or {
        "sub-01": _sessions(["2020-03-01", "2019-02-01"]),
        "sub-02": _sessions(["2021-05-05"]),
    }
    for pid, table in sessions.items():
        io.write_tsv(root / pid / f"{pid}_sessions.tsv", table)
        for sid in table["session_id"]:
            for modality in ("FLAIR", "T1w"):
                _image(image_path(root, pid, sid, modality))
    return root


def test_good_study_loads_typed_objects_without_issues(tmp_path: Path) -> None:
    study = load_study(make_study(tmp_path))
    assert study.issues == ()
    assert set(study.participants) == {"sub-01", "sub-02"}
    p1 = study.participants["sub-01"]
    assert (p1.sex, p1.birth_year, p1.ms_type, p1.trial_arm) == ("F", 1980, "RR", "control")
    assert study.participants["sub-02"].trial_arm is None
    visits = study.visits["sub-01"]
    assert [v.session_id for v in visits] == ["ses-02", "ses-01"]  # sorted by date
    assert visits[0].acq_date == dt.date(2019, 2, 1)
    assert visits[0].edss == 2.0 and visits[0].field_strength_t == 1.5
    assert set(visits[0].images) == {"FLAIR", "T1w"}
    table = study.visits_table()
    assert len(table) == 3
    assert table.loc[table.session_id == "ses-01", "years_from_first"].iloc[0] == pytest.approx(
        394 / 365.25)


def test_missing_root_or_participants_table_raises(tmp_path: Path) -> None:
    with pytest.raises(StudyError, match="study folder not found"):
        load_study(tmp_path / "nope")
    with pytest.raises(StudyError, match=r"participants\.tsv.*not found"):
        load_study(tmp_path)
    io.write_tsv(tmp_path / "participants.tsv", PARTICIPANTS.drop(columns=["sex"]))
    with pytest.raises(StudyError, match=r"missing columns \['sex'\]"):
        load_study(tmp_path)


def test_bad_participant_rows_are_reported_and_skipped(tmp_path: Path) -> None:
    bad = pd.concat([PARTICIPANTS, pd.DataFrame({
        "participant_id": ["patient3", "sub-04", "sub-05", "sub-01"], "sex": ["F", "X", "F", "F"],
        "birth_year": [1990, 1990, 1990, 1990], "ms_type": ["RR", "RR", "RR", "RR"],
        "onset_year": [2010, 2010, 1980, 2010], "trial_arm": ["", "", "", ""],
    })])
    study = load_study(make_study(tmp_path, bad))
    messages = [str(i) for i in study.issues]
    assert set(study.participants) == {"sub-01", "sub-02"}
    assert any("'patient3' must look like 'sub-01'" in m for m in messages)
    assert any("sub-04" in m and "sex 'X'" in m for m in messages)
    assert any("onset_year 1980 is before birth_year 1990" in m for m in messages)
    assert any("duplicate participant_id sub-01" in m for m in messages)
    assert all(m.startswith(str(tmp_path / "participants.tsv")) for m in messages)


def test_bad_dates_and_edss_are_reported_and_rest_kept(tmp_path: Path) -> None:
    sessions = {
        "sub-01": _sessions(["2020-01-01", "01/02/2021", "2022-02-30", "2023-01-01"],
                            edss=["11", "2.0", "2.0", "2.3"]),
        "sub-02": _sessions(["2021-05-05"]),
    }
    study = load_study(make_study(tmp_path, sessions=sessions))
    messages = [str(i) for i in study.issues]
    kept = study.visits["sub-01"]
    assert [v.session_id for v in kept] == ["ses-01", "ses-04"]
    assert kept[0].edss is None and kept[1].edss is None
    assert any("ses-02" in m and "'01/02/2021' is not a date" in m for m in messages)
    assert any("ses-03" in m and "'2022-02-30'" in m for m in messages)
    assert any("EDSS 11.0 is outside 0.0..10.0" in m for m in messages)
    assert any("EDSS 2.3 is not a multiple of 0.5" in m for m in messages)
    assert len(study.visits["sub-02"]) == 1


def test_corrupt_nifti_names_the_file_and_others_still_load(tmp_path: Path) -> None:
    root = make_study(tmp_path)
    bad = image_path(root, "sub-01", "ses-01", "FLAIR")
    bad.write_bytes(b"\x1f\x8b garbage that is not gzip")
    study = load_study(root)
    errors = [i for i in study.issues if i.severity == "error"]
    assert [i.path for i in errors] == [bad]
    assert "cannot read NIfTI header" in errors[0].message
    broken = study.visit("sub-01", "ses-01")
    assert set(broken.images) == {"T1w"}
    assert set(study.visit("sub-01", "ses-02").images) == {"FLAIR", "T1w"}
    # The visit without a usable FLAIR is flagged as a warning.
    assert any(i.severity == "warning" and "no usable FLAIR" in i.message for i in study.issues)
    assert study.issues_for("sub-02") == []


def test_missing_sessions_table_and_unlisted_folder(tmp_path: Path) -> None:
    root = make_study(tmp_path)
    (root / "sub-02" / "sub-02_sessions.tsv").unlink()
    (root / "sub-99").mkdir()
    study = load_study(root)
    messages = [str(i) for i in study.issues]
    assert study.visits["sub-02"] == ()
    assert any("sub-02_sessions.tsv: sessions table not found" in m for m in messages)
    assert any("sub-99: folder is not listed" in m for m in messages)


def test_empty_study_has_no_visits(tmp_path: Path) -> None:
    io.write_tsv(tmp_path / "participants.tsv", PARTICIPANTS.iloc[:0])
    study = load_study(tmp_path)
    assert study.participants == {} and study.visits_table().empty


def test_overlay_prefers_our_segmentation_over_truth(tmp_path: Path) -> None:
    root = make_study(tmp_path)
    assert lesion_overlay_path(root, "sub-01", "ses-01") is None
    truth = truth_dir(root, "sub-01", "ses-01") / "lesion_labels.nii.gz"
    _image(truth)
    assert lesion_overlay_path(root, "sub-01", "ses-01") == (truth, "ground truth")
    seg = derivatives_dir(root, "sub-01", "ses-01") / "lesion_mask.nii.gz"
    _image(seg)
    assert lesion_overlay_path(root, "sub-01", "ses-01") == (seg, "segmentation")


@pytest.mark.parametrize(("text", "expected"), [("0", 0.0), ("6.5", 6.5), ("", None),
                                                ("n/a", None), ("10", 10.0)])
def test_parse_edss_valid(text: str, expected: float | None) -> None:
    assert parse_edss(text) == expected


@pytest.mark.parametrize("text", ["-0.5", "10.5", "3.25", "abc"])
def test_parse_edss_invalid(text: str) -> None:
    with pytest.raises(ValueError, match="EDSS"):
        parse_edss(text)


# ------------------------------------------------------------------ study roots (issue 34)
def test_confine_study_refuses_every_way_out_of_the_roots(tmp_path: Path) -> None:
    from ms_core.study.layout import confine_study

    root = tmp_path / "studies"
    (root / "trial-a" / "sub-01").mkdir(parents=True)
    outside = tmp_path / "private"
    outside.mkdir()
    sibling = tmp_path / "studies-old"  # shares the root's name as a prefix
    sibling.mkdir()
    (root / "escape").symlink_to(outside, target_is_directory=True)
    (root / "alias").symlink_to(root / "trial-a", target_is_directory=True)
    roots = (root,)
    assert confine_study(root / "trial-a", roots) == (root / "trial-a").resolve()
    assert confine_study(root, roots) == root.resolve()
    assert confine_study(root / "alias", roots) == (root / "trial-a").resolve()  # stays inside
    assert confine_study(root / "x" / ".." / "trial-a", roots) == (root / "trial-a").resolve()
    for attempt in (root / ".." / "private", root / "trial-a" / ".." / ".." / "private",
                    outside, Path("/etc"), sibling, root / "escape", root / "escape" / "x",
                    tmp_path):
        with pytest.raises(StudyError, match="outside the allowed study folders") as e:
            confine_study(attempt, roots)
        assert str(attempt) in str(e.value)
    assert confine_study(outside, None) == outside.resolve()  # no roots: no limit


def test_study_roots_come_from_the_environment_or_the_default(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from ms_core.foundation.settings import study_roots

    monkeypatch.delenv("MS_DASH_STUDY_ROOTS", raising=False)
    assert study_roots() is None
    assert study_roots(tmp_path / "demo") == ((tmp_path / "demo").resolve(),)
    monkeypatch.setenv("MS_DASH_STUDY_ROOTS",
                       os.pathsep.join([str(tmp_path / "a"), "", str(tmp_path / "b" / ".." / "c")]))
    assert study_roots(tmp_path / "demo") == ((tmp_path / "a").resolve(),
                                              (tmp_path / "c").resolve())


def test_cli_refuses_a_study_outside_the_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from ms_core.services.cli import main

    monkeypatch.setenv("MS_DASH_STUDY_ROOTS", str(tmp_path / "allowed"))
    assert main(["validate", str(tmp_path / "allowed" / ".." / "other")]) == 2
    assert "outside the allowed study folders" in capsys.readouterr().err
