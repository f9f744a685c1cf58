"""Tests for ms_core.services.batch: resumable, failure-tolerant study processing, local and Ray."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from ms_core.foundation.errors import InputError
from ms_core.lesions.features import PROGNOSIS_FEATURES
from ms_core.services.batch import BatchConfig, cohort_dir, run_batch
from ms_core.study.derivatives import derivatives_dir
from ms_core.study.layout import image_path

REPO = Path(__file__).resolve().parents[1]
#: One patient, the classical segmentation (fast); tracking and atrophy resume the
#: same way (status checks) and have their own storage tests.
CHEAP = ["--participants", "sub-01", "--stages", "segment,features",
         "--seg-method", "baseline", "--workers", "1"]


def _batch_cli(study: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "ms_core", "batch", str(study), *extra],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _outputs(study: Path) -> dict[str, bytes]:
    """Every result file of the pipeline except provenance (which holds times and seconds)."""
    root = study / "derivatives" / "ms_dash"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.suffix != ".json" and not p.name.startswith(".")
            and "cohort" not in p.parts}


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="workers"):
        BatchConfig(workers=0)
    with pytest.raises(ValueError, match="unknown stages"):
        BatchConfig(stages=("segment", "paint"))
    with pytest.raises(ValueError, match="backend"):
        BatchConfig(backend="slurm")  # type: ignore[arg-type]


def _first_two_visits_of_sub01(study: Path) -> None:
    """Keep sub-01's first two visits in its sessions table (the third is never processed)."""
    table = study / "sub-01" / "sub-01_sessions.tsv"
    lines = table.read_text().splitlines(keepends=True)
    table.write_text("".join(lines[:3]))


def test_killed_batch_resumes_to_identical_results(small_study: Path, tmp_path: Path) -> None:
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    for study in (reference, killed):
        shutil.copytree(small_study, study)
        _first_two_visits_of_sub01(study)
    proc = _batch_cli(reference, *CHEAP)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err
    assert json.loads(out)["failures"] == 0

    proc = _batch_cli(killed, *CHEAP)
    first = derivatives_dir(killed, "sub-01", "ses-01") / "provenance.json"
    deadline = time.monotonic() + 600
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # now inside the second visit
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = _batch_cli(killed, *CHEAP)
    out, err = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, err
    report = json.loads((cohort_dir(killed) / "batch_report.json").read_text())
    assert report["skipped_current"]["segment"] >= 1  # the finished visit was not redone
    assert report["done"]["segment"] + report["skipped_current"]["segment"] == 2
    assert _outputs(killed) == _outputs(reference)
    assert (cohort_dir(killed) / "cohort_table.csv").read_bytes() == \
        (cohort_dir(reference) / "cohort_table.csv").read_bytes()
    # Nothing left to do: a third run skips everything.
    third = run_batch(killed, BatchConfig(workers=1, participants=("sub-01",),
                                          stages=("segment",), seg_method="baseline"))
    assert sum(o.done.get("segment", 0) for o in third.outcomes) == 0


def test_one_bad_visit_does_not_stop_the_others(small_study: Path, tmp_path: Path) -> None:
    study = tmp_path / "study"
    shutil.copytree(small_study, study)
    for session in ("ses-01", "ses-02"):
        flair = image_path(study, "sub-01", session, "FLAIR")
        flair.write_bytes(flair.read_bytes()[:2000])  # truncated
    result = run_batch(study, BatchConfig(workers=1, participants=("sub-01",),
                                          stages=("segment", "features"),
                                          seg_method="baseline"))
    failures = result.failures
    assert [(f["stage"], f["visit"]) for f in failures] == [("segment", "ses-01"),
                                                            ("segment", "ses-02")]
    assert all("sub-01_ses-0" in f["error"] for f in failures)  # the message names the file
    outcome = result.outcomes[0]
    assert outcome.done["segment"] == 1  # the third visit was still segmented
    table = pd.read_csv(cohort_dir(study) / "cohort_table.csv")
    assert table.session_id.tolist() == ["ses-01", "ses-02", "ses-03"]
    assert table.lesion_count.isna().tolist() == [True, True, False]
    with pytest.raises(InputError, match="no participants"):
        run_batch(study, BatchConfig(participants=("sub-99",)))


