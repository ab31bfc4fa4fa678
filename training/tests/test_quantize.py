"""Post-training int8 quantization (fer_edge_training.quantize) on hand-built models that
onnxruntime runs both before and after the rewrite."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fer_edge_training.onnx_graph import count_ops
from fer_edge_training.quantize import (
    FORMS,
    activation_params,
    calibrate,
    conv_values,
    ort_session,
    quantizable_convs,
    quantize_conv_weights,
    quantize_convs,
    sqnr_db,
)

#: Two int8 convolutions against float32: the outputs must agree to this SQNR (dB) and
#: every output to this fraction of the largest output magnitude.
MIN_SQNR_DB = 28.0
MAX_ABS_ERROR = 0.05


def _conv(rng, name, x, y, cin, cout, k, nodes, inits, bias=True):
    # output channels of very different magnitudes, as after folding batch norms
    w = rng.normal(0, 1 / np.sqrt(cin * k * k), (cout, cin, k, k))
    w *= rng.uniform(0.1, 2.0, (cout, 1, 1, 1))
    inits.append(numpy_helper.from_array(w.astype(np.float32), f"{name}.weight"))
    inputs = [x, f"{name}.weight"]
    if bias:
        b = rng.normal(0, 0.2, cout).astype(np.float32)
        inits.append(numpy_helper.from_array(b, f"{name}.bias"))
        inputs.append(f"{name}.bias")
    nodes.append(
        helper.make_node("Conv", inputs, [y], name=name, kernel_shape=[k, k], pads=[k // 2] * 4)
    )


def tiny_model(chained: bool = False, seed: int = 0) -> onnx.ModelProto:
    """x [1,3,16,16] -> Conv 3x3 -> SiLU -> Conv 3x3 -> y; ``chained``: and -> Conv 1x1
    straight after the second Conv (no activation between)."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    _conv(rng, "conv1", "x", "c1", 3, 16, 3, nodes, inits)
    nodes += [
        helper.make_node("Sigmoid", ["c1"], ["s1"], name="sigmoid1"),
        helper.make_node("Mul", ["c1", "s1"], ["a1"], name="silu1"),
    ]
    if chained:
        _conv(rng, "conv2", "a1", "c2", 16, 32, 3, nodes, inits)
        _conv(rng, "conv3", "c2", "y", 32, 8, 1, nodes, inits, bias=False)
    else:
        _conv(rng, "conv2", "a1", "y", 16, 32, 3, nodes, inits)
    channels = 8 if chained else 32
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 16, 16])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def feeds(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(0, 1, (1, 3, 16, 16)).astype(np.float32)} for _ in range(count)]


def run(model: onnx.ModelProto, feed: dict) -> np.ndarray:
    return ort_session(model).run(None, feed)[0]


def quantized_tiny(form: str, chained: bool = False, **options):
    model = tiny_model(chained)
    convs = quantizable_convs(model)
    ranges = calibrate(model, feeds(8, seed=1), conv_values(model, convs, form))
    return model, quantize_convs(model, ranges, convs, form=form, **options)


def _initializer(model: onnx.ModelProto, name: str) -> TensorProto:
    return next(i for i in model.graph.initializer if i.name == name)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("per_channel", [True, False])
def test_quantized_model_agrees_with_float(form, per_channel):
    model, quantized = quantized_tiny(form, per_channel=per_channel)
    onnx.checker.check_model(quantized, full_check=True)
    for feed in feeds(4, seed=2):  # not the calibration inputs
        ref, got = run(model, feed), run(quantized, feed)
        assert ref.shape == got.shape
        assert sqnr_db(ref, got) > MIN_SQNR_DB
        assert np.abs(ref - got).max() <= MAX_ABS_ERROR * np.abs(ref).max()


def test_qlinear_form_every_conv_is_qlinearconv_with_int8_weights():
    model, quantized = quantized_tiny("qlinear")
    assert count_ops(quantized, "Conv") == 0
    assert count_ops(quantized, "QLinearConv") == 2
    for node in quantized.graph.node:
        if node.op_type == "QLinearConv":
            weight = _initializer(quantized, node.input[3])
            assert weight.data_type == TensorProto.INT8
            w_scale = numpy_helper.to_array(_initializer(quantized, node.input[4]))
            assert w_scale.shape == (weight.dims[0],)  # per output channel
            assert _initializer(quantized, node.input[8]).data_type == TensorProto.INT32
            assert _initializer(quantized, node.input[2]).data_type == TensorProto.INT8
    # the float weights are gone: the file is smaller
    assert not {"conv1.weight", "conv2.weight"} & {i.name for i in quantized.graph.initializer}
    assert quantized.ByteSize() < 0.5 * model.ByteSize()


def test_integer_form_every_conv_is_convinteger_with_int8_weights():
    model, quantized = quantized_tiny("integer")
    assert count_ops(quantized, "Conv") == 0
    assert count_ops(quantized, "ConvInteger") == 2
    for node in quantized.graph.node:
        if node.op_type == "ConvInteger":
            assert _initializer(quantized, node.input[1]).data_type == TensorProto.INT8
    assert quantized.ByteSize() < 0.5 * model.ByteSize()


def test_chained_qlinear_convs_share_the_int8_value():
    model, quantized = quantized_tiny("qlinear", chained=True)
    assert count_ops(quantized, "QLinearConv") == 3
    # conv2's int8 output feeds conv3 as it is: one QuantizeLinear (conv1's input x) and
    # one DequantizeLinear per float reader (SiLU after conv1, the output y)
    assert count_ops(quantized, "QuantizeLinear") == 2  # x, and the SiLU output
    assert count_ops(quantized, "DequantizeLinear") == 2
    for feed in feeds(2, seed=2):
        ref, got = run(model, feed), run(quantized, feed)
        # three requantized outputs in a row, the last one the model's output: less exact
        assert sqnr_db(ref, got) > MIN_SQNR_DB - 8


