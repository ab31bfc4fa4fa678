"""Back from ONNX: the exported weights load into the PyTorch model, which then computes
what the ONNX model computes, in eval mode and, after the BatchNorm re-estimation, in
training mode too. The default export is ONNX contract version 3 (the dt projection's
weight an input of SelectiveScan2D); versions 2 and 1 load as well."""

import copy

import numpy as np
import onnx
import pytest
import torch

from fer_edge_training.from_onnx import load_onnx_weights, reestimate_norms


@pytest.fixture(scope="module")
def onnx_file(exported_nano, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "nano64.onnx"
    onnx.save(exported_nano[1], str(path))
    return path


@pytest.fixture(scope="module")
def loaded(onnx_file):
    return load_onnx_weights(onnx_file, "nano", 64)


def smooth_images(count, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.interpolate(torch.randn(count, 3, 8, 8, generator=g), size=size)
    return x * 0.8


def test_ss2d_weights_come_back_exactly(exported_nano, loaded):
    """The SS2D parameters are not folded into anything: each comes back bit for bit,
    ``dt_projs_weight`` from the ``[K*Di, R]`` dt_weight input of a version 3 node."""
    want = exported_nano[0].state_dict()
    keys = [k for k in want if ".ss2d." in k]
    assert any(k.endswith("dt_projs_weight") for k in keys)
    for key, value in loaded.state_dict().items():
        if key in keys:
            assert torch.equal(value, want[key]), key


def test_loaded_weights_compute_what_the_exported_model_computes(exported_nano, loaded):
    model = copy.deepcopy(loaded)
    x = smooth_images(2)
    with torch.no_grad():
        ours = [lv.numpy() for lv in model(x)]
        want = [lv.numpy() for lv in exported_nano[0].eval()(x)]
    for a, b in zip(ours, want, strict=True):
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()


def test_reestimated_norms_keep_eval_and_make_training_mode_agree(loaded):
    model = copy.deepcopy(loaded)
    images = smooth_images(8, seed=1)
    with torch.no_grad():
        before = model.eval()(images)
        # (training mode updates the running statistics: on a copy)
        train_mode_before = copy.deepcopy(model).train()(images)[0]
        reestimate_norms(model, images)
        after = model.eval()(images)
        train_mode_after = copy.deepcopy(model).train()(images)[0]
    for a, b in zip(after, before, strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-3 * float(b.abs().max()))
    # identity BatchNorms normalise by batch statistics in training mode: far off;
    # re-estimated ones see the statistics they were fitted to: close
    scale = float(before[0].abs().max())
    assert float((train_mode_before - before[0]).abs().max()) > 0.1 * scale
    assert float((train_mode_after - before[0]).abs().max()) < 0.02 * scale


def test_a_model_of_another_variant_is_refused(onnx_file):
    with pytest.raises((ValueError, RuntimeError)):
        load_onnx_weights(onnx_file, "s", 64)


@pytest.mark.parametrize("version", [2, 1])
def test_an_older_version_file_loads_too(exported_nano_at, version, tmp_path):
    """A model in ONNX contract version 1 or 2 (a shipped one, say): the fresh export is
    made in that version as well, and the weights come back."""
    from fer_edge_training.onnx_graph import scan_op_version

    exported = exported_nano_at(version)
    path = tmp_path / f"nano64_v{version}.onnx"
    onnx.save(exported[1], str(path))
    assert scan_op_version(onnx.load(str(path))) == version
    model = load_onnx_weights(path, "nano", 64)
    x = smooth_images(2, seed=2)
    with torch.no_grad():
        ours = [lv.numpy() for lv in model(x)]
        want = [lv.numpy() for lv in exported[0].eval()(x)]
    for a, b in zip(ours, want, strict=True):
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()
