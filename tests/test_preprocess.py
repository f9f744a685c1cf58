"""Tests for ms_core.imaging.preprocess: grids, resampling, normalisation, cropping, brain
extraction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ms_core.foundation.domain import Volume
from ms_core.foundation.io import load_lesion_mask, load_volume
from ms_core.imaging import preprocess
from ms_core.imaging.preprocess import (
    Grid,
    brain_mask_from_template,
    crop_box,
    denoise,
    n4_bias_correct,
    normalize_intensity,
    normalize_to_white_matter,
    pad_to_multiple,
    resample_to_grid,
    template_to_subject,
    white_matter_level,
    working_grid,
)
from ms_core.segmentation.evaluate import dice
from ms_core.study.derivatives import truth_dir
from ms_core.study.layout import image_path
from ms_core.synthetic.synth import anisotropic_affine, sphere_labels, sphere_volume_ml


def test_working_grid_covers_an_oblique_lps_volume() -> None:
    aff = np.diag([-0.9, -0.9, 3.0, 1.0])
    aff[:3, 3] = [100.0, 120.0, -60.0]
    vol = Volume(np.zeros((200, 240, 40)), aff, "FLAIR")
    g = working_grid(vol, 1.0)
    assert np.allclose(np.diag(g.affine)[:3], 1.0)
    corners = [aff @ np.array([i, j, k, 1.0]) for i in (0, 199) for j in (0, 239) for k in (0, 39)]
    inv = np.linalg.inv(g.affine)
    for c in corners:
        idx = inv @ c
        assert np.all(idx[:3] >= -1e-6) and np.all(idx[:3] <= np.asarray(g.shape) - 1 + 1e-6)
    with pytest.raises(ValueError, match="spacing_mm"):
        working_grid(vol, 0.0)


def test_resampling_labels_keeps_sphere_volume_across_grids() -> None:
    src_aff = anisotropic_affine((0.9, 1.1, 3.0))
    labels = sphere_labels((90, 90, 30), src_aff, [((0.0, 0.0, 10.0), 12.0)])
    grid = working_grid(Volume(labels.astype(np.float32), src_aff, "mask"), 1.0)
    out = resample_to_grid(labels, src_aff, grid, order=0)
    assert out.dtype == labels.dtype
    # Reference: the exact ball volume; two voxelisations add up to about 6 % error.
    assert (out > 0).sum() / 1000 == pytest.approx(sphere_volume_ml(12.0), rel=0.06)
    with pytest.raises(ValueError, match="order"):
        resample_to_grid(labels, src_aff, grid, order=2)


def _tissue_image(gm_ratio: float, lesion_share: float, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A (40, 40, 40) 'brain': white matter at 200 in the middle slab (its prior 1), grey
    matter at ``gm_ratio`` x 200 around it, lesions at 1.7 x 200 over ``lesion_share`` of the
    white matter; noise 3 %."""
    rng = np.random.default_rng(seed)
    prior = np.zeros((40, 40, 40), np.float32)
    prior[:, :, 10:30] = 1.0
    img = np.where(prior > 0, 200.0, 200.0 * gm_ratio)
    n_lesion = int(lesion_share * 20)
    img[:, :, 10:10 + n_lesion] = 340.0
    img = img * (1.0 + 0.03 * rng.standard_normal(img.shape))
    return img.astype(np.float32), np.ones(img.shape, bool), prior


def test_white_matter_level_ignores_lesion_load_and_grey_matter_contrast() -> None:
    levels, medians = [], []
    for gm_ratio, lesion_share in ((1.0, 0.0), (1.3, 0.0), (1.0, 0.3), (1.4, 0.3)):
        img, brain, prior = _tissue_image(gm_ratio, lesion_share)
        levels.append(white_matter_level(img, brain, prior))
        medians.append(float(np.median(img[brain])))
    assert max(levels) / min(levels) < 1.03  # within 3 % of 200 whatever the scan
    assert all(abs(v / 200.0 - 1.0) < 0.03 for v in levels)
    assert max(medians) / min(medians) > 1.15  # the brain median moves by 15 % or more
    img, brain, prior = _tissue_image(1.3, 0.3)
    out = normalize_to_white_matter(img, brain, prior)
    assert float(np.median(out[:, :, 20:30])) == pytest.approx(1.0, abs=0.03)


def test_white_matter_level_refuses_a_missing_or_misplaced_prior() -> None:
    img, brain, prior = _tissue_image(1.2, 0.1)
    with pytest.raises(ValueError, match="warp the prior"):
        white_matter_level(img, brain, prior[:-1])
    with pytest.raises(ValueError, match="is the template registered"):
        white_matter_level(img, brain, np.zeros_like(prior))
    with pytest.raises(ValueError, match="blank"):
        white_matter_level(np.zeros_like(img), brain, prior)
    with pytest.raises(ValueError, match="empty"):
        normalize_to_white_matter(img, np.zeros_like(brain), prior)


