"""Synthetic training patches (numpy/scipy only, so these run without torch)."""

from __future__ import annotations

import numpy as np
import pytest

from training.seg.synth_data import LesionBank, PatchSampler, correlated_noise


def _lag1_correlation(n: np.ndarray, axis: int) -> float:
    a = np.moveaxis(n, axis, 0)
    return float(np.corrcoef(a[:-1].ravel(), a[1:].ravel())[0, 1])


@pytest.mark.parametrize("sigma_vox", [0.0, 0.6, 1.2])
def test_correlated_noise_has_unit_variance(sigma_vox: float) -> None:
    n = correlated_noise(np.random.default_rng(0), (40, 40, 40), sigma_vox)
    assert n.dtype == np.float32
    assert abs(float(n.mean())) < 0.05
    assert float(n.std()) == pytest.approx(1.0, abs=0.05 if sigma_vox == 0 else 1e-3)


def test_correlated_noise_correlates_neighbours_more_with_wider_kernels() -> None:
    rng = np.random.default_rng(1)
    white, narrow, mid, wide = (correlated_noise(rng, (48, 48, 48), s)
                                for s in (0.0, 0.5, 1.0, 1.5))
    for axis in range(3):
        r = [_lag1_correlation(n, axis) for n in (white, narrow, mid, wide)]
        assert abs(r[0]) < 0.03
        assert r[0] < r[1] < r[2] < r[3]
        # Kernel sigma s (well sampled from 1 voxel): neighbour correlation exp(-1 / (4 s^2)).
        assert r[2] == pytest.approx(np.exp(-1 / 4), abs=0.03)
        assert r[3] == pytest.approx(np.exp(-1 / 9), abs=0.03)


@pytest.fixture(scope="module")
def bank() -> LesionBank:
    from ms_core.anatomy import load_template

    shape = load_template().shape
    mask = np.zeros(shape, np.uint8)
    c = [s // 2 for s in shape]
    mask[c[0] - 4:c[0] + 4, c[1] - 4:c[1] + 4, c[2] + 10:c[2] + 16] = 1
    return LesionBank(mask[None], ("synthetic",), (np.argwhere(mask > 0).astype(np.int16),))


def test_sampler_rejects_an_unknown_noise_model(bank: LesionBank) -> None:
    with pytest.raises(ValueError, match="noise must be one of"):
        PatchSampler(bank, 32, noise="pink")


def test_both_noise_models_give_valid_patches(bank: LesionBank) -> None:
    patches = {}
    for noise in ("white", "mixed"):
        sampler = PatchSampler(bank, 32, seed=7, lesion_fraction=1.0, noise=noise)
        x, y = sampler.sample()
        assert x.shape == (2, 32, 32, 32) and y.shape == (1, 32, 32, 32)
        assert x.dtype == np.float32 and np.isfinite(x).all() and (x >= 0).all()
        assert set(np.unique(y)) <= {0.0, 1.0}
        patches[noise] = x
    assert not np.array_equal(patches["white"], patches["mixed"])
