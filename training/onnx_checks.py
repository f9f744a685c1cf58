"""Shared by the tabular training scripts: run an exported ONNX file and refuse a bad export."""

from __future__ import annotations

import numpy as np

__all__ = ["ParityError", "onnx_probabilities"]


class ParityError(RuntimeError):
    """ONNX and scikit-learn probabilities differ by more than the allowed tolerance."""


def onnx_probabilities(onnx_bytes: bytes, x: np.ndarray, *, input_name: str = "features",
                       output_name: str = "probabilities") -> np.ndarray:
    """Run an exported classifier on CPU: (N, F) -> (N, n_classes) probabilities, float64."""
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    out = sess.run([output_name], {input_name: np.asarray(x, dtype=np.float32)})
    return np.asarray(out[0], dtype=np.float64)
