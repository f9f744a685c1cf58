"""Training code that produces the ONNX models in models_onnx/ (needs requirements-train.txt)."""
