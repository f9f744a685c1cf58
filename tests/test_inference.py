"""Tests for ms_core.segmentation.inference: window placement, Gaussian blending, flips, ONNX
sessions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ms_core.segmentation.inference import (
    OnnxModel,
    gaussian_importance,
    sliding_window,
    window_starts,
)


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


def _seg_model(device: str) -> OnnxModel:
    from ms_core.segmentation.inference import load_onnx_model
    from ms_core.segmentation.model_store import load_segmentation_card

    return load_onnx_model(load_segmentation_card(), device, threads=2)


def test_io_binding_gives_the_same_probabilities_as_a_plain_run() -> None:
    from ms_core.segmentation.inference import run_bound

    model = _seg_model("cpu")
    x = np.random.default_rng(0).gamma(2.0, 0.5, (2, 2, 32, 32, 32)).astype(np.float32)
    plain = model.predict(x)
    bound = run_bound(model.session, model.card.input_name, x, model.card.output_name, "cpu")
    assert bound.shape == (2, 1, 32, 32, 32) and bound.dtype == np.float32
    np.testing.assert_array_equal(bound, plain)


def test_gpu_and_cpu_masks_agree_on_patient26(open_ms_data: Path) -> None:
    """The GPU parity gate of the performance issue: CUDA vs CPU masks Dice >= 0.999.

    Runs only where onnxruntime can start the CUDA provider (skipped on CPU-only machines).
    """
    from ms_core.foundation.errors import InputError
    from ms_core.foundation.io import load_volume
    from ms_core.segmentation.evaluate import dice
    from ms_core.segmentation.segment import SegmentParams, segment_volumes

    try:
        gpu = _seg_model("cuda")
    except InputError as e:
        pytest.skip(f"no usable CUDA provider: {e}")
    assert gpu.provider == "CUDAExecutionProvider"
    folder = open_ms_data / "cross_sectional" / "MNI" / "patient26"
    name = "FLAIR_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"
    flair = load_volume(folder / name, "FLAIR")
    params = SegmentParams(method="network", skull_stripped=True)
    on_gpu = segment_volumes(flair, None, params, gpu)
    on_cpu = segment_volumes(flair, None, params, _seg_model("cpu"))
    assert dice(on_gpu.labels > 0, on_cpu.labels > 0) >= 0.999
    assert float(np.abs(on_gpu.prob - on_cpu.prob).max()) <= 1e-3


_PROBE = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout)
from ms_core.segmentation.inference import load_onnx_model
from ms_core.segmentation.model_store import load_segmentation_card
model = load_onnx_model(load_segmentation_card(), "auto", threads=1)
print("PROVIDER", model.provider)
print("WHY", model.cuda_unavailable)
"""


def test_a_machine_without_cuda_libraries_falls_back_quietly_and_says_why() -> None:
    """onnxruntime-gpu without the CUDA libraries: CPU, the reason kept, no onnxruntime errors.

    onnxruntime would print a red "Failed to load library ... libcublasLt" error and a warning on
    every session; the probe names the missing library in our own log and on the model instead.
    """
    import subprocess
    import sys

    import onnxruntime as ort

    from ms_core.segmentation.inference import _cuda_libraries_error, available_providers

    if "CUDAExecutionProvider" not in available_providers():
        pytest.skip("this onnxruntime build has no CUDA provider")
    if not _cuda_libraries_error(ort):
        pytest.skip("the CUDA libraries load here")
    run = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=120, check=True)
    assert "PROVIDER CPUExecutionProvider" in run.stdout
    assert "WHY CUDA libraries not found: lib" in run.stdout
    assert "CUDA provider not usable (CUDA libraries not found" in run.stdout
    assert "onnxruntime" not in run.stderr, run.stderr
    with pytest.raises(Exception, match=r"cannot use a CUDA GPU here \(CUDA libraries not found"):
        _seg_model("cuda")


def test_only_a_missing_library_stops_the_cuda_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any other loader error (say an unresolved symbol) is left to onnxruntime to try."""
    import ctypes

    import onnxruntime as ort

    from ms_core.segmentation.inference import _cuda_libraries_error

    def fails_with(message: str) -> object:
        def load(*args: object, **kwargs: object) -> None:
            raise OSError(message)
        return load

    monkeypatch.setattr(ctypes, "CDLL", fails_with("x.so: undefined symbol: Provider_GetHost"))
    assert _cuda_libraries_error(ort) == ""
    monkeypatch.setattr(ctypes, "CDLL", fails_with(
        "libcudart.so.13: cannot open shared object file: No such file or directory"))
    folder = Path(ort.__file__).parent / "capi"
    expected = "" if not list(folder.glob("*onnxruntime_providers_cuda*")) else (
        "CUDA libraries not found: libcudart.so.13: cannot open shared object file: "
        "No such file or directory")
    assert _cuda_libraries_error(ort) == expected
