"""Tests for ms_core.longitudinal.measurements: the provenance columns of measured_table, read from
the derivative files the pipeline writes, and the Timeline figures' hovers that show them.

The study is tiny (8 mm^3 random images): the files are written by the real writers
(``write_outputs``, ``write_track_outputs``, ``measure_visit_volumes``,
``measure_interval_pbvc``) around stand-in results, so the layout and provenance fields are the
pipeline's own; the numerics are tested in test_segment, test_longitudinal and test_atrophy.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from ms_core.foundation.domain import Visit
from ms_core.study.provenance_text import NOT_MEASURED

SHA = "1a2b3c4d5e6f" + "0" * 52
MODEL = {"name": "lesion_seg", "version": "2.0.0", "sha256": SHA}
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def _study(root: Path) -> list[Visit]:
    """Three visits of sub-01 with a FLAIR and a T1w each."""
    from ms_core.foundation.io import save_volume
    from ms_core.study.layout import image_path

    rng = np.random.default_rng(0)
    visits = []
    for i, date in enumerate(("2020-01-01", "2021-01-01", "2022-01-01"), start=1):
        sid = f"ses-0{i}"
        images = {m: image_path(root, "sub-01", sid, m) for m in ("FLAIR", "T1w")}
        images["FLAIR"].parent.mkdir(parents=True)
        for path in images.values():
            save_volume(path, rng.random((8, 8, 8)).astype(np.float32), AFFINE)
        visits.append(Visit("sub-01", sid, dt.date.fromisoformat(date), 2.0, 0, "A", "S", 3.0,
                            images))
    return visits


def _segment(root: Path, visit: Visit, volumes_ml: list[float]) -> None:
    """Store a network segmentation of ``visit`` made by :data:`MODEL` (default settings)."""
    from ms_core.segmentation.segment import SegmentationResult, SegmentParams, write_outputs
    from ms_core.study.derivatives import derivatives_dir

    labels = np.zeros((8, 8, 8), np.int32)
    labels[2:4, 2:4, 2:4] = 1
    table = pd.DataFrame({"lesion_id": range(1, len(volumes_ml) + 1), "volume_ml": volumes_ml})
    out = derivatives_dir(root, visit.participant_id, visit.session_id)
    out.mkdir(parents=True, exist_ok=True)
    write_outputs(out, SegmentationResult(labels.astype(np.float32), labels, AFFINE, table,
                                          "CPUExecutionProvider", MODEL), SegmentParams(),
                  {"flair": visit.images["FLAIR"]})


def _track(root: Path, baseline: Visit, followup: Visit) -> None:
    """Store a comparison (default settings): 1 new, 1 enlarging, 1 stable lesion."""
    from ms_core.longitudinal.tracking import (
        PairRegistration,
        TrackParams,
        TrackResult,
        write_track_outputs,
    )
    from ms_core.study.derivatives import tracking_dir

    zeros = np.zeros((8, 8, 8), np.uint8)
    table = pd.DataFrame({"lesion_id": [1, 2, 3], "status": ["new", "enlarging", "stable"]})
    result = TrackResult(zeros, AFFINE, table, PairRegistration(np.eye(4), 0.9312),
                         "CPUExecutionProvider (stored segmentation)", MODEL,
                         zeros.astype(np.int32), {"registration_ncc": 0.9312})
    write_track_outputs(tracking_dir(root, baseline, followup), result, TrackParams(),
                        {"baseline_flair": baseline.images["FLAIR"],
                         "followup_flair": followup.images["FLAIR"]})


def _atrophy(root: Path, visits: list[Visit], monkeypatch: pytest.MonkeyPatch) -> None:
    """Store the brain volumes of the first two visits and the PBVC between them."""
    import ms_core.longitudinal.atrophy as atrophy
    from ms_core.longitudinal.pbvc import PBVCResult
    from ms_core.segmentation.tissue import TissueVolumes

    def fake_tissue(volume: Any, **_: Any) -> TissueVolumes:
        return TissueVolumes(1150.0, 650.0, 500.0, 350.0, 1500.0, 1150 / 1500, 0.0)

    def fake_pbvc(baseline: Any, followup: Any, **kw: Any) -> PBVCResult:
        return PBVCResult(-0.9, kw["method"], 0.9812, 1150.0, -10.35, np.eye(4))

    monkeypatch.setattr(atrophy, "tissue_volumes", fake_tissue)
    monkeypatch.setattr(atrophy, "percent_brain_volume_change", fake_pbvc)
    for visit in visits[:2]:
        atrophy.measure_visit_volumes(root, visit)
    atrophy.measure_interval_pbvc(root, visits[0], visits[1])


@pytest.fixture
def measured_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Visit]:
    """ses-01 and ses-02 segmented, compared and measured; ses-03 not analysed. :data:`MODEL`
    is the active segmentation model (a models folder whose manifest lists it, named by
    ``MS_DASH_MODELS``): results of another model would not be current."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "manifest.json").write_text(json.dumps({"models": {"lesion_seg": {
        "onnx": "lesion_seg/model.onnx", "card": "lesion_seg/model.json", "sha256": SHA}}}))
    monkeypatch.setenv("MS_DASH_MODELS", str(models))
    visits = _study(tmp_path)
    _segment(tmp_path, visits[0], [0.5, 0.25])
    _segment(tmp_path, visits[1], [0.5, 0.25, 0.125])
    _track(tmp_path, visits[0], visits[1])
    _atrophy(tmp_path, visits, monkeypatch)
    return visits


