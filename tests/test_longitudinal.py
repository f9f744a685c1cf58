"""Two-visit tracking: registration, change z-score, lesion matching and the track CLI."""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from ms_core.foundation.domain import Volume
from ms_core.foundation.errors import InputError
from ms_core.foundation.io import load_lesion_mask, save_volume
from ms_core.imaging import preprocess
from ms_core.imaging.anatomy import load_template, synthetic_head
from ms_core.imaging.preprocess import Grid, resample_to_grid
from ms_core.lesions.components import label_components
from ms_core.longitudinal.tracking import (
    CHANGE_COLUMNS,
    TrackParams,
    change_zscore,
    detect_changes,
    match_lesions,
    prepare_pair,
    register_visits,
    track_volumes,
)
from ms_core.segmentation.inference import OnnxModel
from ms_core.segmentation.model_store import load_segmentation_card
from ms_core.segmentation.segment import SegmentParams
from ms_core.services.cli import main
from ms_core.synthetic.synth import anisotropic_affine, sphere_labels


# ------------------------------------------------------------------ lesion matching (pure numpy)
def _match(b: np.ndarray, f: np.ndarray, **kw: Any
           ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    aff = np.eye(4)
    lb, lf = label_components(b, affine=aff), label_components(f, affine=aff)
    pb, pf = b.astype(np.float32), f.astype(np.float32)
    return match_lesions(lb, lf, pb, pf, f & ~b, b & ~f, affine=aff, **kw)


def _balls(shape: tuple[int, int, int], spheres: list[tuple[tuple[float, ...], float]]
           ) -> np.ndarray:
    return sphere_labels(shape, np.eye(4), spheres) > 0


def test_match_classifies_every_status() -> None:
    shape = (60, 60, 60)
    base = _balls(shape, [((10, 10, 10), 3), ((30, 10, 10), 3), ((50, 10, 10), 4),
                          ((10, 40, 10), 3), ((30, 40, 40), 3), ((38, 40, 40), 3),
                          ((10, 50, 50), 4)])
    follow = _balls(shape, [((10, 10, 10), 3),  # stable
                            ((30, 10, 10), 4.5),  # enlarging (3.4x volume)
                            ((50, 10, 10), 2.5),  # shrinking
                            # (10, 40, 10) disappeared
                            ((34, 40, 40), 6),  # two baseline lesions merge
                            ((10, 46, 50), 2.5), ((10, 54, 50), 2.5),  # one splits in two
                            ((45, 50, 30), 3)])  # new
    table, change, ids = _match(base, follow)
    assert list(table.columns) == list(CHANGE_COLUMNS)
    by_pos = {tuple(round(v) for v in r[["centroid_x_mm", "centroid_y_mm", "centroid_z_mm"]]):
              r.status for _, r in table.iterrows()}
    assert by_pos[(10, 10, 10)] == "stable"
    assert by_pos[(30, 10, 10)] == "enlarging"
    assert by_pos[(50, 10, 10)] == "shrinking"
    assert by_pos[(10, 40, 10)] == "disappeared"
    assert by_pos[(45, 50, 30)] == "new"
    assert sorted(table.status) == sorted(["stable", "enlarging", "shrinking", "disappeared",
                                           "merged", "split", "new"])
    assert table.lesion_id.tolist() == list(range(1, 8))
    new = table[table.status == "new"].iloc[0]
    assert new.volume_baseline_ml == 0 and new.volume_followup_ml > 0.1
    assert change[45, 50, 30] == 1 and change[10, 40, 10] == 2 and change[10, 10, 10] == 0
    assert change[50, 10, 10 + 3] == 2  # the shrunk rim is lost tissue
    lid = table.lesion_id[table.status == "new"].iloc[0]
    assert ids[45, 50, 30] == lid and ids[0, 0, 0] == 0
    assert set(np.unique(ids)) == {0, *table.lesion_id}


def test_match_empty_and_single_voxel() -> None:
    empty = np.zeros((8, 8, 8), bool)
    table, change, ids = _match(empty, empty)
    assert len(table) == 0 and not change.any() and not ids.any()
    one = empty.copy()
    one[4, 4, 4] = True
    table, change, ids = _match(empty, one)
    assert table.status.tolist() == ["new"] and change[4, 4, 4] == 1


def test_enlarging_needs_supported_growth_and_ratio() -> None:
    shape = (40, 40, 40)
    base = _balls(shape, [((20, 20, 20), 5)])  # 515 voxels
    follow = _balls(shape, [((20, 20, 20), 5.2)])  # 619 voxels: +20 %, below 30 %
    assert _match(base, follow)[0].status.tolist() == ["stable"]
    assert _match(base, follow, enlarging_ratio=0.1)[0].status.tolist() == ["enlarging"]
    aff = np.eye(4)
    lb, lf = label_components(base, affine=aff), label_components(follow, affine=aff)
    none = np.zeros(shape, bool)  # growth not confirmed by any change evidence
    table, _, _ = match_lesions(lb, lf, base * 1.0, follow * 1.0, none, none, affine=aff,
                             enlarging_ratio=0.1)
    assert table.status.tolist() == ["stable"]


def test_match_rejects_mismatched_grids() -> None:
    a = np.zeros((4, 4, 4), np.int32)
    with pytest.raises(ValueError, match="one grid"):
        match_lesions(a, np.zeros((4, 4, 5), np.int32), a * 1.0, a * 1.0, a > 0, a > 0,
                      affine=np.eye(4))


def test_change_zscore_ignores_global_and_slow_intensity_changes() -> None:
    rng = np.random.default_rng(0)
    base = 1 + 0.05 * rng.standard_normal((40, 40, 40)).astype(np.float32)
    x = np.linspace(0, 1, 40, dtype=np.float32)[:, None, None]
    follow = base * (1.1 + 0.2 * x) + 0.05 * rng.standard_normal(base.shape).astype(np.float32)
    follow[20:23, 20:23, 20:23] += 1.0  # a new 3 mm lesion
    z = change_zscore(follow, base, np.ones(base.shape, bool), spacing_mm=(1.0, 1.0, 1.0))
    assert z[21, 21, 21] > 8
    assert np.mean(np.abs(z[:10]) > 4) < 0.01  # bias and gain change are not "change"
    with pytest.raises(ValueError, match="shapes differ"):
        change_zscore(follow, base[:-1], np.ones(base.shape, bool), spacing_mm=(1, 1, 1))


# ------------------------------------------------------------- end to end on a synthetic head
class _ThresholdSession:
    """Stands in for onnxruntime: lesion probability from normalised FLAIR brightness."""

    def run(self, _outputs: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        flair = next(iter(feeds.values()))[:, :1]
        return [1.0 / (1.0 + np.exp(-(flair - 1.6) * 20.0))]


@functools.lru_cache(maxsize=1)
def _fake_model() -> OnnxModel:
    # The stand-in thresholds FLAIR divided by its brain median, whatever the shipped card says.
    card = dataclasses.replace(load_segmentation_card(), intensity_reference="brain_median")
    return OnnxModel(card, _ThresholdSession(), "fake")


def _head(lesions: list[tuple[tuple[float, float, float], float]]) -> tuple[np.ndarray,
                                                                             np.ndarray]:
    """Skull-stripped synthetic FLAIR at 2 mm in MNI space with bright ball lesions."""
    tpl = load_template()
    img = synthetic_head("FLAIR", with_skull=False)[::2, ::2, ::2].copy()
    aff = tpl.affine @ np.diag([2.0, 2.0, 2.0, 1.0])
    if lesions:
        balls = sphere_labels(img.shape, aff, lesions) > 0
        img[balls] = 1.0
    return img, aff


def _rigid(deg: float, shift_mm: tuple[float, float, float]) -> np.ndarray:
    t = np.deg2rad(deg)
    m = np.eye(4)
    m[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    m[:3, 3] = shift_mm
    return m


LESIONS_BASE = [((-24.0, -10.0, 26.0), 5.0), ((26.0, 4.0, 30.0), 4.0),
                ((-26.0, 10.0, 12.0), 5.0)]
LESIONS_FOLLOW = [((-24.0, -10.0, 26.0), 5.0), ((26.0, 4.0, 30.0), 6.0),  # stable, enlarging
                  ((24.0, -30.0, 36.0), 4.0)]  # new; (-26, 10, 12) disappears


@functools.lru_cache(maxsize=1)
def _pair() -> tuple[Volume, Volume, np.ndarray]:
    """Baseline on its own grid; follow-up moved (5 deg, 4 mm) onto a 1.5 mm LPS grid."""
    b_img, b_aff = _head(LESIONS_BASE)
    f_img, f_aff = _head(LESIONS_FOLLOW)
    move = _rigid(5.0, (4.0, -3.0, 2.0))  # follow-up scanner world = move @ anatomical world
    lps = np.diag([-1.5, -1.5, 1.5, 1.0])
    lps[:3, 3] = [90.0, 110.0, -75.0]
    grid = Grid((120, 150, 110), move @ lps)
    f_scan = resample_to_grid(f_img, move @ f_aff, grid, order=1)
    base = Volume(b_img, b_aff, "FLAIR")
    follow = Volume(f_scan, grid.affine, "FLAIR")
    return base, follow, move


def test_register_visits_recovers_the_head_motion() -> None:
    base, follow, move = _pair()
    f_to_b = register_visits(base, follow)
    # A follow-up world point p is the anatomical point inv(move) p, i.e. baseline world.
    pts = np.array([[0, 0, 0, 1], [40, 30, 20, 1], [-40, -50, 30, 1]], float).T
    err = np.linalg.norm((f_to_b @ pts - np.linalg.inv(move) @ pts)[:3], axis=0)
    assert err.max() < 1.5, err
    preprocess._VISIT_PAIRS.clear()  # register again, not from the process's memo
    assert np.array_equal(f_to_b, register_visits(base, follow))  # deterministic


def test_visit_registration_is_remembered_and_shared_with_atrophy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ms_core.longitudinal import pbvc

    calls: list[float] = []

    def fake_register(fixed: np.ndarray, *args: object, **kw: object) -> np.ndarray:
        assert kw["rigid_only"] is True
        calls.append(float(fixed.sum()))
        out = np.eye(4)
        out[0, 3] = len(calls)  # each registration gives a different answer
        return out

    monkeypatch.setattr(preprocess, "register_affine", fake_register)
    monkeypatch.setattr(preprocess, "_VISIT_PAIRS", preprocess.MatrixMemo())
    head = sphere_labels((30, 30, 30), np.eye(4), [((15.0, 15.0, 15.0), 10.0)]) > 0
    base = Volume(head.astype(np.float32), np.eye(4), "FLAIR")
    follow = Volume(head * 1.1, np.eye(4), "FLAIR")
    first = register_visits(base, follow)
    first[0, 0] = 99.0  # the caller's copy: changing it does not change the memo
    again = register_visits(Volume(base.data.copy(), np.eye(4), "FLAIR"), follow)
    assert len(calls) == 1 and again[0, 3] == 1.0 and again[0, 0] == 1.0
    # The atrophy of the same interval uses the same memo.
    assert np.array_equal(pbvc.register_visit_pair(base, follow), again)
    assert len(calls) == 1
    # Swapped visits, another image, another resolution or seed register again.
    for b, f, kw in ((follow, base, {}), (base, Volume(head * 1.2, np.eye(4), "FLAIR"), {}),
                     (base, follow, {"resolution_mm": 3.0}), (base, follow, {"seed": 1})):
        before = len(calls)
        assert register_visits(b, f, **kw)[0, 3] == before + 1  # type: ignore[arg-type]


def test_track_volumes_finds_new_enlarging_and_disappeared_lesions() -> None:
    base, follow, move = _pair()
    params = TrackParams(segmentation=SegmentParams(skull_stripped=True))
    res = track_volumes(base, follow, params, _fake_model())
    assert res.change_mask.shape == follow.shape and np.array_equal(res.affine, follow.affine)
    assert res.registration.ncc > 0.9
    anat = (np.linalg.inv(move)[:3, :3] @ res.table[["centroid_x_mm", "centroid_y_mm",
                                                      "centroid_z_mm"]].to_numpy().T
            + np.linalg.inv(move)[:3, 3:4]).T

    def status_at(centre_mm: tuple[float, float, float]) -> str:
        d = np.linalg.norm(anat - np.asarray(centre_mm), axis=1)
        assert d.min() < 3.0, (centre_mm, d.min())
        return str(res.table.status.iloc[int(d.argmin())])

    assert status_at((-24.0, -10.0, 26.0)) == "stable"
    assert status_at((26.0, 4.0, 30.0)) == "enlarging"
    assert status_at((24.0, -30.0, 36.0)) == "new"
    assert status_at((-26.0, 10.0, 12.0)) == "disappeared"
    assert sorted(res.table.status) == ["disappeared", "enlarging", "new", "stable"], res.table
    new = res.table[res.table.status == "new"].iloc[0]
    # A 4 mm ball drawn at 2 mm and resampled twice loses its partial-volume rim at threshold.
    ball_ml = 4 / 3 * np.pi * 4.0**3 / 1000
    assert 0.3 * ball_ml < new.volume_followup_ml < 1.2 * ball_ml
    # The change mask carries the new lesion (1) at its follow-up position.
    centre = np.linalg.inv(follow.affine) @ move @ np.array([24.0, -30.0, 36.0, 1.0])
    i, j, k = np.rint(centre[:3]).astype(int)
    assert res.change_mask[i, j, k] == 1
    assert (res.change_mask == 2).sum() > 0 and set(np.unique(res.change_mask)) <= {0, 1, 2}
    assert res.qc["protocol_warnings"]  # voxel size and orientation changed: flagged


def test_intensity_led_new_lesion_is_reported_only_when_asked_and_only_if_new() -> None:
    # Faint lesions (normalised FLAIR 1.35-1.55, under the fake network's 1.6), none of them
    # segmented: one appears at follow-up, one is there at both visits, one was there and
    # brightened. Only the first is a new lesion.
    faint_new, faint_stable, brightened = (20.0, -40.0, 20.0), (-20.0, 30.0, 20.0), \
        (-28.0, -30.0, 30.0)
    b_img, aff = _head(LESIONS_BASE)
    f_img, _ = _head(LESIONS_BASE)
    rng = np.random.default_rng(3)
    for img, spots in ((b_img, [(faint_stable, 1.45), (brightened, 1.35)]),
                       (f_img, [(faint_stable, 1.45), (faint_new, 1.45), (brightened, 1.55)])):
        head = img > 0
        level = np.median(img[head])
        for centre, ratio in spots:
            ball = sphere_labels(img.shape, aff, [(centre, 4.0)]) > 0
            img[ball] = np.maximum(img[ball], ratio * level)
        img[head] += 0.02 * level * rng.standard_normal(int(head.sum()))
    base, follow = Volume(b_img, aff, "FLAIR"), Volume(f_img, aff, "FLAIR")
    seg = SegmentParams(skull_stripped=True)
    plain = track_volumes(base, follow, TrackParams(segmentation=seg, intensity_new_z=None),
                          _fake_model())
    assert set(plain.table.status) == {"stable"}  # the faint lesions are not segmented
    led = track_volumes(base, follow, TrackParams(segmentation=seg, intensity_new_z=4.0),
                        _fake_model())
    new = led.table[led.table.status == "new"]
    assert len(new) == 1, led.table
    centre = new[["centroid_x_mm", "centroid_y_mm", "centroid_z_mm"]].to_numpy()[0]
    assert np.linalg.norm(centre - faint_new) < 2.0
    assert 0.5 * 4 / 3 * np.pi * 64 / 1000 < new.volume_followup_ml.iloc[0]
    assert new.confidence.iloc[0] < 0.1  # the network gave it almost no probability
    assert new.evidence.iloc[0] == "intensity change"
    assert set(led.table.evidence[led.table.status != "new"]) == {"segmentation"}
    i, j, k = np.rint(np.linalg.inv(aff) @ [*faint_new, 1.0])[:3].astype(int)
    assert led.change_mask[i, j, k] == 1 and plain.change_mask[i, j, k] == 0
    for centre in (faint_stable, brightened):
        ijk = np.rint(np.linalg.inv(aff) @ [*centre, 1.0])[:3].astype(int)
        assert led.change_mask[tuple(ijk)] == 0, centre
    # The segmented lesions are judged as before.
    assert len(led.table) == len(plain.table) + 1
    with pytest.raises(InputError, match="intensity-led"):
        TrackParams(intensity_new_z=0.0)


def test_track_cli_writes_contract_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    import ms_core.longitudinal.tracking as lon

    base, follow, _ = _pair()
    save_volume(tmp_path / "a.nii.gz", base.data, base.affine)
    save_volume(tmp_path / "b.nii.gz", follow.data, follow.affine)
    monkeypatch.setattr(lon, "load_onnx_model", lambda card, device: _fake_model())
    out = tmp_path / "out"
    rc = main(["track", "--baseline-flair", str(tmp_path / "a.nii.gz"), "--followup-flair",
               str(tmp_path / "b.nii.gz"), "--skull-stripped", "--out", str(out)])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["status_counts"]["new"] == 1
    mask = load_lesion_mask(out / "change_mask.nii.gz")
    assert mask.labels.shape == follow.shape and np.allclose(mask.affine, follow.affine)
    assert (mask.labels == 1).any() and set(np.unique(mask.labels)) <= {0, 1, 2}
    table = pd.read_csv(out / "lesion_changes.csv")
    assert list(table.columns[:6]) == ["lesion_id", "status", "volume_baseline_ml",
                                       "volume_followup_ml", "centroid_mm", "confidence"]
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["inputs"]["followup_flair"]["sha256"] and prov["parameters"]["method"] == "joint"
    assert prov["parameters"]["intensity_new_z"] == TrackParams.intensity_new_z == 5.0
    assert set(prov["seconds"]) >= {"registration", "segmentation", "tracking"}
    assert "atrophy" not in prov  # only on request (track_files(..., atrophy=...))


def test_track_files_adds_an_atrophy_block_with_the_tracked_lesions_filled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ms_core.longitudinal.atrophy as atrophy
    import ms_core.longitudinal.tracking as lon
    from ms_core.longitudinal.pbvc import PBVCResult
    from ms_core.segmentation.tissue import TissueVolumes

    base, follow, move = _pair()
    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    save_volume(a, base.data, base.affine)
    save_volume(b, follow.data, follow.affine)
    masks: list[tuple[Volume, np.ndarray | None]] = []

    def fake_tissue(volume: Volume, *, lesion_mask: np.ndarray | None = None,
                    **_: Any) -> TissueVolumes:  # the real one is tested in test_atrophy.py
        masks.append((volume, lesion_mask))
        return TissueVolumes(1100.0, 600.0, 500.0, 400.0, 1500.0, 1100 / 1500, 1.0)

    def fake_pbvc(baseline: Volume, followup: Volume, **kw: Any) -> PBVCResult:
        return PBVCResult(-0.8, kw["method"], 0.97, 1100.0, -8.8, np.eye(4), ("note",))

    monkeypatch.setattr(atrophy, "tissue_volumes", fake_tissue)
    monkeypatch.setattr(atrophy, "percent_brain_volume_change", fake_pbvc)
    params = TrackParams(segmentation=SegmentParams(skull_stripped=True))
    # The FLAIRs themselves stand in for the T1w: lesions must land where they were drawn.
    request = lon.AtrophyRequest(a, b, modality="FLAIR")
    monkeypatch.setattr(lon, "load_onnx_model", lambda card, device: _fake_model())
    out = tmp_path / "out"
    lon.track_files(a, b, out, params, atrophy=request)
    prov = json.loads((out / "provenance.json").read_text())
    block = prov["atrophy"]
    assert block["pbvc_pct"] == -0.8 and block["method"] == "bsi"
    assert block["warnings"] == ["note"] and block["lesion_filling"] is True
    assert block["baseline"]["bpf"] == pytest.approx(1100 / 1500)
    assert block["followup"]["gm_fraction"] == pytest.approx(0.4)
    assert block["inputs"]["followup_image"]["sha256"] == prov["inputs"]["followup_flair"][
        "sha256"]
    assert {p.name for p in out.iterdir()} >= {"change_mask.nii.gz", "lesion_changes.csv"}

    (b_vol, b_mask), (f_vol, f_mask) = masks
    assert b_mask is not None and f_mask is not None
    assert b_mask.shape == base.shape and f_mask.shape == follow.shape

    def at(mask: np.ndarray, volume: Volume, world_mm: np.ndarray) -> bool:
        i, j, k = np.rint(np.linalg.inv(volume.affine) @ np.append(world_mm, 1.0))[:3]
        return bool(mask[int(i), int(j), int(k)])

    gone, new = np.array([-26.0, 10.0, 12.0]), np.array([24.0, -30.0, 36.0])
    assert at(b_mask, b_vol, gone) and not at(b_mask, b_vol, new)  # baseline world
    follow_new = (move @ np.append(new, 1.0))[:3]  # the follow-up head was moved
    assert at(f_mask, f_vol, follow_new)
    assert not at(f_mask, f_vol, (move @ np.append(gone, 1.0))[:3])
    with pytest.raises(InputError, match="spacing"):
        lon.AtrophyRequest(a, b, spacing_mm=10.0)


def test_track_cli_bad_input_names_the_file(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti")
    good = tmp_path / "ok.nii.gz"
    save_volume(good, np.ones((8, 8, 8), np.float32), anisotropic_affine())
    rc = main(["track", "--baseline-flair", str(bad), "--followup-flair", str(good),
               "--out", str(tmp_path / "o")])
    assert rc == 2 and "broken.nii.gz" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_track_params_validate() -> None:
    with pytest.raises(InputError, match="method"):
        TrackParams(method="magic")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="enlarging"):
        TrackParams(enlarging_ratio=0)


# ------------------------------------------------------------------------ study visits (cache)
def test_track_visits_stores_results_and_reuses_stored_segmentations(small_study: Path) -> None:
    from ms_core.longitudinal.tracking import track_visits, tracking_status
    from ms_core.segmentation.segment import segment_visit
    from ms_core.study.derivatives import tracking_dir
    from ms_core.study.layout import load_study

    study = load_study(small_study)
    base, follow = study.visits["sub-02"][0], study.visits["sub-02"][1]
    params = TrackParams(segmentation=SegmentParams(method="baseline"))
    assert tracking_status(small_study, base, follow, params) is None
    fresh = track_visits(small_study, base, follow, params)
    out = tracking_dir(small_study, base, follow)
    assert {p.name for p in out.iterdir()} >= {"change_mask.nii.gz", "lesion_changes.csv",
                                               "provenance.json"}
    assert tracking_status(small_study, base, follow, params) is not None
    assert tracking_status(small_study, base, follow, TrackParams(method="difference")) is None
    for visit in (base, follow):
        segment_visit(small_study, visit, params.segmentation)
    reused = track_visits(small_study, base, follow, params)
    assert "stored segmentation" in reused.provider
    # Same maps up to resampling: the verdicts agree for most lesion groups.
    assert abs(len(reused.table) - len(fresh.table)) <= max(2, len(fresh.table) // 5)
    assert tracking_status(small_study, base, follow, params) is not None

    # Persistent ids: ses-01 keeps its own ids; most ses-02 lesions inherit one of them.
    from ms_core.longitudinal.measurements import lesion_history

    history = lesion_history(small_study, [base, follow], params)
    first = history[history.session_id == base.session_id]
    second = history[history.session_id == follow.session_id]
    assert (first.persistent_id == first.lesion_id).all() and len(second) > 0
    assert second.persistent_id.is_unique
    inherited = second.persistent_id.isin(first.persistent_id).mean()
    assert inherited >= 0.5, history
    new_ids = second.persistent_id[~second.persistent_id.isin(first.persistent_id)]
    assert (new_ids > first.persistent_id.max()).all()


def test_protocol_qc_flags_contrast_and_scanner_changes() -> None:
    import datetime as dt

    from ms_core.foundation.domain import Visit
    from ms_core.longitudinal.tracking import intensity_profile_warnings, visit_metadata_warnings

    rng = np.random.default_rng(1)
    brain = np.ones((20, 20, 20), bool)
    base = 1 + 0.2 * rng.standard_normal(brain.shape)
    assert intensity_profile_warnings(base, base * 1.0, brain) == []
    flatter = 1 + 0.1 * rng.standard_normal(brain.shape)  # lower contrast, e.g. new sequence
    assert any("contrast" in w for w in intensity_profile_warnings(base, flatter, brain))
    a = Visit("sub-01", "ses-01", dt.date(2020, 1, 1), None, None, None, "Avanto 1.5T", 1.5)
    b = Visit("sub-01", "ses-02", dt.date(2021, 1, 1), None, None, None, "Ingenia 3T", 3.0)
    warnings = visit_metadata_warnings(a, b)
    assert len(warnings) == 2 and "1.5 T -> 3 T" in warnings[0]
    assert visit_metadata_warnings(a, a) == []


# ------------------------------------------------------------------ method "network"
class _DifferenceSession:
    """Stands in for the change network: appeared / vanished tissue from the difference
    channel of its (N, 3, ...) input (follow-up - baseline, both divided by white matter)."""

    def run(self, _outputs: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        diff = next(iter(feeds.values()))[:, 2:3]
        grew = 1.0 / (1.0 + np.exp(-(diff - 0.3) * 20.0))
        shrank = 1.0 / (1.0 + np.exp(-(-diff - 0.3) * 20.0))
        return [np.concatenate([grew, shrank], axis=1)]


def _fake_change_model() -> OnnxModel:
    import dataclasses

    card = dataclasses.replace(load_segmentation_card(), name="lesion_change",
                               version="0.0-test", sha256="f" * 64)
    return OnnxModel(card, _DifferenceSession(), "fake")


def test_network_method_finds_each_change_and_records_the_change_model() -> None:
    base, follow, move = _pair()
    params = TrackParams(method="network", segmentation=SegmentParams(skull_stripped=True))
    res = track_volumes(base, follow, params, _fake_model(), change_model=_fake_change_model())
    assert sorted(res.table.status) == ["disappeared", "enlarging", "new", "stable"], res.table
    assert set(res.table.evidence) == {"segmentation"}  # every change is a segmented lesion
    centre = np.linalg.inv(follow.affine) @ move @ np.array([24.0, -30.0, 36.0, 1.0])
    assert res.change_mask[tuple(np.rint(centre[:3]).astype(int))] == 1
    assert (res.change_mask == 2).any()
    assert res.change_model == {"name": "lesion_change", "version": "0.0-test",
                                "sha256": "f" * 64, "harmonisation": "white_matter"}


def test_network_method_adds_changes_no_segmentation_contains() -> None:
    # A faint lesion (normalised FLAIR 1.45, under the fake segmentation's 1.6) appears at
    # follow-up and a faint one vanishes: only the change network sees them.
    appears, vanishes = (20.0, -40.0, 20.0), (-20.0, 30.0, 20.0)
    b_img, aff = _head(LESIONS_BASE)
    f_img, _ = _head(LESIONS_BASE)
    rng = np.random.default_rng(5)
    for img, centre in ((f_img, appears), (b_img, vanishes)):
        head = img > 0
        level = np.median(img[head])
        ball = sphere_labels(img.shape, aff, [(centre, 4.0)]) > 0
        img[ball] = np.maximum(img[ball], 1.45 * level)
        img[head] += 0.02 * level * rng.standard_normal(int(head.sum()))
    base, follow = Volume(b_img, aff, "FLAIR"), Volume(f_img, aff, "FLAIR")
    seg = SegmentParams(skull_stripped=True)
    maps = prepare_pair(base, follow, seg, _fake_model())  # one registration, three methods
    joint = detect_changes(maps, base, follow,
                           TrackParams(segmentation=seg, intensity_new_z=None))
    assert set(joint.table.status) == {"stable"}
    for harmonisation in ("white_matter", "histogram"):
        res = detect_changes(maps, base, follow,
                             TrackParams(method="network", segmentation=seg,
                                         harmonisation=harmonisation), _fake_change_model())
        led = res.table[res.table.evidence == "change network"]
        assert sorted(led.status) == ["disappeared", "new"], (harmonisation, res.table)
        for status, centre, value in (("new", appears, 1), ("disappeared", vanishes, 2)):
            row = led[led.status == status].iloc[0]
            where = row[["centroid_x_mm", "centroid_y_mm", "centroid_z_mm"]].to_numpy(float)
            assert np.linalg.norm(where - centre) < 2.0
            assert row.confidence > 0.5  # the network's probability, not the segmentation's
            ijk = np.rint(np.linalg.inv(aff) @ [*centre, 1.0])[:3].astype(int)
            assert res.change_mask[tuple(ijk)] == value
        assert len(res.table) == len(joint.table) + 2


def test_network_track_params_validate() -> None:
    with pytest.raises(InputError, match="harmonisation must be one of"):
        TrackParams(method="network", harmonisation="z-score")
    with pytest.raises(InputError, match="change threshold"):
        TrackParams(method="network", change_threshold=1.0)
    with pytest.raises(InputError, match="method must be one of"):
        TrackParams(method="subtract")  # type: ignore[arg-type]
