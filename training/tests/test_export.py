import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from fer_edge_training.export import (
    OUTPUT_NAMES,
    build_block,
    run_onnxruntime,
    run_reference,
    torch_to_onnx,
)
from fer_edge_training.onnx_graph import (
    count_ops,
    make_scan_twin,
    register_onnx_schema,
    selective_scan_numpy,
)
from fer_edge_training.scan import selective_scan_ref, set_scan_impl

from .conftest import BLOCK, GOLDEN, MAIN_MODEL


def torch_levels(model, x):
    set_scan_impl(model, "ref")
    try:
        with torch.no_grad():
            return [t.numpy() for t in model(torch.from_numpy(x))]
    finally:
        set_scan_impl(model, "fast")


def assert_close(got, want, tol=1e-4):
    scale = max(1.0, float(np.abs(want).max()))
    err = float(np.abs(got - want).max())
    assert err <= tol * scale, f"max abs diff {err} (scale {scale})"


def scan_nodes(model):
    return [n for n in model.graph.node if n.op_type == "SelectiveScan"]


def test_selective_scan_contract(exported_nano):
    _, m = exported_nano
    nodes = scan_nodes(m)
    assert len(nodes) == 4 == count_ops(m, "SelectiveScan", "fer_edge")
    imports = {op.domain: op.version for op in m.opset_import}
    assert imports["fer_edge"] == 1
    assert imports[""] >= 17
    for n in nodes:
        assert n.domain == "fer_edge"
        assert len(n.input) == 7 and len(n.output) == 1
        attrs = {a.name: a for a in n.attribute}
        assert set(attrs) == {"delta_softplus"}
        assert attrs["delta_softplus"].type == onnx.AttributeProto.INT
        assert attrs["delta_softplus"].i == 1
    assert [i.name for i in m.graph.input] == ["images"]
    assert [o.name for o in m.graph.output] == OUTPUT_NAMES
    dims = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 64, 64]
    # no external data, nothing outside the standard domain but the scan
    for init in m.graph.initializer:
        assert init.data_location != onnx.TensorProto.EXTERNAL
    assert {n.domain for n in m.graph.node} <= {"", "fer_edge"}
    onnx.checker.check_model(m, full_check=True)


def test_gather_indices_are_constant_permutations(exported_nano):
    _, m = exported_nano
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    consts = {
        n.output[0]: numpy_helper.to_array(n.attribute[0].t)
        for n in m.graph.node
        if n.op_type == "Constant"
    }
    gathers = [n for n in m.graph.node if n.op_type == "Gather"]
    assert len(gathers) == 8  # one cross-scan + one cross-merge per SS2D
    for n in gathers:
        idx = inits.get(n.input[1], consts.get(n.input[1]))
        assert idx is not None, f"Gather {n.name} has computed indices"
        assert idx.dtype == np.int64 and idx.ndim == 1
        # 8 directions over L pixels: a permutation of range(8L) (merge) or 8 of range(L)
        length = idx.size // 8
        s = np.sort(idx)
        assert np.array_equal(s, np.arange(8 * length)) or np.array_equal(
            s, np.repeat(np.arange(length), 8)
        )


def test_a_is_minus_exp_a_log_in_graph(exported_nano):
    model, m = exported_nano
    scan = scan_nodes(m)[0]
    producers = {o: n for n in m.graph.node for o in n.output}
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    a_name = scan.input[2]
    if a_name in inits:
        a = inits[a_name]
    else:
        neg = producers[a_name]
        assert neg.op_type == "Neg"
        exp = producers[neg.input[0]]
        assert exp.op_type == "Exp"
        a = -np.exp(inits[exp.input[0]])
    assert a.shape[1] == 16 and np.all(a < 0)
    assert any(
        np.allclose(a, -np.exp(p.detach().numpy()))
        for p in [mod.A_logs for mod in model.modules() if hasattr(mod, "A_logs")]
    )


def test_main_graph_reference_evaluator_matches_pytorch(exported_nano):
    model, m = exported_nano
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    got = run_reference(m, {"images": x})
    want = torch_levels(model, x)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        assert_close(g, w)


def test_scan_twin_onnxruntime_matches_pytorch(exported_nano):
    model, m = exported_nano
    twin = make_scan_twin(m)
    onnx.checker.check_model(twin, full_check=True)
    assert count_ops(twin, "SelectiveScan") == 0
    assert count_ops(twin, "Scan") == 4
    assert all(op.domain != "fer_edge" for op in twin.opset_import)
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)
    got = run_onnxruntime(twin, {"images": x})
    for g, w in zip(got, torch_levels(model, x), strict=True):
        assert_close(g, w)