def test_lesion_volume_carries_the_plausible_range_of_the_real_validation(
        measured_study: list[Visit], tmp_path: Path) -> None:
    from ms_core.longitudinal.measurements import measured_table, volume_with_range

    plain = measured_table(tmp_path, measured_study)
    assert plain.lesion_volume_low_ml.isna().all() and plain.lesion_volume_high_ml.isna().all()
    table = measured_table(tmp_path, measured_study, volume_ratios=(0.8, 1.25))
    vol = table.lesion_volume_ml.to_numpy()
    measured = ~np.isnan(vol)
    assert measured.sum() == 2
    # An over-segmenting model (ratio up to 1.25) can mean less lesion, an under-segmenting
    # one (0.8) more: volume / 1.25 to volume / 0.8.
    np.testing.assert_allclose(table.lesion_volume_low_ml.to_numpy()[measured],
                               vol[measured] / 1.25, atol=1e-4)
    np.testing.assert_allclose(table.lesion_volume_high_ml.to_numpy()[measured],
                               vol[measured] / 0.8, atol=1e-4)
    assert table.lesion_volume_low_ml[~measured].isna().all()
    assert volume_with_range(float(vol[0]), (0.8, 1.25)).startswith(f"{vol[0]:.2f} ml, plausible")


def test_measured_table_says_where_each_number_comes_from(measured_study: list[Visit],
                                                          tmp_path: Path) -> None:
    from ms_core.longitudinal.measurements import MEASURED_COLUMNS, measured_table

    table = measured_table(tmp_path, measured_study)
    assert list(table.columns) == list(MEASURED_COLUMNS)
    assert table.lesion_count.tolist()[:2] == [2.0, 3.0]
    assert table.new_or_enlarging.tolist()[1] == 2.0
    seg = table.segmentation_provenance.tolist()
    created = json.loads((tmp_path / "derivatives/ms_dash/sub-01/ses-01/provenance.json")
                         .read_text())["created_utc"][:10]
    assert seg[0] == ("lesion_seg v2.0.0 (sha256 1a2b3c4d…), network, threshold 0.5, "
                      f"min 10 mm³, TTA, CPUExecutionProvider, {created}; "
                      "derivatives/ms_dash/sub-01/ses-01/lesions.csv")
    assert seg[1].endswith("derivatives/ms_dash/sub-01/ses-02/lesions.csv")
    assert seg[2] == NOT_MEASURED
    change = table.change_provenance.tolist()
    assert change[0] == NOT_MEASURED and change[2] == NOT_MEASURED
    assert change[1].startswith("vs ses-01, joint tracking, enlarging +30 %, change z 2, "
                                "min change 10 mm³, intensity-led new lesions at z 5, "
                                "registration NCC 0.931, lesion_seg v2.0.0")
    assert change[1].endswith("derivatives/ms_dash/sub-01/ses-02/change_from_ses-01/"
                              "lesion_changes.csv")
    volume = table.volume_provenance.tolist()
    assert volume[0].startswith("T1w tissue classification (MNI priors), lesions filled "
                                "(network segmentation, threshold 0.5), ms_core ")
    assert volume[1].endswith("derivatives/ms_dash/sub-01/ses-02/atrophy/tissue_volumes.json")
    assert volume[2] == NOT_MEASURED
    pbvc = table.pbvc_provenance.tolist()
    assert pbvc[0] == NOT_MEASURED and pbvc[2] == NOT_MEASURED
    assert pbvc[1].startswith("vs ses-01 over 1.00 years, boundary shift integral (BSI) on T1w "
                              "at 1 mm, registration NCC 0.981, ms_core ")
    record = tmp_path / "derivatives/ms_dash/sub-01/ses-02/atrophy/pbvc_from_ses-01.json"
    assert pbvc[1].endswith(f"{json.loads(record.read_text())['created_utc'][:10]}; "
                            "derivatives/ms_dash/sub-01/ses-02/atrophy/pbvc_from_ses-01.json")


