"""Tests for ms_core.inference: window placement, Gaussian blending, flips, ONNX sessions."""

from __future__ import annotations

import numpy as np
import pytest

from ms_core.inference import gaussian_importance, sliding_window, window_starts


def _pointwise(batch: np.ndarray) -> np.ndarray:
    """A fake model whose output at a voxel depends only on that voxel's inputs."""
    return 1.0 / (1.0 + np.exp(-(batch[:, :1] * 2.0 - batch[:, 1:2])))


@pytest.mark.parametrize(("size", "patch", "overlap"), [(100, 64, 0.5), (64, 64, 0.0),
                                                        (200, 64, 0.25), (65, 64, 0.9)])
def test_windows_cover_every_voxel(size: int, patch: int, overlap: float) -> None:
    starts = window_starts(size, patch, overlap)
    covered = np.zeros(size, bool)
    for s in starts:
        covered[s:s + patch] = True
    assert covered.all() and starts[0] == 0 and starts[-1] == max(size - patch, 0)


def test_blending_a_pointwise_model_is_exact_with_and_without_flips() -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, 40, 36, 44)).astype(np.float32)
    expected = _pointwise(image[None])[0, 0]
    calls: list[tuple[int, ...]] = []

    def predictor(batch: np.ndarray) -> np.ndarray:
        calls.append(batch.shape)
        return _pointwise(batch)

    out = sliding_window(image, predictor, patch=(16, 16, 16), overlap=0.5)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert all(c == (1, 2, 16, 16, 16) for c in calls)
    tta = sliding_window(image, _pointwise, patch=(16, 16, 16), overlap=0.25,
                         flips=((), (0,), (1, 2)))
    np.testing.assert_allclose(tta, expected, atol=1e-5)


def test_progress_and_input_checks() -> None:
    image = np.zeros((2, 20, 20, 20), np.float32)
    seen: list[float] = []
    sliding_window(image, _pointwise, patch=(16, 16, 16), overlap=0.5, progress=seen.append)
    assert seen[-1] == 1.0 and seen == sorted(seen)
    with pytest.raises(ValueError, match="overlap"):
        sliding_window(image, _pointwise, patch=(16, 16, 16), overlap=1.0)
    with pytest.raises(ValueError, match="smaller than the patch"):
        sliding_window(image, _pointwise, patch=(32, 16, 16))
    with pytest.raises(ValueError, match=r"\(C, X, Y, Z\)"):
        sliding_window(image[0], _pointwise, patch=(16, 16, 16))


def test_gaussian_importance_peaks_in_the_centre() -> None:
    w = gaussian_importance((9, 9, 9))
    assert w[4, 4, 4] == 1.0 and w.min() >= 1e-3 and w[0, 4, 4] < w[2, 4, 4]
