"""The segmentation network: the model store (manifest, cards, sha256), ONNX inference, whole-visit
segmentation, evaluation against masks.
"""
