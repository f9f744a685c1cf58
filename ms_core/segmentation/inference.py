"""Model execution: onnxruntime sessions and sliding-window inference.

The only module that imports onnxruntime. :func:`sliding_window` takes any
``predictor: Callable[[ndarray], ndarray]`` (batch (N, C, X, Y, Z) in, (N, 1, X, Y, Z)
probabilities out), so tests can pass a fake model and the ONNX session fits in as a closure.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ms_core.foundation.errors import InputError
from ms_core.segmentation.model_store import ModelCard, VerifiedModel

__all__ = [
    "OnnxModel",
    "TabularModel",
    "available_providers",
    "from_network_layout",
    "gaussian_importance",
    "load_onnx_model",
    "load_tabular_model",
    "output_probability",
    "predict_onnx_bytes",
    "run_bound",
    "sliding_window",
    "to_network_layout",
    "window_corners",
    "window_starts",
]

log = logging.getLogger(__name__)
Predictor = Callable[[np.ndarray], np.ndarray]


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start indices of windows of ``patch`` covering ``size`` with the given ``overlap``.

    >>> window_starts(100, 64, 0.5)
    [0, 32, 36]
    >>> window_starts(64, 64, 0.5)
    [0]
    """
    if size <= patch:
        return [0]
    stride = max(1, round(patch * (1.0 - overlap)))
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def window_corners(spatial: Sequence[int], patch: Sequence[int], overlap: float
                   ) -> list[tuple[int, int, int]]:
    """Start corners (x, y, z) of the sliding windows over an image of size ``spatial``, in
    the order :func:`sliding_window` runs them (x outermost).

    >>> window_corners((100, 64, 64), (64, 64, 64), 0.5)
    [(0, 0, 0), (32, 0, 0), (36, 0, 0)]
    """
    sx, sy, sz = (window_starts(int(s), int(p), overlap)
                  for s, p in zip(spatial, patch, strict=True))
    return [(x, y, z) for x in sx for y in sy for z in sz]


