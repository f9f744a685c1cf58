"""Shared by the tabular training scripts: run an exported ONNX file and refuse a bad export."""

from __future__ import annotations

import numpy as np

__all__ = ["ParityError", "check_parity", "onnx_probabilities"]


class ParityError(RuntimeError):
    """ONNX and scikit-learn probabilities differ by more than the allowed tolerance."""


def onnx_probabilities(onnx_bytes: bytes, x: np.ndarray, *, input_name: str = "features",
                       output_name: str = "probabilities") -> np.ndarray:
    """Run an exported classifier on CPU: (N, F) -> (N, n_classes) probabilities, float64."""
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    out = sess.run([output_name], {input_name: np.asarray(x, dtype=np.float32)})
    return np.asarray(out[0], dtype=np.float64)


def check_parity(onnx_bytes: bytes, p_reference: np.ndarray, x: np.ndarray, tol: float) -> float:
    """``max |p_onnx - p_reference|`` over ``x``; raises :class:`ParityError` above ``tol``.

    Call it before anything is written: a refused export leaves the previous model in place.
    """
    gap = float(np.max(np.abs(onnx_probabilities(onnx_bytes, x) - p_reference)))
    if not gap <= tol:
        raise ParityError(f"ONNX and scikit-learn probabilities differ by {gap:.3g} > {tol:g}; "
                          "refusing to write the model")
    return gap
