"""PyTorch side of fer-edge: FER-YOLO-Mamba, its selective scan, ONNX export, goldens."""

__all__ = ["decode", "export", "model", "onnx_graph", "preprocess", "scan"]