def gaussian_importance(patch: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
    """Gaussian weight map (X, Y, Z) float32 peaking at the window centre (nnU-Net style)."""
    axes = []
    for p in patch:
        x = np.arange(p, dtype=np.float64) - (p - 1) / 2.0
        axes.append(np.exp(-0.5 * (x / (p * sigma_scale)) ** 2))
    w = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    w = w / w.max()
    return np.asarray(np.maximum(w, 1e-3), dtype=np.float32)


def sliding_window(image: np.ndarray, predictor: Predictor, *, patch: Sequence[int],
                   overlap: float = 0.5, flips: Sequence[tuple[int, ...]] = ((),),
                   progress: Callable[[float], None] | None = None,
                   out_channels: int = 1) -> np.ndarray:
    """Probability map (X, Y, Z) float32 of ``image`` (C, X, Y, Z) by Gaussian-blended windows;
    (K, X, Y, Z) with ``out_channels`` K > 1.

    Parameters
    ----------
    image
        (C, X, Y, Z) float32, each spatial size at least the patch size (pad first).
    predictor
        Maps (1, C, px, py, pz) to (1, K, px, py, pz) probabilities in [0, 1].
    patch
        Window size (px, py, pz) in voxels.
    overlap
        Fraction of a window shared with its neighbour, in [0, 1).
    flips
        Test-time augmentation: each entry is a tuple of spatial axes (0, 1, 2) to flip; the
        prediction is flipped back and averaged. ``((),)`` means no augmentation.
    progress
        Called with the fraction of windows done.
    out_channels
        K, the predictor's output channels (1 for a lesion map, 2 for the change network).
    """
    if image.ndim != 4:
        raise ValueError(f"image must be (C, X, Y, Z), got shape {image.shape}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be >= 0 and < 1, got {overlap}")
    if len(patch) != 3 or any(int(p) < 1 for p in patch):
        raise ValueError(f"patch must be three positive sizes, got {tuple(patch)}")
    spatial = image.shape[1:]
    if any(s < p for s, p in zip(spatial, patch, strict=True)):
        raise ValueError(f"image {spatial} is smaller than the patch {tuple(patch)}; pad it")
    if out_channels < 1:
        raise ValueError(f"out_channels must be >= 1, got {out_channels}")
    weight = gaussian_importance(patch)
    acc = np.zeros((out_channels, *spatial), dtype=np.float32)
    norm = np.zeros(spatial, dtype=np.float32)
    corners = window_corners(spatial, patch, overlap)
    for done, (x, y, z) in enumerate(corners, start=1):
        box = (slice(x, x + patch[0]), slice(y, y + patch[1]), slice(z, z + patch[2]))
        window = image[(slice(None), *box)][None]
        pred = np.zeros((out_channels, *patch), dtype=np.float32)
        for axes in flips:
            flip_axes = tuple(a + 2 for a in axes)
            inp = np.flip(window, flip_axes) if axes else window
            out = np.asarray(predictor(np.ascontiguousarray(inp)), dtype=np.float32)
            if out.shape[1] != out_channels:
                raise ValueError(f"the predictor gave {out.shape[1]} output channels, "
                                 f"expected {out_channels}")
            out = np.flip(out, flip_axes) if axes else out
            pred += out[0]
        acc[(slice(None), *box)] += weight * pred / len(flips)
        norm[box] += weight
        if progress is not None:
            progress(done / len(corners))
    result = acc / norm
    return np.asarray(result[0] if out_channels == 1 else result, dtype=np.float32)


def _env_threads() -> int:
    """``MS_DASH_THREADS`` (set by batch workers), 0 when unset or not a positive integer."""
    value = os.environ.get("MS_DASH_THREADS", "")
    return int(value) if value.isdigit() else 0


def available_providers() -> tuple[str, ...]:
    """The execution providers this onnxruntime build offers (not all may start here)."""
    import onnxruntime as ort

    return tuple(ort.get_available_providers())


@dataclass(frozen=True, eq=False)
class OnnxModel:
    """An onnxruntime session for a verified model card, and the provider actually used."""

    card: ModelCard
    session: Any
    provider: str
    #: why the CUDA provider is not in use although this onnxruntime build offers it ("" when
    #: it is in use, was not asked for, or the build has none), for the app and the logs.
    cuda_unavailable: str = ""

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, X, Y, Z) float32 -> (N, K, X, Y, Z) probabilities (K = 1 for a lesion map).

        On CUDA the call goes through IO binding (:func:`run_bound`); on CPU a plain ``run``.
        """
        x = np.ascontiguousarray(to_network_layout(batch, self.card), dtype=np.float32)
        if self.provider == "CUDAExecutionProvider":
            out = run_bound(self.session, self.card.input_name, x, self.card.output_name, "cuda")
        else:
            out = np.asarray(self.session.run([self.card.output_name],
                                              {self.card.input_name: x})[0])
        return output_probability(from_network_layout(out, self.card), self.card)


def to_network_layout(batch: np.ndarray, card: ModelCard) -> np.ndarray:
    """(N, C, X, Y, Z) windows of the RAS+ working grid in the network's orientation and axis
    order (card fields ``input.orientation``, ``input.axis_order``); our own models take them
    as they are."""
    out = batch[:, :, ::-1, ::-1, :] if card.orientation == "LPS" else batch
    return out.transpose(0, 1, 4, 3, 2) if card.axis_order == "zyx" else out


def from_network_layout(out: np.ndarray, card: ModelCard) -> np.ndarray:
    """The network's (N, K, ...) output back in the working grid's x, y, z RAS+ order (the
    inverse of :func:`to_network_layout`)."""
    out = out.transpose(0, 1, 4, 3, 2) if card.axis_order == "zyx" else out
    return out[:, :, ::-1, ::-1, :] if card.orientation == "LPS" else out


def output_probability(out: np.ndarray, card: ModelCard) -> np.ndarray:
    """(N, K, X, Y, Z) network output -> probabilities: a sigmoid or a softmax over the
    channels as ``output.activation`` says, then the ``output.class_index`` channel alone
    (N, 1, X, Y, Z) when the card names one."""
    out = np.asarray(out, dtype=np.float32)
    if card.activation == "sigmoid":
        out = 1.0 / (1.0 + np.exp(-out))
    elif card.activation == "softmax":
        e = np.exp(out - out.max(axis=1, keepdims=True))
        out = e / e.sum(axis=1, keepdims=True)
    if card.class_index is not None:
        if card.class_index >= out.shape[1]:
            raise InputError(card.onnx_path, f"output.class_index is {card.class_index} but the "
                                             f"network gave {out.shape[1]} output channels")
        out = out[:, card.class_index:card.class_index + 1]
    return out


def run_bound(session: Any, input_name: str, x: np.ndarray, output_name: str,
              device: str) -> np.ndarray:
    """One inference through onnxruntime IO binding, the output allocated on ``device``.

    The input is copied to the device once, onnxruntime allocates the output there from its
    arena (no host buffer per node) and it is copied back once. ``device`` is "cuda" or "cpu"
    (the CPU form is what the tests can check on a machine without a GPU).
    """
    binding = session.io_binding()
    binding.bind_cpu_input(input_name, np.ascontiguousarray(x, dtype=np.float32))
    binding.bind_output(output_name, device)
    session.run_with_iobinding(binding)
    return np.asarray(binding.copy_outputs_to_cpu()[0])


def load_onnx_model(card: ModelCard, device: str = "auto", threads: int | None = None
                    ) -> OnnxModel:
    """Create the onnxruntime session for ``card`` on ``device`` ("auto", "cpu" or "cuda").

    ``auto`` uses CUDA when onnxruntime can actually start it (``session.get_providers()``), CPU
    otherwise. ``cuda`` raises :class:`InputError` when CUDA cannot be used. ``threads`` sets the
    CPU intra-op threads (default: ``$MS_DASH_THREADS``, else all cores).
    """
    import onnxruntime as ort

    if device not in ("auto", "cpu", "cuda"):
        raise InputError(None, f"device must be auto, cpu or cuda, not {device!r}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or _env_threads() or (os.cpu_count() or 1)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    path = str(card.onnx_path)
    why_not = ""
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        session, why_not = _cuda_session(ort, path, opts)
        if session is not None:
            return OnnxModel(card, session, "CUDAExecutionProvider")
        # Expected on a machine without an NVIDIA GPU; worth a warning where a driver is loaded.
        (log.warning if _nvidia_driver_loaded() else log.info)(
            "CUDA provider not usable (%s); using the CPU provider", why_not)
    if device == "cuda":
        reason = why_not or "this onnxruntime build has no CUDA provider"
        raise InputError(card.onnx_path, "device 'cuda' requested but onnxruntime cannot use a "
                                         f"CUDA GPU here ({reason}); use --device auto or cpu")
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    return OnnxModel(card, session, session.get_providers()[0], why_not)


def _cuda_libraries_error(ort: Any) -> str:
    """Which library onnxruntime's CUDA provider lacks here ("" when none is known missing).

    onnxruntime itself would log this failure as an error on every session (and then fall back
    to the CPU), which alarms users of CPU-only machines. Loading the provider library first, as
    onnxruntime does (its shared provider bridge globally, then the CUDA provider), gives the
    same answer quietly and names the missing library. Any other loader error is left to
    onnxruntime to try and report.
    """
    import ctypes
    from pathlib import Path

    folder = Path(ort.__file__).parent / "capi"
    shared = sorted(folder.glob("*onnxruntime_providers_shared*"))
    cuda = sorted(folder.glob("*onnxruntime_providers_cuda*"))
    if not (shared and cuda):
        return ""  # unknown layout
    try:
        ctypes.CDLL(str(shared[0]), mode=getattr(os, "RTLD_GLOBAL", 0))
        ctypes.CDLL(str(cuda[0]))
    except OSError as e:
        if "cannot open shared object file" in str(e):
            return f"CUDA libraries not found: {e}"
    return ""


def _cuda_session(ort: Any, path: str, opts: Any) -> tuple[Any | None, str]:
    """A session whose first provider is CUDA, or ``None`` and the reason it cannot start."""
    missing = _cuda_libraries_error(ort)
    if missing:
        return None, missing
    try:
        session = ort.InferenceSession(path, opts, providers=[
            ("CUDAExecutionProvider", {"gpu_mem_limit": 6 * 1024**3,
                                       "arena_extend_strategy": "kSameAsRequested"}),
            "CPUExecutionProvider"])
    except (RuntimeError, ValueError, OSError) as e:  # CUDA libraries present but broken
        return None, f"onnxruntime could not start CUDA: {e}"
    if session.get_providers()[0] != "CUDAExecutionProvider":
        return None, "onnxruntime fell back to the CPU (no usable CUDA device?)"
    return session, ""


def _nvidia_driver_loaded() -> bool:
    """Whether an NVIDIA kernel driver is loaded (Linux), i.e. a GPU is expected to work."""
    return os.path.exists("/proc/driver/nvidia/version")


@dataclass(frozen=True, eq=False)
class TabularModel:
    """An onnxruntime CPU session of a tabular classifier (one float32 input, one output).

    The output named ``output`` is (N, n_classes) class probabilities (exported without
    zipmap); :meth:`predict_proba` returns it as float64.
    """

    model: VerifiedModel
    session: Any
    input_name: str
    output_name: str
    provider: str

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """(N, F) features -> (N, n_classes) probabilities."""
        x = np.atleast_2d(np.asarray(features, dtype=np.float32))
        out = self.session.run([self.output_name], {self.input_name: x})
        return np.asarray(out[0], dtype=np.float64)


def load_tabular_model(model: VerifiedModel, output: str = "probabilities",
                       threads: int = 1) -> TabularModel:
    """Create a CPU onnxruntime session for a verified tabular model.

    Small tree and linear models run fastest on one thread; a GPU would only add transfer
    time, so the CPU provider is used on every machine.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(model.onnx_path), opts,
                                       providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for corrupt graphs
        raise InputError(model.onnx_path, f"onnxruntime cannot load the model: {e}") from e
    inputs = session.get_inputs()
    outputs = [o.name for o in session.get_outputs()]
    if len(inputs) != 1 or output not in outputs:
        raise InputError(model.onnx_path, (
            f"expected one input and an output named {output!r}, got inputs "
            f"{[i.name for i in inputs]} and outputs {outputs}"))
    return TabularModel(model, session, inputs[0].name, output, session.get_providers()[0])


def predict_onnx_bytes(payload: bytes, x: np.ndarray, output: str) -> tuple[np.ndarray, str]:
    """Run an in-memory ONNX graph with one input once on the CPU, before it is written
    anywhere (an export's parity check): the ``output`` array and the graph's input name."""
    import onnxruntime as ort

    session = ort.InferenceSession(payload, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.asarray(session.run([output], {name: x})[0]), name