def _body_broadcasts(graph):
    """Elementwise nodes of a Scan body whose inputs' shapes differ (implicit broadcast)."""
    shapes = {}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    bad = []
    for n in graph.node:
        if n.op_type in ("Add", "Mul", "Sub", "Div", "Where"):
            s = [shapes.get(i) for i in n.input]
            assert all(x is not None for x in s), f"unknown shape in {n.name}"
            if any(x != s[0] for x in s):
                bad.append(n.output[0])
    return bad


def test_scan_twin_body_has_only_explicit_expands():
    block = build_block(0)
    x = torch.randn(1, 32, 8, 6)
    twin = make_scan_twin(torch_to_onnx(block, (x,), ["x"], ["y"]))
    inferred = onnx.shape_inference.infer_shapes(twin)
    bodies = [
        a.g
        for n in inferred.graph.node
        if n.op_type == "Scan"
        for a in n.attribute
        if a.type == onnx.AttributeProto.GRAPH
    ]
    assert len(bodies) == 1
    body = bodies[0]
    assert _body_broadcasts(body) == []
    assert sum(n.op_type == "Expand" for n in body.node) == 4


def test_numpy_kernel_matches_torch_reference():
    g = np.random.default_rng(3)
    u = g.standard_normal((2, 6, 9)).astype(np.float32)
    delta = g.standard_normal((2, 6, 9)).astype(np.float32)
    a = -np.exp(g.standard_normal((6, 4))).astype(np.float32)
    bs = g.standard_normal((2, 3, 4, 9)).astype(np.float32)
    cs = g.standard_normal((2, 3, 4, 9)).astype(np.float32)
    d = g.standard_normal(6).astype(np.float32)
    db = g.standard_normal(6).astype(np.float32)
    for sp in (0, 1):
        got = selective_scan_numpy(u, delta, a, bs, cs, d, db, sp)
        args = [torch.from_numpy(v) for v in (u, delta, a, bs, cs, d, db)]
        want = selective_scan_ref(*args, delta_softplus=bool(sp)).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ---- the generated artifacts -------------------------------------------------------


@pytest.mark.skipif(not BLOCK.exists(), reason="tests/data/vss_block not generated")
def test_block_artifacts_agree():
    register_onnx_schema()
    x = np.load(BLOCK / "vss_block_input.npy")
    y = np.load(BLOCK / "vss_block_output.npy")
    assert x.shape == (1, 32, 8, 6) and x.dtype == np.float32
    main = onnx.load(str(BLOCK / "vss_block.onnx"))
    twin = onnx.load(str(BLOCK / "vss_block_scan.onnx"))
    assert count_ops(main, "SelectiveScan", "fer_edge") == 1
    assert count_ops(twin, "Scan") == 1 and count_ops(twin, "SelectiveScan") == 0
    (got_main,) = run_reference(main, {"x": x})
    (got_twin,) = run_onnxruntime(twin, {"x": x})
    assert_close(got_main, y, 1e-5)
    assert_close(got_twin, y, 1e-5)
    assert np.abs(y - x).max() > 1e-2  # the block does something
    size = sum(p.stat().st_size for p in BLOCK.iterdir())
    assert size < 200_000


@pytest.mark.skipif(not MAIN_MODEL.exists(), reason="models/ not generated")
def test_main_model_artifact_twin_reproduces_golden_levels():
    register_onnx_schema()
    m = onnx.load(str(MAIN_MODEL))
    assert count_ops(m, "SelectiveScan", "fer_edge") == 4
    dims = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    size = json.loads((GOLDEN / "detections.json").read_text())["size"]
    assert dims == [1, 3, size, size]
    x = np.load(GOLDEN / "input.npy")
    got = run_onnxruntime(make_scan_twin(m), {"images": x})
    for i, g in enumerate(got):
        assert_close(g, np.load(GOLDEN / f"level{i}.npy"))


@pytest.mark.parametrize("impl", ["fast", "ref", "native"])
def test_export_emits_one_node_per_scan_whatever_the_impl(impl):
    block = set_scan_impl(build_block(0), impl)
    m = torch_to_onnx(block, (torch.randn(1, 32, 8, 6),), ["x"], ["y"])
    assert count_ops(m, "SelectiveScan", "fer_edge") == 1
    assert count_ops(m, "Scan") == count_ops(m, "Loop") == 0
    assert len(m.graph.node) < 120  # nothing unrolled over the 48 time steps
