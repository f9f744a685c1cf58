"""Lesion segmentation: synthetic training data, 3D U-Net, training loop and ONNX export."""
