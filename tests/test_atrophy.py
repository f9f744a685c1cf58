"""Tests for ms_core.longitudinal.atrophy: PBVC, tissue volumes, lesion filling and annualisation,
the whole-head N4 of ms_core.imaging.preprocess, and the study derivatives (stored, read back,
cached).

The end-to-end tests use a T1w-like head synthesised from the MNI152 template on a 2 mm grid
(:func:`ms_core.imaging.anatomy.tissue_signal`), with the parenchyma shrunk about the brain centroid
by a known volume factor and the skull fixed, so the true PBVC is known exactly.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from ms_core.foundation.domain import Volume
from ms_core.foundation.io import load_volume, read_json
from ms_core.imaging.anatomy import TYPICAL_CONTRAST, load_template, tissue_signal
from ms_core.longitudinal.pbvc import (
    PBVCResult,
    _rigid_half,
    annualised_pct_per_year,
    pbvc_by_method,
    percent_brain_volume_change,
)
from ms_core.segmentation.tissue import TissueVolumes, fill_lesions, tissue_volumes
from ms_core.study.derivatives import truth_dir
from ms_core.study.layout import image_path
from ms_core.synthetic.synth import anisotropic_affine, sphere_labels

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"
STEP = 2  # voxel size (mm) of the synthetic heads: keeps the end-to-end tests to seconds


@functools.lru_cache(maxsize=4)
def _head(volume_factor: float, shift_mm: tuple[float, float, float], seed: int
          ) -> tuple[Volume, float]:
    """Synthetic T1w head and its true parenchyma volume (ml).

    The parenchyma (template GM and WM fractions) is scaled about the brain centroid so that
    its volume is ``volume_factor`` times the template's; the head (skull, scalp, ICV) is not.
    The image is moved by ``shift_mm`` in the world (its affine), with Gaussian noise of 2 % of
    the WM signal.
    """
    tpl = load_template()
    k = volume_factor ** (1.0 / 3.0)
    centre = np.argwhere(tpl.brain > 0.5).mean(axis=0)
    shape = tuple(int(np.ceil(s / STEP)) for s in tpl.shape)

    def sample(m: np.ndarray, scale: float, cval: float = 0.0) -> np.ndarray:
        # output voxel x (STEP mm) reads template voxel centre + (STEP x - centre) / scale
        return np.asarray(ndi.affine_transform(
            m, np.eye(3) * STEP / scale, offset=centre - centre / scale, output_shape=shape,
            order=1, cval=cval))

    gm, wm = sample(tpl.gm, k), sample(tpl.wm, k)
    sd = sample(tpl.head_sd_mm, 1.0, cval=100.0)
    signal = tissue_signal(gm, wm, sd, TYPICAL_CONTRAST["T1w"])
    rng = np.random.default_rng(seed)
    signal = np.abs(signal + rng.normal(0.0, 0.02, signal.shape)) * (sd < 14.0)
    affine = tpl.affine @ np.diag([STEP, STEP, STEP, 1.0])
    affine[:3, 3] += shift_mm
    return Volume(1000.0 * signal, affine, "T1w"), float((gm + wm).sum()) * STEP**3 / 1000.0


# ----------------------------------------------------------------------------- annualisation
def test_annualised_pct_per_year_is_compound() -> None:
    # Reference: (1 - 0.01) ** 2 = 0.9801, i.e. a PBVC of -1.99 % over 2 years is -1 %/year.
    assert annualised_pct_per_year(-1.99, 2.0) == pytest.approx(-1.0, abs=1e-9)
    assert annualised_pct_per_year(-0.7, 1.0) == pytest.approx(-0.7)
    assert annualised_pct_per_year(0.0, 3.5) == 0.0
    assert annualised_pct_per_year(0.5, 0.5) == pytest.approx(100 * (1.005**2 - 1))


@pytest.mark.parametrize(("pbvc", "years", "match"), [
    (-1.0, 0.0, "interval_years"), (-1.0, -1.0, "interval_years"),
    (-1.0, float("nan"), "interval_years"), (-100.0, 1.0, "pbvc_pct"),
    (float("inf"), 1.0, "pbvc_pct"),
])
def test_annualised_pct_per_year_rejects_bad_input(pbvc: float, years: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        annualised_pct_per_year(pbvc, years)


# ----------------------------------------------------------------------------- lesion filling
def test_fill_lesions_removes_lesion_hyperintensity() -> None:
    aff = anisotropic_affine((0.9, 1.1, 3.0))
    shape = (80, 70, 24)
    rng = np.random.default_rng(0)
    image = 100.0 + rng.normal(0.0, 3.0, shape)
    lesions = sphere_labels(shape, aff, [((-10.0, -15.0, 5.0), 6.0), ((5.0, -20.0, 20.0), 4.0),
                                         ((5.0, -39.0, 9.0), 0.5)])
    assert lesions.max() == 3 and (lesions == 3).sum() == 1  # a single-voxel lesion too
    image[lesions > 0] = 300.0
    wm = np.ones(shape, bool)
    out = fill_lesions(image, lesions, wm)
    assert out.dtype == np.float32 and out.shape == shape
    assert out[lesions > 0].max() < 110.0  # no hyperintensity left
    assert out[lesions > 0] == pytest.approx(np.median(image[lesions == 0]), abs=1e-3)
    assert np.array_equal(out[lesions == 0], image[lesions == 0].astype(np.float32))


def test_fill_lesions_edge_cases() -> None:
    image = np.full((6, 6, 6), 50.0)
    empty = np.zeros((6, 6, 6), bool)
    assert np.array_equal(fill_lesions(image, empty, ~empty), image)  # empty mask: unchanged
    with pytest.raises(ValueError, match="shapes differ"):
        fill_lesions(image, np.zeros((6, 6, 5), bool), ~empty)
    with pytest.raises(ValueError, match="normal-appearing white matter"):
        fill_lesions(image, ~empty, ~empty)  # every WM voxel is lesion


# ----------------------------------------------------------------------------- halfway transform
def test_rigid_half_squares_to_the_transform() -> None:
    c, s = np.cos(0.2), np.sin(0.2)
    m = np.array([[c, -s, 0, 4.0], [s, c, 0, -3.0], [0, 0, 1, 2.0], [0, 0, 0, 1.0]])
    half = _rigid_half(m)
    assert np.allclose(half @ half, m, atol=1e-9)
    assert np.allclose(half[:3, :3] @ half[:3, :3].T, np.eye(3), atol=1e-9)  # still rigid


# ----------------------------------------------------------------------------- PBVC end to end
def test_pbvc_of_a_shrunk_synthetic_brain() -> None:
    baseline, v_base = _head(1.0, (0.0, 0.0, 0.0), seed=1)
    followup, v_follow = _head(0.98, (3.0, -2.0, 1.0), seed=2)
    truth = 100.0 * (v_follow / v_base - 1.0)  # -1.99 % (voxelised on the 2 mm grid)
    results = pbvc_by_method(baseline, followup, methods=("bsi", "jacobian"), spacing_mm=2.0)
    bsi, jac = results["bsi"], results["jacobian"]
    assert isinstance(bsi, PBVCResult) and bsi.method == "bsi"
    # Reference: the known scaling; 2 mm voxels and noise leave about 0.1 % of error (measured
    # -2.10 % for BSI), the tolerance is 0.3 % of brain volume.
    assert bsi.pbvc_pct == pytest.approx(truth, abs=0.3)
    assert jac.pbvc_pct < -1.0  # Jacobian integration: right sign and order of magnitude
    assert bsi.qc_ncc > 0.9 and not bsi.warnings
    assert bsi.baseline_brain_ml == pytest.approx(v_base, rel=0.05)
    assert bsi.volume_change_ml == pytest.approx(bsi.pbvc_pct / 100 * bsi.baseline_brain_ml)
    # The follow-up image was moved by +shift in the world: the registration undoes it.
    assert np.allclose(bsi.followup_to_baseline[:3, 3], [-3.0, 2.0, -1.0], atol=0.7)


def test_pbvc_rejects_bad_input() -> None:
    vol = Volume(np.ones((20, 20, 20)), np.eye(4), "T1w")
    flair = Volume(np.ones((20, 20, 20)), np.eye(4), "FLAIR")
    with pytest.raises(ValueError, match="same sequence"):
        percent_brain_volume_change(vol, flair)
    with pytest.raises(ValueError, match="baseline_brain shape"):
        percent_brain_volume_change(vol, vol, baseline_brain=np.ones((20, 20, 19), bool))
    with pytest.raises(ValueError, match="methods"):
        pbvc_by_method(vol, vol, methods=("siena",))
    with pytest.raises(ValueError, match="spacing_mm"):
        percent_brain_volume_change(vol, vol, spacing_mm=0.0)
    with pytest.raises(ValueError, match="followup_to_baseline"):
        percent_brain_volume_change(vol, vol, followup_to_baseline=np.eye(3))
    with pytest.raises(ValueError, match="blank"):
        percent_brain_volume_change(Volume(np.zeros((20, 20, 20)), np.eye(4), "T1w"), vol)
    with pytest.raises(ValueError, match="too small"):
        percent_brain_volume_change(Volume(np.ones((20, 20, 1)), np.eye(4), "T1w"), vol)
    with pytest.raises(TypeError, match="Volume"):
        percent_brain_volume_change(np.ones((20, 20, 20)), vol)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- tissue volumes
def test_tissue_volumes_and_lesion_filling_on_a_synthetic_head() -> None:
    head, v_brain = _head(1.0, (0.0, 0.0, 0.0), seed=1)
    tpl = load_template()
    icv_true = float(tpl.brain.sum()) / 1000.0  # the template's brain mask, 1 mm voxels
    clean = tissue_volumes(head, subject_to_mni=np.eye(4), refine=False)
    assert isinstance(clean, TissueVolumes)
    assert clean.icv_ml == pytest.approx(icv_true, rel=0.01)
    # Reference: the sum of the template GM + WM fractions on the 2 mm grid (measured 0.5 %).
    assert clean.brain_ml == pytest.approx(v_brain, rel=0.03)
    assert clean.gm_ml + clean.wm_ml == pytest.approx(clean.brain_ml)
    assert clean.brain_ml + clean.csf_ml == pytest.approx(clean.icv_ml, rel=1e-3)
    assert clean.bpf == pytest.approx(clean.brain_ml / clean.icv_ml)
    assert clean.lesion_ml == 0.0

    # A T1 "black hole" (CSF-like signal) in deep white matter: 7 mm radius, about 1.4 ml.
    grid_wm = ndi.affine_transform(tpl.wm, np.eye(3) * STEP, output_shape=head.shape, order=1)
    deepest = np.unravel_index(np.argmax(ndi.distance_transform_edt(grid_wm > 0.95)),
                               head.shape)
    centre = tuple(float(c) for c in (head.affine @ np.append(deepest, 1.0))[:3])
    lesion = sphere_labels(head.shape, head.affine, [(centre, 7.0)]) > 0
    assert (grid_wm[lesion] > 0.9).all()
    dark = Volume(np.where(lesion, 120.0, head.data), head.affine, "T1w")
    unfilled = tissue_volumes(dark, subject_to_mni=np.eye(4), refine=False)
    filled = tissue_volumes(dark, subject_to_mni=np.eye(4), refine=False, lesion_mask=lesion)
    lesion_ml = float(lesion.sum()) * STEP**3 / 1000.0
    assert filled.lesion_ml == pytest.approx(lesion_ml, rel=0.01)
    assert unfilled.wm_ml < clean.wm_ml - 0.8 * lesion_ml  # the hole is lost from WM ...
    assert filled.wm_ml == pytest.approx(clean.wm_ml, abs=0.3 * lesion_ml)  # ... and filled
    assert filled.brain_ml == pytest.approx(clean.brain_ml, abs=0.3 * lesion_ml)


def test_tissue_volumes_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="blank"):
        tissue_volumes(Volume(np.zeros((30, 30, 30)), np.eye(4), "T1w"))
    vol = Volume(np.ones((30, 30, 30)), np.eye(4), "T1w")
    with pytest.raises(ValueError, match="lesion_mask shape"):
        tissue_volumes(vol, lesion_mask=np.zeros((30, 30, 29), bool))
    with pytest.raises(ValueError, match="subject_to_mni"):
        tissue_volumes(vol, subject_to_mni=np.eye(3))


# ----------------------------------------------------------------------------- demo study
@pytest.mark.skipif(not (DEMO / "participants.tsv").exists(), reason="demo study not built")
def test_pbvc_on_the_demo_study() -> None:
    # sub-07, 3.9 years at 1.2 %/year: the fastest atrophy of the demo, one scanner.
    pid = "sub-07"
    base, follow = (load_volume(image_path(DEMO, pid, s, "T1w"), "T1w")
                    for s in ("ses-01", "ses-03"))
    tb, tf = (read_json(truth_dir(DEMO, pid, s) / "truth.json") for s in ("ses-01", "ses-03"))
    truth = 100.0 * (tf["brain_volume_ml"] / tb["brain_volume_ml"] - 1.0)  # -4.64 %
    # Reference: the generator's brain volumes; a 2 mm halfway grid (for speed) measured -4.58 %,
    # the default 1 mm grid is within 0.05 %/year on every demo pair (docs/atrophy.md).
    res = percent_brain_volume_change(base, follow, spacing_mm=2.0)
    assert res.pbvc_pct == pytest.approx(truth, abs=0.3)
    assert res.qc_ncc > 0.9 and not res.warnings


# ----------------------------------------------------------------------------- N4 (preprocess)
def test_n4_whole_head_mode_removes_a_bias_everywhere_whatever_the_thread_count() -> None:
    import SimpleITK as sitk

    from ms_core.imaging.preprocess import n4_bias_correct

    head, _ = _head(1.0, (0.0, 0.0, 0.0), seed=1)
    ijk = np.indices(head.shape, dtype=np.float64)
    bias = np.exp(0.3 * (ijk[0] / head.shape[0] - 0.5))  # x1.35 from left to right
    biased = (head.data * bias).astype(np.float32)
    biased[0, 0, 0] = -5.0  # negative noise: set to 0
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    try:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
        one = n4_bias_correct(biased, head.affine, None)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(4)
        four = n4_bias_correct(biased, head.affine, None)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    # The B-spline field used to be evaluated with the global thread count, which changed the
    # last bits of every voxel (and so the atrophy numbers) from machine to machine.
    assert np.array_equal(one, four) and one.dtype == np.float32
    assert one[0, 0, 0] == 0.0
    tpl = load_template()
    wm = ndi.affine_transform(tpl.wm, np.eye(3) * STEP, output_shape=head.shape, order=1) > 0.9
    left, right = wm & (ijk[0] < head.shape[0] / 2), wm & (ijk[0] >= head.shape[0] / 2)

    def tilt(img: np.ndarray) -> float:
        return float(np.log(np.median(img[right]) / np.median(img[left])))

    # Measured: the white matter's left-right tilt drops from 0.082 to 0.003 (unbiased head:
    # -0.0001).
    assert tilt(biased) > 0.05
    assert abs(tilt(one)) < 0.2 * tilt(biased)
    # The field is divided out of the whole image, not only inside a mask.
    scalp = (head.data > 0) & ~(ndi.binary_dilation(wm, iterations=15))
    assert not np.allclose(one[scalp], biased[scalp])


# ----------------------------------------------------------------------------- study derivatives
def _visit(sid: str, date: str, images: dict[str, Path], scanner: str = "S1") -> Any:
    import datetime as dt

    from ms_core.foundation.domain import Visit

    return Visit("sub-01", sid, dt.date.fromisoformat(date), None, None, None, scanner, 3.0,
                 images)


def _tiny_study(root: Path) -> tuple[Any, Any]:
    """Two visits two years apart: synthetic T1w heads (2 mm; 2 % brain loss, head moved) and
    FLAIRs, written as study files under ``root``."""
    from ms_core.foundation.io import save_volume
    from ms_core.imaging.anatomy import synthetic_head

    visits = []
    for sid, date, (factor, shift, seed) in (
            ("ses-01", "2020-01-01", (1.0, (0.0, 0.0, 0.0), 1)),
            ("ses-02", "2022-01-01", (0.98, (3.0, -2.0, 1.0), 2))):
        t1, _ = _head(factor, shift, seed)
        flair = synthetic_head("FLAIR", with_skull=True)[::STEP, ::STEP, ::STEP]
        images = {m: image_path(root, "sub-01", sid, m) for m in ("FLAIR", "T1w")}
        images["FLAIR"].parent.mkdir(parents=True)
        save_volume(images["T1w"], t1.data, t1.affine)
        save_volume(images["FLAIR"], 100.0 * flair, t1.affine)
        visits.append(_visit(sid, date, images))
    return visits[0], visits[1]


def _fake_tissue(calls: list[np.ndarray | None]) -> Any:
    """Stands in for tissue_volumes (validated above, about 25 s per visit): records the
    lesion mask it is given and returns fixed volumes."""

    def fake(volume: Volume, *, lesion_mask: np.ndarray | None = None,
             **_: Any) -> TissueVolumes:
        calls.append(lesion_mask)
        brain = 1100.0 - 10.0 * len(calls)
        return TissueVolumes(brain, 600.0, brain - 600.0, 1500.0 - brain, 1500.0, brain / 1500,
                             0.0 if lesion_mask is None else 1.5)

    return fake


def _no_call(*_: Any, **__: Any) -> Any:
    raise AssertionError("measured again although a current result is stored")


def test_study_atrophy_is_stored_read_back_cached_and_refreshed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ms_core.longitudinal.atrophy as atrophy
    from ms_core.foundation.io import save_volume, sha256_file
    from ms_core.longitudinal.measurements import ATROPHY_COLUMNS, atrophy_table, measured_table
    from ms_core.longitudinal.tracking import TrackParams
    from ms_core.segmentation.segment import SegmentationResult, SegmentParams, write_outputs

    base, follow = _tiny_study(tmp_path)
    seg = SegmentParams(method="baseline")
    params = atrophy.AtrophyParams(spacing_mm=2.0, segmentation=seg)
    calls: list[np.ndarray | None] = []
    monkeypatch.setattr(atrophy, "tissue_volumes", _fake_tissue(calls))
    assert atrophy.pending_atrophy(tmp_path, [follow, base], params) == (
        [base, follow], [(base, follow)])
    assert atrophy.read_atrophy(tmp_path, base, follow, params) is None

    volumes, pbvc = atrophy.atrophy_visits(tmp_path, [follow, base], params)  # real PBVC
    assert set(volumes) == {"ses-01", "ses-02"} and set(pbvc) == {"ses-02"}
    folder = atrophy.atrophy_dir(tmp_path, follow)
    assert folder == tmp_path / "derivatives" / "ms_dash" / "sub-01" / "ses-02" / "atrophy"
    assert {p.name for p in folder.iterdir()} == {"tissue_volumes.json",
                                                  "pbvc_from_ses-01.json"}
    stored = read_json(folder / "pbvc_from_ses-01.json")
    assert stored == pbvc["ses-02"]
    assert stored["inputs"]["baseline_image"]["sha256"] == sha256_file(base.images["T1w"])
    assert stored["parameters"] == {"modality": "T1w", "method": "bsi", "spacing_mm": 2.0}
    assert stored["version"] and stored["created_utc"] and stored["seconds"]["pbvc"] > 0
    # Reference: the known 2 % scaling; BSI on 2 mm grids measured -2.10 % (see above).
    truth = 100.0 * (_head(0.98, (3.0, -2.0, 1.0), 2)[1] / _head(1.0, (0.0,) * 3, 1)[1] - 1)
    assert stored["pbvc_pct"] == pytest.approx(truth, abs=0.3)
    assert stored["interval_years"] == pytest.approx(731 / 365.25)
    assert stored["pbvc_pct_per_year"] == pytest.approx(
        annualised_pct_per_year(stored["pbvc_pct"], 731 / 365.25))
    assert stored["method"] == "bsi" and stored["qc_ncc"] > 0.9 and stored["warnings"] == []
    rec = volumes["ses-01"]
    assert rec["volumes"]["gm_fraction"] == pytest.approx(600.0 / 1500.0)
    assert set(rec["volumes"]) == set(atrophy.VOLUME_FIELDS)
    assert set(rec["inputs"]) == {"image"}  # not segmented yet: measured unfilled
    assert calls == [None, None]

    table = atrophy_table(tmp_path, [follow, base], params)
    assert list(table.columns) == list(ATROPHY_COLUMNS)
    assert table.session_id.tolist() == ["ses-01", "ses-02"]
    assert table.brain_volume_ml.tolist() == [1090.0, 1080.0]
    assert table.pbvc_from.tolist() == ["", "ses-01"] and np.isnan(table.pbvc_pct[0])
    assert table.pbvc_pct_per_year[1] == pytest.approx(stored["pbvc_pct_per_year"])
    measured = measured_table(tmp_path, [base, follow], TrackParams(segmentation=seg), params)
    assert measured.bpf.tolist() == pytest.approx([1090 / 1500, 1080 / 1500])
    assert measured.segmented.tolist() == [False, False]
    assert atrophy.read_atrophy(tmp_path, base, follow, params) == {
        "pbvc_pct_per_year": stored["pbvc_pct_per_year"], "bpf": 1080 / 1500,
        "gm_fraction": 0.4, "wm_fraction": 480 / 1500}

    # Unchanged inputs: a second run reads the stored records back, nothing is measured.
    monkeypatch.setattr(atrophy, "tissue_volumes", _no_call)
    monkeypatch.setattr(atrophy, "percent_brain_volume_change", _no_call)
    assert atrophy.atrophy_visits(tmp_path, [base, follow], params) == (volumes, pbvc)
    assert atrophy.pending_atrophy(tmp_path, [base, follow], params) == ([], [])
    other = atrophy.AtrophyParams(spacing_mm=1.0, segmentation=seg)  # other PBVC setting
    assert atrophy.pending_atrophy(tmp_path, [base, follow], other) == ([], [(base, follow)])

    # Segmenting ses-02 makes its volumes out of date (its lesions were not filled); measuring
    # again fills the stored lesions, carried from the FLAIR onto the T1w grid.
    t1 = load_volume(follow.images["T1w"], "T1w")
    centre = (20.0, -10.0, 20.0)
    labels = sphere_labels(t1.shape, t1.affine, [(centre, 5.0)])
    write_outputs(atrophy.derivatives_dir(tmp_path, "sub-01", "ses-02"), SegmentationResult(
        labels.astype(np.float32), labels, t1.affine, pd.DataFrame({"volume_ml": [0.5]}),
        "numpy", None), seg, {"flair": follow.images["FLAIR"]})
    assert atrophy.pending_atrophy(tmp_path, [base, follow], params) == ([follow], [])
    monkeypatch.setattr(atrophy, "tissue_volumes", _fake_tissue(calls))
    refreshed = atrophy.measure_visit_volumes(tmp_path, follow, params)
    filled = calls[-1]
    assert filled is not None and filled.shape == t1.shape
    assert filled[labels > 0].all() and filled.sum() > (labels > 0).sum()  # dilated by 1 voxel
    mask_file = atrophy.derivatives_dir(tmp_path, "sub-01", "ses-02") / "lesion_mask.nii.gz"
    assert refreshed["inputs"]["lesion_mask"]["sha256"] == sha256_file(mask_file)
    assert refreshed["volumes"]["lesion_filled_ml"] == 1.5
    assert atrophy.volumes_status(tmp_path, follow, params) == refreshed

    # A replaced image makes its records out of date.
    save_volume(base.images["T1w"], t1.data, t1.affine)
    assert atrophy.volumes_status(tmp_path, base, params) is None
    assert atrophy.pbvc_status(tmp_path, base, follow, params) is None
    assert np.isnan(atrophy_table(tmp_path, [base, follow], params).pbvc_pct).all()


def test_atrophy_frame_and_params_edge_cases() -> None:
    from ms_core.foundation.errors import InputError
    from ms_core.longitudinal.atrophy import AtrophyParams
    from ms_core.longitudinal.measurements import ATROPHY_COLUMNS, atrophy_frame

    empty = atrophy_frame([], {}, {})
    assert list(empty.columns) == list(ATROPHY_COLUMNS) and empty.empty
    a, b = _visit("ses-01", "2020-01-01", {}), _visit("ses-02", "2020-01-01", {})
    table = atrophy_frame([b, a], {"ses-01": None, "ses-02": {"volumes": "garbage"}},
                          {"ses-02": {"baseline_session": "ses-01", "pbvc_pct": -0.4,
                                      "pbvc_pct_per_year": None, "warnings": ["x", "y"]}})
    assert table.session_id.tolist() == ["ses-01", "ses-02"]
    assert table.brain_volume_ml.isna().all()  # no record, or a malformed one: empty cells
    assert table.pbvc_pct.tolist()[1] == -0.4 and np.isnan(table.pbvc_pct_per_year[1])
    assert table.atrophy_warnings.tolist() == ["", "x; y"]
    with pytest.raises(InputError, match="modality"):
        AtrophyParams(modality="DWI")
    with pytest.raises(InputError, match="method"):
        AtrophyParams(method="siena")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="spacing"):
        AtrophyParams(spacing_mm=0.1)