def test_normalize_intensity() -> None:
    data = np.full((4, 4, 4), 300.0, np.float32)
    data[0, 0, 0] = 900.0
    brain = np.ones((4, 4, 4), bool)
    brain[3] = False
    out = normalize_intensity(data, brain)
    assert out[1, 1, 1] == pytest.approx(1.0) and out[0, 0, 0] == pytest.approx(3.0)
    assert np.all(out[3] == 0)
    with pytest.raises(ValueError, match="empty"):
        normalize_intensity(data, np.zeros_like(brain))
    with pytest.raises(ValueError, match="blank"):
        normalize_intensity(np.zeros_like(data), brain)


def test_crop_and_pad() -> None:
    m = np.zeros((30, 30, 30), bool)
    assert crop_box(m) == (slice(0, 30),) * 3  # empty mask: whole image
    m[10, 12, 14] = True
    assert crop_box(m, 2) == (slice(8, 13), slice(10, 15), slice(12, 17))
    padded, back = pad_to_multiple(np.ones((2, 5, 9, 17)), 8, minimum=16)
    assert padded.shape == (2, 16, 16, 24)
    assert padded[back].shape == (2, 5, 9, 17) and padded.sum() == 2 * 5 * 9 * 17


def test_brain_extraction_on_demo_matches_truth(small_study: Path) -> None:
    # The truth is the parenchyma; our mask is the intracranial brain (with sulcal CSF), so a
    # Dice of 0.9 and almost no parenchyma outside the mask is the expected agreement.
    for pid in ("sub-01", "sub-02"):
        vol = load_volume(image_path(small_study, pid, "ses-02", "FLAIR"), "FLAIR")
        grid = working_grid(vol)
        mask = brain_mask_from_template(vol, grid)
        truth = load_lesion_mask(truth_dir(small_study, pid, "ses-02") / "brain_mask.nii.gz")
        t = resample_to_grid(truth.labels, truth.affine, grid, order=0) > 0
        assert dice(mask, t) > 0.9
        assert (t & ~mask).sum() / t.sum() < 0.01
        preprocess._TRANSFORMS.clear()  # register again, not from the process's memo
        assert np.array_equal(mask, brain_mask_from_template(vol, grid))  # deterministic
        assert isinstance(grid, Grid)