def test_ray_backend_gives_the_local_table(small_study: Path, tmp_path: Path) -> None:
    pytest.importorskip("ray")
    study = tmp_path / "study"
    shutil.copytree(small_study, study)
    local = run_batch(study, BatchConfig(workers=1, stages=("features",))).table
    ray_result = run_batch(study, BatchConfig(workers=2, backend="ray", stages=("features",)))
    assert ray_result.failures == []
    pd.testing.assert_frame_equal(ray_result.table, local)
    assert set(PROGNOSIS_FEATURES) <= set(local.columns)
    assert local.participant_id.nunique() == 2 and local.worsening_risk_2y.between(0, 1).all()
    parquet = pd.read_parquet(cohort_dir(study) / "cohort_table.parquet")
    assert len(parquet) == len(local)


def test_cohort_page_reads_the_merged_table(small_study: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.testing.v1 import AppTest

    study = tmp_path / "study"
    shutil.copytree(small_study, study)
    run_batch(study, BatchConfig(workers=1, stages=("features",)))
    monkeypatch.setenv("MS_DASH_STUDY", str(study))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("pages/cohort.py").run()
    assert not at.exception
    assert any("cohort_table.csv" in c.value for c in at.caption)
    shown = at.dataframe[-1].value
    assert len(shown) == 6 and "worsening_risk_2y" in shown.columns


def test_analyse_patient_reports_progress_in_order_and_stops_at_an_error(
        small_study: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The app's "Analyse this patient" loop with every stage stubbed (they have own tests)."""
    import ms_core.longitudinal.atrophy as atrophy
    import ms_core.longitudinal.tracking as longitudinal
    import ms_core.segmentation.segment as segment
    from ms_core.services.batch import analyse_patient
    from ms_core.study.layout import load_study

    calls: list[str] = []

    def fake_segment(root: Path, visit: object, progress: object = None) -> None:
        calls.append(f"segment {visit.session_id}")  # type: ignore[attr-defined]
        progress(0.5)  # type: ignore[operator]

    monkeypatch.setattr(segment, "segment_visit", fake_segment)
    monkeypatch.setattr(longitudinal, "track_visits",
                        lambda root, a, b: calls.append(f"track {b.session_id}"))
    monkeypatch.setattr(atrophy, "measure_visit_volumes",
                        lambda root, v: calls.append(f"volumes {v.session_id}"))
    monkeypatch.setattr(atrophy, "measure_interval_pbvc",
                        lambda root, a, b: calls.append(f"pbvc {b.session_id}"))
    visits = load_study(small_study).visits["sub-01"]
    reports: list[tuple[float, str]] = []
    analyse_patient(small_study, list(reversed(visits)), lambda f, text: reports.append((f, text)))
    assert calls == ["segment ses-01", "segment ses-02", "segment ses-03", "track ses-02",
                     "track ses-03", "volumes ses-01", "volumes ses-02", "volumes ses-03",
                     "pbvc ses-02", "pbvc ses-03"]
    fractions = [f for f, _ in reports]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert (0.05, "Segmenting ses-01… 50%") in reports  # half of the first of 10 steps
    assert "Comparing ses-02 with ses-01…" in [t for _, t in reports]

    def broken(root: Path, a: object, b: object) -> None:
        raise InputError(small_study / "x.nii.gz", "unreadable")

    calls.clear()
    monkeypatch.setattr(longitudinal, "track_visits", broken)
    with pytest.raises(InputError, match="unreadable"):
        analyse_patient(small_study, visits)
    assert calls == ["segment ses-01", "segment ses-02", "segment ses-03"]
