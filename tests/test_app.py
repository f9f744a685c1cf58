"""End-to-end tests of app.py and its pages with Streamlit's AppTest (no browser).

The app runs against the small demo study of ``conftest.small_study``; ``MS_DASH_STUDY`` points
the sidebar at it. Custom components do not render under AppTest: the NiiVue viewer shows up as
a ``component_instance`` element whose arguments are checked instead.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from ms_core.foundation import jobs, state_keys
from ms_core.foundation.errors import InputError
from ms_core.study.derivatives import truth_dir
from ms_core.study.layout import image_path, load_study
from tests.conftest import copy_study
from ui import jobs as ui_jobs

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "app.py"
TIMEOUT_S = 60


def _app(study: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("MS_DASH_STUDY", str(study))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S)
    at.run()
    return at


def _viewer_args(at: AppTest) -> dict[str, Any] | None:
    """The viewer's first pane as drawn (``filename``, ``overlays`` or None, ``view_mode``,
    ``n_panes``), or None when no viewer was drawn."""
    for el in at.main:
        proto = getattr(el, "proto", None)
        if getattr(el, "type", "") == "component_instance" and proto is not None \
                and "niivue" in proto.component_name:
            spec = json.loads(json.loads(proto.json_args)["spec"])
            pane = spec["panes"][0]
            return {"filename": pane["image_name"], "overlays": pane["overlays"] or None,
                    "view_mode": spec["view_mode"], "n_panes": len(spec["panes"])}
    return None


def _finish_job(at: AppTest, key: str, timeout_s: float = 300) -> None:
    """Wait for the background job ``key`` started by a button, check it succeeded, then run
    the page again (as its progress fragment does when the job ends)."""
    job = jobs.wait(key, timeout_s)
    assert job.status == "done", job.error
    jobs.forget(key)
    at.run()


def _summary(at: AppTest) -> dict[str, str]:
    frame = at.table[0].value
    return dict(zip(frame["field"], frame["value"], strict=True))


def test_patient_page_shows_viewer_summary_and_lesions(small_study: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    at = _app(small_study, monkeypatch)
    assert not at.exception
    assert not at.error
    assert at.title[0].value == "Patient sub-01"
    assert [s.value for s in at.sidebar.selectbox] == ["sub-01", "ses-01"]
    assert at.session_state[state_keys.STUDY_ROOT] == str(small_study)
    assert at.session_state[state_keys.PARTICIPANT] == "sub-01"
    assert at.session_state[state_keys.SESSION] == "ses-01"

    args = _viewer_args(at)
    assert args is not None
    assert args["filename"] == "sub-01_ses-01_FLAIR.nii.gz"
    assert args["view_mode"] == "multiplanar" and args["n_panes"] == 1
    assert len(args["overlays"]) == 1 and args["overlays"][0]["colormap"] == "red"
    assert any("ground truth" in c.value for c in at.caption)

    summary = _summary(at)
    assert summary["Date"] == "2018-06-09"
    assert summary["EDSS"] == "3.5"
    assert summary["Field strength"] == "1.5 T"
    assert summary["FLAIR voxel size (mm)"] == "0.9 × 0.9 × 3"
    assert len(summary["FLAIR orientation"]) == 3

    lesions = at.dataframe[0].value
    assert lesions.columns.tolist() == ["lesion_id", "location", "status", "volume_ml"]
    assert [m.label for m in at.metric] == ["Lesions", "Total lesion volume", "New or enlarging"]
    assert at.sidebar.expander[0].label == "Study issues (0)"


def test_t1w_switch_and_other_patient(small_study: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    at = _app(small_study, monkeypatch)
    at.radio(key=state_keys.VIEW_MODALITY).set_value("T1w").run()
    assert not at.exception
    assert _viewer_args(at)["filename"] == "sub-01_ses-01_T1w.nii.gz"  # type: ignore[index]
    # Reruns go through the router too (ui.helpers.ensure_routed): the sidebar is still there.
    assert len(at.sidebar.selectbox) == 2

    at.sidebar.selectbox(key=state_keys.patient_picker(str(small_study))).set_value(
        "sub-02").run()
    assert at.session_state[state_keys.PARTICIPANT] == "sub-02"
    # Patients share session ids: the Visit picker must be sub-02's own, showing its dates
    # (a shared widget kept sub-01's labels in the browser).
    picker = at.sidebar.selectbox(key=state_keys.visit_picker(str(small_study), "sub-02"))
    dates = {v.session_id: v.acq_date.isoformat()
             for v in load_study(small_study).visits["sub-02"]}
    assert picker.options == [f"{sid} · {d}" for sid, d in dates.items()]
    assert picker.value == at.session_state[state_keys.SESSION] == "ses-01"
    assert (state_keys.visit_picker(str(small_study), "sub-01")
            != state_keys.visit_picker(str(small_study), "sub-02"))
    picker.set_value("ses-03").run()
    assert not at.exception
    assert at.session_state[state_keys.SESSION] == "ses-03"
    assert at.title[0].value == "Patient sub-02"
    assert _summary(at)["Date"] == dates["ses-03"] == "2023-02-05"


def test_another_study_gets_its_own_patient_labels(small_study: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # Same participant ids, other arms: the Patient picker must show the new study's labels.
    other = tmp_path / "other"
    shutil.copytree(small_study, other)
    tsv = other / "participants.tsv"
    rows = [line.split("\t") for line in tsv.read_text().splitlines()]
    arm = rows[0].index("trial_arm")
    for row in rows[1:]:
        row[arm] = "open-label extension"
    tsv.write_text("\n".join("\t".join(r) for r in rows) + "\n")
    monkeypatch.setenv("MS_DASH_STUDY_ROOTS", os.pathsep.join([str(small_study), str(other)]))
    at = _app(small_study, monkeypatch)
    first = at.sidebar.selectbox(key=state_keys.patient_picker(str(small_study))).options[0]
    assert "open-label extension" not in first
    at.sidebar.text_input(key=state_keys.STUDY_ROOT).set_value(str(other)).run()
    assert not at.exception
    picker = at.sidebar.selectbox(key=state_keys.patient_picker(str(other)))
    assert picker.options[0].startswith("sub-01 · open-label extension")
    assert picker.value == at.session_state[state_keys.PARTICIPANT] == "sub-01"


def test_a_study_outside_the_study_roots_is_not_opened(small_study: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # Default roots: the study the app started with. A copy beside it, reached directly or
    # through "..", or through a symbolic link inside it, is refused with a message.
    other = tmp_path / "other"
    shutil.copytree(small_study, other)
    monkeypatch.delenv("MS_DASH_STUDY_ROOTS", raising=False)
    at = _app(small_study, monkeypatch)
    for attempt in (other, small_study / ".." / other.name):
        at.sidebar.text_input(key=state_keys.STUDY_ROOT).set_value(str(attempt)).run()
        assert not at.exception
        assert "outside the allowed study folders" in at.error[0].value
        assert not at.sidebar.selectbox  # no patient of the other study is listed


def test_opening_a_visit_is_audited_once_and_the_trail_is_on_the_models_page(
        small_study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ms_core.study import audit

    log = tmp_path / "audit.jsonl"
    monkeypatch.setenv("MS_DASH_AUDIT_LOG", str(log))
    at = _app(small_study, monkeypatch)
    at.run()  # a rerun of the same visit adds nothing
    trail = audit.read_log(log, study=small_study)
    assert list(trail.action) == ["opened"], trail
    pid, sid = at.session_state[state_keys.PARTICIPANT], at.session_state[state_keys.SESSION]
    assert (trail.participant_id[0], trail.session_id[0]) == (pid, sid)
    assert trail.user[0].startswith("local:")
    at.sidebar.selectbox(key=state_keys.patient_picker(str(small_study))).set_value(
        "sub-02").run()
    assert len(audit.read_log(log)) == 2
    at.switch_page("pages/models.py").run()
    assert not at.exception
    assert "Audit trail" in [h.value for h in at.subheader]
    shown = at.dataframe[-1].value
    assert list(shown.action) == ["opened", "opened"] and shown.participant_id.iloc[0] == "sub-02"


def test_the_demo_is_analysed_in_the_background_first_patient_first(
        small_study: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ms_core.services import batch

    done: list[str] = []

    def fake_analyse(root: Path, visits: Any, progress: Any) -> None:
        progress(0.5, "Segmenting…")
        done.append(visits[0].participant_id)

    monkeypatch.setattr(batch, "analyse_patient", fake_analyse)
    monkeypatch.setenv("MS_DASH_DEMO_AUTORUN", "1")
    key = f"demo/@{small_study}"
    jobs.forget(key)
    at = _app(small_study, monkeypatch)
    assert not at.exception
    job = jobs.wait(key, 30)
    assert job.status == "done", job.error
    assert done == sorted(load_study(small_study).participants)  # first patient first
    assert job.label == "analysing the demo"
    at.run()  # once per server process: not started again
    assert done == sorted(load_study(small_study).participants)
    jobs.forget(key)
    monkeypatch.setenv("MS_DASH_DEMO_AUTORUN", "0")
    _app(small_study, monkeypatch)
    assert jobs.get(key) is None


def test_demo_analysis_reports_progress_per_patient_and_goes_past_a_failure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ms_core.services import batch

    def fake_analyse(root: Path, visits: Any, progress: Any) -> None:
        if visits[0] == "b":
            raise InputError(None, "unreadable FLAIR")
        progress(1.0, "done")

    monkeypatch.setattr(batch, "analyse_patient", fake_analyse)
    seen: list[tuple[float, str]] = []
    failed = batch.analyse_study(tmp_path, {"a": ["a"], "b": ["b"], "c": ["c"]},
                                 lambda f, text: seen.append((f, text)), label="analysing the demo")
    assert failed == ["b"]
    assert seen[0] == (1 / 3, "analysing the demo: 1 of 3 patients (a: done)")
    assert seen[-1] == (1.0, "analysing the demo: 2 of 3 patients done")


def test_timeline_page_draws_edss_and_volume_charts(small_study: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    at = _app(small_study, monkeypatch)
    at.sidebar.selectbox(key=state_keys.patient_picker(str(small_study))).set_value(
        "sub-02").run()
    at.switch_page("pages/timeline.py").run()
    assert not at.exception
    assert at.title[0].value == "Timeline of sub-02"
    charts = at.get("plotly_chart")
    assert len(charts) == 2
    edss = json.loads(charts[0].proto.spec)
    names = [trace.get("name") for trace in edss["data"]]
    assert names == ["EDSS", "Relapses since last visit"]
    assert edss["data"][0]["line"]["shape"] == "hv"
    assert any(s.get("type") == "rect" for s in edss["layout"]["shapes"])  # DMT band
    table = at.dataframe[0].value
    assert table["session_id"].tolist() == ["ses-01", "ses-02", "ses-03"]
    assert table["brain_volume_ml"].notna().all()


@pytest.mark.parametrize("keep_bytes", [200, 20], ids=["cut_in_data", "cut_in_header"])
def test_truncated_flair_shows_error_and_page_still_renders(small_study: Path,
                                                           tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           keep_bytes: int) -> None:
    study = shutil.copytree(small_study, tmp_path / "study")
    flair = image_path(study, "sub-01", "ses-01", "FLAIR")
    flair.write_bytes(flair.read_bytes()[:keep_bytes])
    at = _app(study, monkeypatch)
    assert not at.exception
    assert any(flair.name in e.value for e in at.error)
    # load_study reads headers only: a cut in the voxel data is found by the page alone, a cut
    # in the header (20 bytes of gzip cannot hold the 348-byte header) is also a study issue,
    # listed on the page as a warning. Where 200 bytes cut depends on how well the image
    # compresses.
    if keep_bytes == 20:
        assert any(flair.name in w.value for w in at.warning)
    assert at.sidebar.expander[0].label == f"Study issues ({len(at.warning)})"
    # The rest of the page still renders: summary, T1w still readable, lesions table.
    summary = _summary(at)
    assert summary["FLAIR image"] == "unreadable"
    assert summary["T1w orientation"]
    assert _viewer_args(at) is None
    assert len(at.dataframe) == 1
    at.radio(key=state_keys.VIEW_MODALITY).set_value("T1w").run()
    assert not at.exception
    assert _viewer_args(at) is not None


def test_bad_ground_truth_files_show_errors_on_both_pages(small_study: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    study = shutil.copytree(small_study, tmp_path / "study")
    truth = truth_dir(study, "sub-01", "ses-01")
    (truth / "truth.json").write_text("{not json", encoding="utf-8")
    labels = truth / "lesion_labels.nii.gz"
    labels.write_bytes(labels.read_bytes()[:30])
    at = _app(study, monkeypatch)
    assert not at.exception
    errors = " ".join(e.value for e in at.error)
    assert "truth.json" in errors and labels.name in errors
    assert _viewer_args(at) is not None  # the FLAIR still shows, without overlay
    assert _viewer_args(at)["overlays"] is None  # type: ignore[index]
    assert _summary(at)["EDSS"] == "3.5"

    (truth / "truth.json").write_text('{"lesions": {"1": "x"}}', encoding="utf-8")
    at.run()
    assert not at.exception
    assert any("truth.json" in e.value and "lesion list" in e.value for e in at.error)

    at.switch_page("pages/timeline.py").run()
    assert not at.exception
    assert len(at.get("plotly_chart")) == 2  # the other visits still have volumes


def test_missing_study_folder_shows_error(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    at = _app(tmp_path / "no_such_study", monkeypatch)
    assert not at.exception
    assert any("study folder not found" in e.value for e in at.error)
    assert not at.title  # no page ran


@pytest.mark.skipif(not (REPO / "models_onnx" / "manifest.json").exists(),
                    reason="no exported segmentation model")
def test_segment_button_runs_the_network_and_shows_its_result(
        small_study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study = tmp_path / "study"
    shutil.copytree(small_study, study)
    at = _app(study, monkeypatch)
    assert "not been segmented" in " ".join(m.value for m in at.markdown)
    button = next(b for b in at.button if b.label == "Segment this visit")
    button.click().run()
    _finish_job(at, ui_jobs.job_key("segment", study, "sub-01", "ses-01"))
    assert not at.exception and not at.error
    assert any(m.label == "Lesions found" for m in at.metric)
    assert any("sha256" in c.value for c in at.caption)
    # The lesion load carries the range the real validation gives (model card).
    from ms_core.longitudinal.measurements import plausible_volume_ml
    from ms_core.segmentation.model_store import volume_ratio_range

    shown = next(m for m in at.metric if m.label == "Lesion volume")
    span = plausible_volume_ml(float(str(shown.value).split()[0]), volume_ratio_range())
    assert span is not None
    caption = next(c.value for c in at.caption if c.value.startswith("plausible "))
    lo, hi = (float(v) for v in caption.removeprefix("plausible ").removesuffix(" ml")
              .split("–"))
    assert lo == pytest.approx(span[0], abs=0.06) and hi == pytest.approx(span[1], abs=0.06)
    assert (study / "derivatives" / "ms_dash" / "sub-01" / "ses-01" / "lesion_mask.nii.gz").exists()
    at.radio(key=state_keys.VIEW_OVERLAY).set_value("Probability").run()
    args = _viewer_args(at)
    assert args is not None and args["overlays"][0]["name"] == "lesion_prob.nii.gz"


def test_compare_visits_then_timeline_shows_measurements(
        segmented_study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # ses-01 and ses-02 have stored segmentations: the comparison reuses them.
    study = copy_study(segmented_study, tmp_path / "study")
    at = _app(study, monkeypatch)
    at.sidebar.selectbox(key=state_keys.visit_picker(str(study), "sub-01")).set_value(
        "ses-02").run()
    assert not at.exception
    checklist = at.dataframe[1].value
    assert checklist["item"].str.contains("periventricular").any()
    button = next(b for b in at.button if b.label == "Compare with ses-01")
    button.click().run()
    _finish_job(at, ui_jobs.job_key("compare", study, "sub-01", "ses-01", "ses-02"))
    assert not at.exception and not at.error
    labels = {m.label for m in at.metric}
    assert {"New", "Enlarging", "Shrinking", "Disappeared"} <= labels
    assert any("registration QC" in c.value for c in at.caption)
    at.radio(key=state_keys.VIEW_OVERLAY).set_value("Changed voxels").run()
    args = _viewer_args(at)
    assert args is not None and args["overlays"][0]["name"] == "change_mask.nii.gz"

    at.switch_page("pages/timeline.py").run()
    assert not at.exception
    measured = at.dataframe[1].value
    assert measured["segmented"].tolist() == [True, True, False]
    assert measured["compared_with"].tolist()[1] == "ses-01"
    assert measured["new_or_enlarging"].notna().tolist() == [False, True, False]
    assert any(b.label.startswith("Analyse this patient (1 visit(s) to segment, 1 interval")
               for b in at.button)
    history = at.dataframe[2].value  # persistent lesion ids across the compared visits
    assert {"persistent_id", "location", "ses-01", "ses-02"} <= set(history.columns)
    assert history["ses-01"].notna().any() and history["ses-02"].notna().any()


def test_timeline_shows_brain_atrophy_pending_then_measured(
        small_study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    import ms_core.longitudinal.atrophy as atrophy
    import ms_core.longitudinal.tracking as longitudinal
    import ms_core.segmentation.segment as segment
    from ms_core.longitudinal.pbvc import PBVCResult
    from ms_core.segmentation.tissue import TissueVolumes

    study = tmp_path / "study"
    shutil.copytree(small_study, study)
    at = _app(study, monkeypatch)
    at.switch_page("pages/timeline.py").run()
    assert not at.exception
    captions = " ".join(c.value for c in at.caption)
    assert ("Brain atrophy pending (not measured yet): brain volume of ses-01, ses-02, ses-03; "
            "PBVC of ses-01 → ses-02, ses-02 → ses-03.") in captions
    assert len(at.get("plotly_chart")) == 2  # EDSS and ground truth: nothing measured yet
    button = next(b for b in at.button if b.label.startswith("Analyse this patient"))
    assert "3 brain volume(s) and 2 PBVC interval(s) to measure" in button.label

    # Segmentation and tracking are tested above (stubbed here); the atrophy numerics are
    # validated in test_atrophy.py (stubbed here: about 25 s per visit). Storage, reading back,
    # the figure and the table are the real ones.
    brains = iter([1150.0, 1140.0, 1130.0])

    def fake_tissue(volume: Any, **_: Any) -> TissueVolumes:
        brain = next(brains)
        return TissueVolumes(brain, 650.0, brain - 650.0, 1500.0 - brain, 1500.0, brain / 1500,
                             0.0)

    def fake_pbvc(baseline: Any, followup: Any, **kw: Any) -> PBVCResult:
        return PBVCResult(-0.9, kw["method"], 0.98, 1150.0, -10.35, np.eye(4))

    monkeypatch.setattr(segment, "segment_visit", lambda *a, **k: None)
    monkeypatch.setattr(longitudinal, "track_visits", lambda *a, **k: None)
    monkeypatch.setattr(atrophy, "tissue_volumes", fake_tissue)
    monkeypatch.setattr(atrophy, "percent_brain_volume_change", fake_pbvc)
    button.click().run()
    _finish_job(at, ui_jobs.job_key("analyse", study, "sub-01"), timeout_s=120)
    assert not at.exception and not at.error
    assert not any("Brain atrophy pending" in c.value for c in at.caption)
    charts = at.get("plotly_chart")
    assert len(charts) == 3
    figure = json.loads(charts[2].proto.spec)
    assert [t["name"] for t in figure["data"]] == ["brain volume (ml)", "BPF", "PBVC (%/year)"]
    assert figure["data"][2]["type"] == "bar"
    assert figure["layout"]["yaxis2"]["title"]["text"] == "BPF"  # BPF on a second axis
    measured = at.dataframe[1].value
    assert measured["brain_volume_ml"].tolist() == [1150.0, 1140.0, 1130.0]
    assert measured["bpf"].tolist() == pytest.approx([1150 / 1500, 1140 / 1500, 1130 / 1500])
    assert measured["pbvc_pct"].tolist()[1:] == [-0.9, -0.9]
    assert measured["pbvc_pct_per_year"].notna().tolist() == [False, True, True]
    assert measured["segmented"].tolist() == [False, False, False]
    assert any(b.label.startswith("Analyse this patient (3 visit(s) to segment")
               and "0 brain volume(s) and 0 PBVC" in b.label for b in at.button)


def test_segmenting_runs_in_the_background_and_other_pages_render_meanwhile(
        small_study: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ui import helpers as ui_helpers

    reported, release = threading.Event(), threading.Event()

    def slow_segment(root: Path, visit: Any, progress: Any = None) -> None:
        progress(0.4)
        reported.set()
        if not release.wait(TIMEOUT_S):
            raise TimeoutError("the test never released the job")

    monkeypatch.setattr(ui_helpers, "segment_visit", slow_segment)  # writes nothing
    key = ui_jobs.job_key("segment", small_study, "sub-01", "ses-01")
    at = _app(small_study, monkeypatch)
    try:
        next(b for b in at.button if b.label == "Segment this visit").click().run()
        assert reported.wait(TIMEOUT_S)
        at.run()
        assert not at.exception
        assert "Segment this visit" not in [b.label for b in at.button]  # progress instead
        bars = [p.proto for p in at.main.get("progress")]
        assert len(bars) == 1 and bars[0].value == 40
        assert bars[0].text.startswith("segmenting sub-01 ses-01: Segmenting lesions… 40%")
        running = "Running: segmenting sub-01 ses-01 — 40 %"
        assert running in [c.value for c in at.sidebar.caption]

        at.switch_page("pages/cohort.py").run()  # the session is not blocked by the job
        assert not at.exception
        assert at.title[0].value == "Cohort / trial"
        assert running in [c.value for c in at.sidebar.caption]  # on every page
        assert jobs.get(key).status == "running"  # type: ignore[union-attr]
    finally:
        release.set()
    assert jobs.wait(key, TIMEOUT_S).status == "done"
    at.switch_page("pages/patient.py").run()
    assert not at.exception
    assert "Segment this visit" in [b.label for b in at.button]  # the fake stored nothing
    assert not at.main.get("progress") and not at.sidebar.caption
    jobs.forget(key)


def test_failed_job_shows_its_error_once(small_study: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from ui import helpers as ui_helpers

    flair = small_study / "sub-01" / "ses-01" / "anat" / "sub-01_ses-01_FLAIR.nii.gz"

    release = threading.Event()

    def broken(root: Path, visit: Any, progress: Any = None) -> None:
        release.wait(TIMEOUT_S)  # fail only after the click's run has drawn the progress
        raise InputError(flair, "not a NIfTI file")

    monkeypatch.setattr(ui_helpers, "segment_visit", broken)
    key = ui_jobs.job_key("segment", small_study, "sub-01", "ses-01")
    at = _app(small_study, monkeypatch)
    next(b for b in at.button if b.label == "Segment this visit").click().run()
    assert not at.error and at.main.get("progress")
    release.set()
    assert jobs.wait(key, TIMEOUT_S).status == "failed"
    at.run()
    assert not at.exception
    assert [e.value for e in at.error] == [f"Segmentation failed. {flair}: not a NIfTI file"]
    assert "Segment this visit" in [b.label for b in at.button]  # to try again
    at.run()
    assert not at.error  # shown once
    jobs.forget(key)
