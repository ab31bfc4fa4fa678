import os
from pathlib import Path

import pytest
import torch

# Small tensors everywhere: one thread is as fast, and immune to a busy second core.
torch.set_num_threads(int(os.environ.get("FER_EDGE_TORCH_THREADS", "1")))

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "data" / "golden"
BLOCK = REPO / "tests" / "data" / "vss_block"
MAIN_MODEL = REPO / "models" / "fer-yolo-mamba-nano.onnx"
SAMPLE = REPO / "samples" / "obama.jpg"


@pytest.fixture(scope="session")
def exported_nano():
    """nano, placeholder weights calibrated at 64x64, exported at 64x64: (torch, onnx)."""
    from fer_edge_training.export import build, export_model

    model = build("nano", seed=3, size=64)
    return model, export_model(model, 64)