def test_keep_f32_leaves_matching_convs():
    model = tiny_model()
    assert quantizable_convs(model, ["conv1"]) == ["y"]
    assert quantizable_convs(model, ["*.weight"]) == []
    ranges = calibrate(model, feeds(2, seed=1), conv_values(model, ["y"], "qlinear"))
    quantized = quantize_convs(model, ranges, ["y"], form="qlinear")
    assert count_ops(quantized, "Conv") == 1 and count_ops(quantized, "QLinearConv") == 1


def test_calibrate_percentile_is_inside_min_max():
    model = tiny_model()
    names = conv_values(model, quantizable_convs(model), "qlinear")
    assert names == ["x", "c1", "a1", "y"]
    full = calibrate(model, feeds(3, seed=1), names)
    clipped = calibrate(model, feeds(3, seed=1), names, percentile=99.0)
    x = np.concatenate([f["x"].ravel() for f in feeds(3, seed=1)])
    assert full["x"] == (float(x.min()), float(x.max()))
    for name in names:
        assert full[name][0] <= clipped[name][0] < clipped[name][1] <= full[name][1]


@pytest.mark.parametrize("dtype", ["int8", "uint8"])
def test_activation_params_hold_zero_and_the_range(dtype):
    for lo, hi in [(-1.0, 3.0), (0.5, 2.0), (-4.0, -1.0), (0.0, 0.0)]:
        scale, zp = activation_params((lo, hi), dtype)
        info = np.iinfo(zp.dtype)
        assert scale > 0
        # zero is exactly representable; the range fits the codes
        assert info.min <= zp <= info.max
        assert (min(lo, 0.0) / scale + int(zp)) >= info.min - 0.5
        assert (max(hi, 0.0) / scale + int(zp)) <= info.max + 0.5


def test_weights_round_trip_per_channel():
    rng = np.random.default_rng(3)
    w = rng.normal(0, 1, (4, 2, 3, 3)).astype(np.float32)
    w[1] *= 0.01
    w[3] = 0  # an all-zero channel
    b = np.array([0.5, -0.25, 0.0, 1.0], np.float32)
    w_q, scale, b_q = quantize_conv_weights(w, b, x_scale=0.02)
    assert w_q.dtype == np.int8 and np.abs(w_q).max() <= 127
    assert scale.shape == (4,) and np.all(scale > 0)
    err = np.abs(w_q * scale[:, None, None, None] - w)
    assert np.all(err <= scale[:, None, None, None] / 2 + 1e-7)
    assert b_q.dtype == np.int32
    np.testing.assert_allclose(b_q * 0.02 * scale, b, atol=0.02 * scale.max())
    # one scale for all: the small channel loses its resolution
    _, tensor_scale, _ = quantize_conv_weights(w, b, x_scale=0.02, per_channel=False)
    assert np.all(tensor_scale == tensor_scale[0]) and tensor_scale[0] == scale.max()


@pytest.mark.parametrize("version", [3, 2, 1])
def test_a_block_with_fer_edge_scans_quantizes_and_keeps_its_scan_float(version):
    """What the quantize CLI does, on the golden block in every ONNX contract version:
    ranges from the scan twin in onnxruntime, Convs rewritten on the model itself, whose
    scan node stays float32 and whose contract version is kept; the rewritten model (run
    by the reference evaluator with the fer_edge kernels) agrees with the rewritten twin
    (onnxruntime) and, to int8 precision, with the float model."""
    import torch

    from fer_edge_training.export import build_block, run_reference, torch_to_onnx
    from fer_edge_training.onnx_graph import make_scan_twin, register_onnx_schema, scan_op_version

    register_onnx_schema()
    block = build_block(0)
    x0 = torch.randn(1, 32, 8, 6)
    model = torch_to_onnx(block, (x0,), ["x"], ["y"], scan_op_version=version)
    op = "SelectiveScan" if version == 1 else "SelectiveScan2D"
    twin = make_scan_twin(model)
    convs = quantizable_convs(model)
    assert len(convs) == 4  # the depthwise conv of SS2D, local in/out, the fusion conv
    g = np.random.default_rng(5)
    frames = [{"x": g.standard_normal((1, 32, 8, 6)).astype(np.float32)} for _ in range(6)]
    ranges = calibrate(twin, frames[:4], conv_values(model, convs))
    quantized = quantize_convs(model, ranges, convs)
    onnx.checker.check_model(quantized, full_check=True)
    assert scan_op_version(quantized) == version
    assert count_ops(quantized, op, "fer_edge") == 1
    assert count_ops(quantized, "ConvInteger") == 4 and count_ops(quantized, "Conv") == 0
    elem = {
        vi.name: vi.type.tensor_type.elem_type
        for vi in onnx.shape_inference.infer_shapes(quantized).graph.value_info
    }
    scan = next(n for n in quantized.graph.node if n.op_type == op)
    for name in scan.input:
        assert elem.get(name, TensorProto.FLOAT) == TensorProto.FLOAT, name
    twin_q = quantize_convs(twin, ranges, convs)
    for feed in frames[4:]:
        want = run(twin, feed)  # float32
        (got,) = run_reference(quantized, feed)
        got_twin = run(twin_q, feed)
        assert np.abs(got - got_twin).max() <= 1e-4 * np.abs(got_twin).max()
        assert sqnr_db(want, got) > MIN_SQNR_DB