def test_provenance_text_follows_the_stored_file(measured_study: list[Visit],
                                                 tmp_path: Path) -> None:
    from ms_core.longitudinal.measurements import measured_table

    # The model entry is not part of what makes a result current: edit it, and the text
    # must show the edited file, not a value the code assumes.
    path = tmp_path / "derivatives/ms_dash/sub-01/ses-02/provenance.json"
    prov = json.loads(path.read_text())
    prov["model"]["version"] = "9.9.9"
    path.write_text(json.dumps(prov))
    table = measured_table(tmp_path, measured_study)
    assert "lesion_seg v9.9.9" in table.segmentation_provenance[1]
    assert "lesion_seg v2.0.0" in table.segmentation_provenance[0]


def test_stale_results_are_not_measured(measured_study: list[Visit], tmp_path: Path) -> None:
    from ms_core.foundation.io import save_volume
    from ms_core.longitudinal.measurements import measured_table

    # A replaced FLAIR makes that visit's segmentation and the comparison out of date.
    save_volume(measured_study[1].images["FLAIR"], np.ones((8, 8, 8), np.float32), AFFINE)
    table = measured_table(tmp_path, measured_study)
    assert table.segmentation_provenance.tolist()[1:] == [NOT_MEASURED, NOT_MEASURED]
    assert table.change_provenance.tolist() == [NOT_MEASURED] * 3
    assert table.segmentation_provenance[0] != NOT_MEASURED


def test_no_visits_gives_the_empty_table_with_provenance_columns(tmp_path: Path) -> None:
    from ms_core.longitudinal.measurements import MEASURED_COLUMNS, atrophy_frame, measured_table

    assert list(measured_table(tmp_path, []).columns) == list(MEASURED_COLUMNS)
    assert atrophy_frame([], {}, {})["pbvc_provenance"].tolist() == []


# ----------------------------------------------------------------------------- figure hovers
def _hovers(trace: Any) -> list[str]:
    """Every row of a trace's customdata joined into one string per point."""
    return [" ".join(str(x) for x in row) for row in trace.customdata]


def test_measured_figure_hovers_carry_model_and_comparison(measured_study: list[Visit],
                                                           tmp_path: Path) -> None:
    from ms_core.longitudinal.measurements import measured_table
    from ui import figures as ui_figures

    fig = ui_figures.measured_figure(measured_table(tmp_path, measured_study))
    lesions, new, enlarging = fig.data
    assert [t.name for t in fig.data] == ["lesions", "new", "enlarging"]
    hovers = _hovers(lesions)
    assert "lesion_seg v2.0.0 (sha256 1a2b3c4d…)" in hovers[0]
    assert "min 10 mm³" in hovers[1] and "lesions.csv" in hovers[1]
    assert hovers[2].endswith(NOT_MEASURED)
    assert "%{customdata[2]}" in lesions.hovertemplate
    for trace in (new, enlarging):
        assert "registration NCC 0.931" in _hovers(trace)[1]
        assert _hovers(trace)[0].endswith(NOT_MEASURED)
        assert "%{customdata[1]}" in trace.hovertemplate


def test_atrophy_figure_hovers_carry_method_and_file(measured_study: list[Visit],
                                                     tmp_path: Path) -> None:
    from ms_core.longitudinal.measurements import measured_table
    from ui import figures as ui_figures

    fig = ui_figures.atrophy_figure(measured_table(tmp_path, measured_study))
    brain, bpf, rate = fig.data
    for trace in (brain, bpf):
        hovers = _hovers(trace)
        assert "tissue classification" in hovers[0] and hovers[2].endswith(NOT_MEASURED)
        assert "%{customdata[1]}" in trace.hovertemplate
    assert "boundary shift integral (BSI)" in _hovers(rate)[1]
    assert "pbvc_from_ses-01.json" in _hovers(rate)[1]
    assert "%{customdata[2]}" in rate.hovertemplate


def test_hover_text_wraps_long_provenance_and_tolerates_old_tables() -> None:
    from ui import figures as ui_figures

    table = pd.DataFrame({"acq_date": pd.to_datetime(["2020-01-01"]), "lesion_count": [3.0],
                          "lesion_volume_ml": [1.0], "session_id": ["ses-01"],
                          "compared_with": [""], "new": [np.nan], "enlarging": [np.nan]})
    fig = ui_figures.measured_figure(table)  # made before the provenance columns existed
    assert fig.data[0].customdata[0][-1] == "provenance not recorded"
    long = pd.DataFrame({"p": ["word " * 40 + "derivatives/ms_dash/sub-01/ses-01/lesions.csv"]})
    lines = ui_figures._provenance_hover(long, "p")[0].split("<br>")
    assert len(lines) > 1 and lines[-1].endswith("derivatives/ms_dash/sub-01/ses-01/lesions.csv")


def test_results_of_another_segmentation_model_are_not_measured(
        measured_study: list[Visit], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ms_core.longitudinal.measurements import measured_table

    monkeypatch.delenv("MS_DASH_MODELS")  # the shipped model is active: MODEL made neither
    table = measured_table(tmp_path, measured_study)
    assert table.segmentation_provenance.tolist() == [NOT_MEASURED] * 3
