"""Tests for ms_core.synthetic.demo: a realistic, deterministic synthetic study with stored
truth."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from ms_core.foundation.io import load_lesion_mask, load_volume, read_json
from ms_core.imaging.appearance import appearance
from ms_core.study.derivatives import truth_dir
from ms_core.study.layout import image_path, load_study
from ms_core.synthetic import demo
from tests.conftest import SMALL_CONFIG


def _truths(root: Path, pid: str) -> list[dict]:
    return [read_json(p) for p in sorted((root / "derivatives" / "ground_truth" / pid).glob(
        "ses-*/truth.json"))]


@pytest.fixture(scope="module")
def full_plan() -> list[demo.PatientPlan]:
    return demo.plan_study(demo.DemoConfig())


def test_small_study_loads_without_issues(small_study: Path) -> None:
    study = load_study(small_study)
    assert study.issues == ()
    assert set(study.participants) == {"sub-01", "sub-02"}
    assert {p.trial_arm for p in study.participants.values()} == {"control", "treatment"}
    for visits in study.visits.values():
        assert len(visits) == 3
        assert all(set(v.images) == {"FLAIR", "T1w"} for v in visits)
        assert all(v.edss is not None and (v.edss * 2).is_integer() for v in visits)


def test_acquisitions_differ_between_visits_and_sites(small_study: Path) -> None:
    study = load_study(small_study)
    affines = [load_volume(v.images["FLAIR"], "FLAIR").affine
               for v in study.visits["sub-01"]]
    assert not np.allclose(affines[0], affines[1])  # head pose and FOV change per visit
    spacing = {pid: load_volume(vs[0].images["FLAIR"], "FLAIR").spacing_mm
               for pid, vs in study.visits.items()}
    assert spacing["sub-01"] == pytest.approx((0.9, 0.9, 3.0))  # 1.5 T site: 2D FLAIR
    assert spacing["sub-02"] == pytest.approx((1.0, 1.0, 1.0))  # 3 T site: 3D FLAIR


def test_lesion_label_volumes_match_stored_truth(small_study: Path) -> None:
    for pid in ("sub-01", "sub-02"):
        for truth in _truths(small_study, pid):
            sid = truth["session_id"]
            mask = load_lesion_mask(truth_dir(small_study, pid, sid) / "lesion_labels.nii.gz")
            voxel_ml = mask.volume_ml / max(mask.n_voxels, 1)
            present = {les["lesion_id"]: les for les in truth["lesions"]
                       if les["status"] != "disappeared"}
            ids, counts = np.unique(mask.labels[mask.labels > 0], return_counts=True)
            assert set(ids.tolist()) <= set(present)
            for lid, n in zip(ids.tolist(), counts.tolist(), strict=True):
                assert n * voxel_ml == pytest.approx(present[lid]["mask_volume_ml"], abs=1e-4)
            # The analytic volume and the voxelised label agree within partial-volume error:
            # 20 % in total, 30 % per lesion of at least 0.2 ml.
            assert mask.volume_ml == pytest.approx(truth["lesion_volume_ml"], rel=0.20)
            for les in present.values():
                if les["volume_ml"] >= 0.2:
                    assert les["mask_volume_ml"] == pytest.approx(les["volume_ml"], rel=0.30)


def test_atrophy_matches_configured_rate(small_study: Path) -> None:
    generator = read_json(small_study / "derivatives" / "ground_truth" / "generator.json")
    for record in generator["patients"]:
        rate = record["atrophy_pct_per_year"]
        assert 0.3 <= rate <= 1.2
        truths = _truths(small_study, record["participant_id"])
        first, last = truths[0], truths[-1]
        years = last["years_from_baseline"]
        annual = 100 * (1 - (last["brain_volume_ml"] / first["brain_volume_ml"]) ** (1 / years))
        assert annual == pytest.approx(rate, abs=0.01)
        # The stored brain masks (voxelised images) show the same loss within 0.1 %/year.
        measured = 100 * (1 - (last["brain_mask_volume_ml"] / first["brain_mask_volume_ml"])
                          ** (1 / years))
        assert measured == pytest.approx(rate, abs=0.1)
        for t in truths:
            mask = load_lesion_mask(truth_dir(small_study, record["participant_id"],
                                              t["session_id"]) / "brain_mask.nii.gz")
            assert mask.volume_ml == pytest.approx(t["brain_mask_volume_ml"], rel=1e-6)
            assert mask.volume_ml == pytest.approx(t["brain_volume_ml"], rel=0.08)
            assert 0.7 < t["bpf"] < 0.95


def test_lesions_are_bright_on_flair_and_dark_on_t1(small_study: Path) -> None:
    for pid in ("sub-01", "sub-02"):
        sid = "ses-01"
        flair = load_volume(image_path(small_study, pid, sid, "FLAIR"), "FLAIR")
        t1 = load_volume(image_path(small_study, pid, sid, "T1w"), "T1w")
        labels = load_lesion_mask(truth_dir(small_study, pid, sid) / "lesion_labels.nii.gz")
        brain = load_lesion_mask(truth_dir(small_study, pid, sid) / "brain_mask.nii.gz")
        lesion = ndi.binary_erosion(labels.labels > 0)  # lesion cores, no partial volume
        tissue = (brain.labels > 0) & (labels.labels == 0)
        assert flair.data[lesion].mean() > 1.15 * flair.data[tissue].mean()
        # As bright as real lesions: patient26 of open_ms_data has a median of 1.33 x white
        # matter, per-lesion means 1.19-1.44 (bench/flair_appearance.py), with graded edges.
        look = appearance(flair.data, labels.labels > 0, brain.labels > 0)
        assert 1.15 < look["lesion_median"] < 1.6, look
        assert look["inner_rim"] > look["ring_1"] > look["ring_2"], look
        # T1 lies on its own grid: sample it at the FLAIR lesion voxels' world positions.
        to_t1 = np.linalg.inv(t1.affine) @ flair.affine
        ijk = np.argwhere(lesion).T
        t1_at = ndi.map_coordinates(t1.data, to_t1[:3, :3] @ ijk + to_t1[:3, 3:4], order=1)
        wm_level = np.percentile(t1.data[t1.data > 0], 90)
        assert np.median(t1_at) < 0.85 * wm_level


def test_rendering_is_deterministic_and_independent_of_workers(small_study: Path,
                                                               tmp_path: Path) -> None:
    plan = demo.plan_study(dataclasses.replace(SMALL_CONFIG, n_patients=1))[0]
    one_visit = dataclasses.replace(plan, visits=plan.visits[:1])
    demo.render_patient(one_visit, tmp_path, SMALL_CONFIG.seed)
    for modality in ("FLAIR", "T1w"):
        again = image_path(tmp_path, "sub-01", "ses-01", modality).read_bytes()
        built = image_path(small_study, "sub-01", "ses-01", modality).read_bytes()
        assert again == built
    assert (truth_dir(tmp_path, "sub-01", "ses-01") / "truth.json").read_bytes() == (
        truth_dir(small_study, "sub-01", "ses-01") / "truth.json").read_bytes()


def test_full_plan_has_the_promised_variety(full_plan: list[demo.PatientPlan]) -> None:
    assert len(full_plan) == 12
    assert {p.trial_arm for p in full_plan} == {"control", "treatment"}
    assert sum(p.trial_arm == "control" for p in full_plan) == 6
    statuses: set[str] = set()
    locations: set[str] = set()
    changed_scanner = 0
    for p in full_plan:
        assert 3 <= len(p.visits) <= 5
        span = p.visits[-1].years
        assert 2.0 <= span <= 6.0
        assert 0.3 <= p.atrophy_pct_per_year <= 1.2
        assert all(v.edss in demo.EDSS_STEPS for v in p.visits)
        changed_scanner += len({v.scanner for v in p.visits}) > 1
        locations |= {les.location for les in p.lesions}
        for v in p.visits:
            statuses |= set(v.status.values())
    assert changed_scanner == 1
    assert locations == set(demo.LOCATIONS)
    assert {"new", "enlarging", "shrinking", "stable"} <= statuses


def test_plan_is_deterministic_by_seed() -> None:
    cfg = dataclasses.replace(SMALL_CONFIG, n_patients=3)
    a, b = demo.plan_study(cfg), demo.plan_study(cfg)
    c = demo.plan_study(dataclasses.replace(cfg, seed=cfg.seed + 1))
    assert [dataclasses.asdict(v) for p in a for v in p.visits] == [
        dataclasses.asdict(v) for p in b for v in p.visits]
    assert [v.acq_date for p in a for v in p.visits] != [v.acq_date for p in c for v in p.visits]


def test_truth_statuses_are_consistent(small_study: Path) -> None:
    for pid in ("sub-01", "sub-02"):
        for truth in _truths(small_study, pid)[1:]:
            for les in truth["lesions"]:
                if les["status"] == "new":
                    assert les["volume_previous_ml"] == 0.0 < les["volume_ml"]
                elif les["status"] == "enlarging":
                    assert les["volume_ml"] >= 1.29 * les["volume_previous_ml"]
                elif les["status"] == "disappeared":
                    assert les["volume_ml"] == 0.0


def test_lesion_pv_of_a_ball_matches_its_volume() -> None:
    # Reference: a smooth ball (no roughness) of radius 4 mm has volume 4/3 pi 64 mm^3.
    ball = demo.LesionSpec(1, "deep_white_matter", np.zeros(3), np.eye(3), np.full(3, 4.0),
                           np.eye(3)[:1], np.zeros(1), np.zeros(1), 0.5)
    assert demo.lesion_volume_ml(ball, 1.0) == pytest.approx(4 / 3 * np.pi * 64 / 1000, rel=0.02)
    assert demo.lesion_volume_ml(ball, 0.0) == 0.0


def test_failed_build_leaves_previous_study_untouched(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "study"
    out.mkdir()
    (out / "keep.txt").write_text("old")

    def boom(_args: object) -> dict:
        raise RuntimeError("render crashed")

    monkeypatch.setattr(demo, "_render_job", boom)
    with pytest.raises(RuntimeError):
        demo.build_demo(out, dataclasses.replace(SMALL_CONFIG, n_patients=1, workers=1))
    assert [p.name for p in tmp_path.iterdir()] == ["study"]
    assert (out / "keep.txt").read_text() == "old"


def test_images_are_int16_like_scanner_output(small_study: Path) -> None:
    img = nib.load(image_path(small_study, "sub-01", "ses-01", "FLAIR"))
    assert img.get_data_dtype() == np.int16
    assert json.loads((small_study / "dataset_description.json").read_text())["Name"]