def test_template_registration_is_remembered_per_image_and_options(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []

    def fake_register(subject: np.ndarray, *args: object, **kw: object) -> np.ndarray:
        calls.append(float(subject.sum()))
        out = np.eye(4)
        out[0, 3] = len(calls)  # each registration gives a different answer
        return out

    monkeypatch.setattr(preprocess, "register_affine", fake_register)
    monkeypatch.setattr(preprocess, "_TRANSFORMS", type(preprocess._TRANSFORMS)())
    head = sphere_labels((30, 30, 30), np.eye(4), [((15.0, 15.0, 15.0), 10.0)]) > 0
    vol = Volume(head.astype(np.float32), np.eye(4), "FLAIR")
    first = template_to_subject(vol)
    first[0, 0] = 99.0  # the caller's copy: changing it does not change the memo
    again = template_to_subject(Volume(vol.data.copy(), np.eye(4), "FLAIR"))
    assert len(calls) == 1 and again[0, 3] == 1.0 and again[0, 0] == 1.0
    # Another image, affine, modality or option registers again.
    changed = vol.data.copy()
    changed[15, 15, 15] += 0.5
    shifted = np.eye(4)
    shifted[0, 3] = 2.0
    for other, kw in ((Volume(changed, np.eye(4), "FLAIR"), {}),
                      (Volume(vol.data, shifted, "FLAIR"), {}),
                      (Volume(vol.data, np.eye(4), "T1w"), {}),
                      (vol, {"skull_stripped": True}),
                      (vol, {"resolution_mm": 2.0})):
        before = len(calls)
        assert template_to_subject(other, **kw)[0, 3] == before + 1  # type: ignore[arg-type]
    assert len(calls) == 6
    monkeypatch.setattr(preprocess._TRANSFORMS, "max_entries", 2)  # oldest are forgotten
    template_to_subject(Volume(vol.data * 2, np.eye(4), "FLAIR"))
    assert len(preprocess._TRANSFORMS) == 2
    assert template_to_subject(vol)[0, 3] == 8.0


def _biased_ball() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A uniform ball (100) on an anisotropic, non-cubic grid, times a smooth bias field.

    Returns (biased image, affine, brain mask, bias field); the bias is a tilt along world x
    and a bowl along world z (x0.61 to x1.42 across the ball), plus noise of SD 1.
    """
    aff = anisotropic_affine((2.0, 2.4, 4.0), (-60.0, -60.0, -48.0))
    brain = sphere_labels((60, 50, 24), aff, [((0.0, 0.0, 0.0), 40.0)]) > 0
    ijk = np.indices(brain.shape, dtype=np.float64).reshape(3, -1)
    xyz = (aff[:3, :3] @ ijk + aff[:3, 3:4]).reshape(3, *brain.shape)
    bias = np.exp(0.35 * xyz[0] / 40.0 - 0.15 * (xyz[2] / 40.0) ** 2)
    noise = np.random.default_rng(0).normal(0.0, 1.0, brain.shape)
    image = np.where(brain, 100.0 * bias + noise, 0.0).astype(np.float32)
    return image, aff, brain, bias


def _cv(values: np.ndarray) -> float:
    return float(values.std() / values.mean())


def test_n4_removes_a_known_smooth_bias() -> None:
    image, aff, brain, _ = _biased_ball()
    out = n4_bias_correct(image, aff, brain)
    assert out.shape == image.shape and out.dtype == np.float32
    # Reference: the biased ball's CV is about 0.16, the noise alone gives 0.01; N4 should
    # remove most of the bias (measured: 0.019).
    assert _cv(image[brain]) > 0.15
    assert _cv(out[brain]) < 0.3 * _cv(image[brain])
    assert np.median(out[brain]) == pytest.approx(np.median(image[brain]), rel=1e-3)
    assert np.array_equal(out[~brain], image[~brain])  # outside the brain: untouched
    assert np.array_equal(out, n4_bias_correct(image, aff, brain))  # deterministic
    # A transposed or flipped field would leave the x tilt in place. Measured: the x1.69 tilt
    # between x = -30 and +30 mm drops to x1.05 (shrink 4 on this coarse grid is 8-12 mm).
    def tilt(img: np.ndarray) -> float:
        return float(np.log(np.median(img[45][brain[45]]) / np.median(img[15][brain[15]])))

    assert abs(tilt(out)) < 0.2 * tilt(image)


def test_n4_rejects_bad_input() -> None:
    image, aff, brain, _ = _biased_ball()
    with pytest.raises(ValueError, match="empty"):
        n4_bias_correct(image, aff, np.zeros_like(brain))
    single = np.zeros_like(brain)
    single[30, 25, 12] = True
    with pytest.raises(ValueError, match="positive voxels"):
        n4_bias_correct(image, aff, single)
    with pytest.raises(ValueError, match="shape"):
        n4_bias_correct(image, aff, brain[:-1])
    with pytest.raises(ValueError, match="shrink"):
        n4_bias_correct(image, aff, brain, shrink=0)
    with pytest.raises(ValueError, match="iterations"):
        n4_bias_correct(image, aff, brain, iterations=())
    with pytest.raises(ValueError, match="affine"):
        n4_bias_correct(image, np.eye(3), brain)


def _noisy_step() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A ball at 100 with its x >= 24 half at 150, noise SD 10; returns (clean, noisy, brain)."""
    brain = sphere_labels((48, 48, 48), np.eye(4), [((24.0, 24.0, 24.0), 20.0)]) > 0
    clean = np.where(brain, 100.0, 0.0)
    clean[24:] *= 1.5
    noisy = clean + np.where(brain, np.random.default_rng(1).normal(0.0, 10.0, brain.shape), 0)
    return clean, noisy.astype(np.float32), brain


@pytest.mark.parametrize("method", ["curvature", "median"])
def test_denoise_reduces_noise_and_keeps_the_edge(method: str) -> None:
    clean, noisy, brain = _noisy_step()
    out = denoise(noisy, brain, method=method)  # type: ignore[arg-type]
    assert out.shape == noisy.shape and out.dtype == np.float32
    flat = np.zeros_like(brain)
    flat[12:20, 18:30, 18:30] = True  # inside the 100 half, away from the step
    # Reference (measured): noise SD 10 drops to about 3.5 (curvature, 5 steps) or 2.4 (median).
    assert out[flat].std() < 0.5 * noisy[flat].std()
    # The step stays sharp: the jump between the two voxel planes either side of it keeps
    # 65 % of its height. Measured: curvature 92 %, median 71 %; a Gaussian (sigma 0.8 voxel)
    # with the median's noise reduction keeps 49 %.
    jump = out[24, 18:30, 18:30].mean() - out[23, 18:30, 18:30].mean()
    assert jump > 0.65 * 50.0
    assert np.array_equal(out[~brain], noisy[~brain])
    # Closer to the clean image over the whole ball, border included (measured: 8.0 -> <3).
    assert np.abs(out - clean)[brain].mean() < 0.5 * np.abs(noisy - clean)[brain].mean()


def test_denoise_edge_cases() -> None:
    _, noisy, brain = _noisy_step()
    with pytest.raises(ValueError, match="empty"):
        denoise(noisy, np.zeros_like(brain))
    with pytest.raises(ValueError, match="method"):
        denoise(noisy, brain, method="gaussian")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape"):
        denoise(noisy, brain[:, :, :-1])
    single = np.zeros_like(brain)
    single[24, 24, 24] = True  # one brain voxel: its neighbours copy it, so it is unchanged
    for method in ("curvature", "median"):
        out = denoise(noisy, single, method=method)  # type: ignore[arg-type]
        assert out[24, 24, 24] == pytest.approx(noisy[24, 24, 24], rel=1e-5)
