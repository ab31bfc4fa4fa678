import json
import math

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from fer_edge_training.export import (
    OUTPUT_NAMES,
    build_block,
    build_parser,
    main,
    run_onnxruntime,
    run_reference,
    torch_to_onnx,
)
from fer_edge_training.onnx_graph import (
    CONFIDENCE_METADATA_KEY,
    INPUT_NAMES,
    INPUT_NAMES_LOW_RANK,
    count_ops,
    lower_scan_2d,
    make_scan_twin,
    register_onnx_schema,
    scan_op_version,
    selective_scan_numpy,
    set_confidence,
    static_shapes,
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


def scan_nodes(model, op_type=None):
    ops = ("SelectiveScan", "SelectiveScan2D") if op_type is None else (op_type,)
    return [n for n in model.graph.node if n.op_type in ops]


def scan_inputs(n):
    """A scan node's inputs by the contract's names (the version 3 form has 8)."""
    names = INPUT_NAMES_LOW_RANK if len(n.input) == len(INPUT_NAMES_LOW_RANK) else INPUT_NAMES
    return dict(zip(names, n.input, strict=True))


def assert_scan_node_contract(n, inputs=7):
    assert n.domain == "fer_edge"
    assert len(n.input) == inputs and len(n.output) == 1
    attrs = {a.name: a for a in n.attribute}
    assert set(attrs) == {"delta_softplus"}
    assert attrs["delta_softplus"].type == onnx.AttributeProto.INT
    assert attrs["delta_softplus"].i == 1


def assert_model_interface(m):
    assert [i.name for i in m.graph.input] == ["images"]
    assert [o.name for o in m.graph.output] == OUTPUT_NAMES
    dims = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 64, 64]
    # no external data, nothing outside the standard domain but the scan
    for init in m.graph.initializer:
        assert init.data_location != onnx.TensorProto.EXTERNAL
    assert {n.domain for n in m.graph.node} <= {"", "fer_edge"}
    onnx.checker.check_model(m, full_check=True)


def test_no_broadcast_op_outside_the_scan(exported_nano_at):
    """The neck's x2 upsampling exports as copies (Concat), not as an Expand: tract runs
    Expand as a generic broadcast several times slower (model.upsample2x)."""
    _, m = exported_nano_at(3)
    assert count_ops(m, "Expand") == 0
    assert count_ops(m, "Resize") == 0


@pytest.mark.parametrize("version", [3, 2])
def test_selective_scan_2d_contract(exported_nano_at, version):
    """Versions 3 (the default) and 2: one SelectiveScan2D per SS2D block, with the shapes
    of docs/model-contract.md (version 3: dt_low and dt_weight instead of delta), and no
    Gather or merge anywhere in the graph."""
    _, m = exported_nano_at(version)
    nodes = scan_nodes(m)
    assert len(nodes) == 4 == count_ops(m, "SelectiveScan2D", "fer_edge")
    assert count_ops(m, "SelectiveScan") == 0
    imports = {op.domain: op.version for op in m.opset_import}
    assert imports["fer_edge"] == version == scan_op_version(m)
    assert imports[""] >= 17
    shapes = static_shapes(m)
    seen_grids = set()
    for n in nodes:
        assert n.op_type == "SelectiveScan2D"
        assert_scan_node_contract(n, inputs=8 if version == 3 else 7)
        s = {name: shapes[v] for name, v in scan_inputs(n).items()}
        b, di, h, w = s["u"]
        assert b == 1
        if version == 3:
            r = s["dt_weight"][1]
            assert r == math.ceil(di / 2 / 16)  # dt_rank = ceil(d_model / 16), Di = 2 d_model
            assert s["dt_low"] == [1, 8, r, h, w] and s["dt_weight"] == [8 * di, r]
        else:
            assert s["delta"] == [1, 8, di, h, w]
        assert s["Bs"] == s["Cs"] == [1, 8, 16, h, w]
        assert s["A"] == [8 * di, 16] and s["D"] == s["delta_bias"] == [8 * di]
        assert shapes[n.output[0]] == s["u"]
        seen_grids.add((h, w))
    assert seen_grids == {(8, 8), (4, 4), (2, 2)}  # N3/P4 at 64/8, N4 at 64/16, N5
    for op in ("Gather", "GatherElements", "GatherND", "ScatterElements", "ReduceSum"):
        assert count_ops(m, op) == 0, op
    assert_model_interface(m)


def _first_computation(m, value):
    """The op type of the first node, walking back from ``value``, that is not a mere
    reshaping of its input."""
    producers = {o: n for n in m.graph.node for o in n.output}
    node = producers[value]
    while node.op_type in ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity"):
        node = producers[node.input[0]]
    return node.op_type


def test_version_3_has_no_dt_projection_in_the_graph(exported_nano, exported_nano_v2):
    """Version 3 leaves the dt projection to SelectiveScan2D: its second input (dt_low) is
    a slice of x_proj's output, not a MatMul's, and the graph has one MatMul per SS2D
    block fewer than version 2's, whose delta is a MatMul's output."""
    _, v3 = exported_nano
    _, v2 = exported_nano_v2
    for n in scan_nodes(v3):
        assert _first_computation(v3, n.input[1]) == "Split"
    for n in scan_nodes(v2):
        assert _first_computation(v2, n.input[1]) == "MatMul"
    assert count_ops(v2, "MatMul") - count_ops(v3, "MatMul") == 4


@pytest.mark.parametrize("version", [3, 2])
def test_selective_scan_2d_inputs_come_from_projections_not_gathers(exported_nano_at, version):
    """Walking back from every SelectiveScan2D input and forward from its output to the
    next LayerNormalization meets no index op: the grid layout goes straight through."""
    _, m = exported_nano_at(version)
    producers = {o: n for n in m.graph.node for o in n.output}
    consumers = {}
    for n in m.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    for scan in scan_nodes(m, "SelectiveScan2D"):
        seen, todo = [], list(scan.input)
        while todo:
            p = producers.get(todo.pop())
            if p is None or p.op_type in ("Conv", "LayerNormalization"):
                continue
            seen.append(p.op_type)
            todo.extend(p.input)
        assert "MatMul" in seen and not {"Gather", "Concat", "Slice"} & set(seen), seen
        after, frontier = [], [scan.output[0]]
        while frontier:
            for c in consumers.get(frontier.pop(), []):
                after.append(c.op_type)
                if c.op_type != "LayerNormalization":
                    frontier.extend(c.output)
        assert "LayerNormalization" in after and "Gather" not in after, after


def test_selective_scan_contract_v1(exported_nano_v1):
    _, m = exported_nano_v1
    nodes = scan_nodes(m)
    assert len(nodes) == 4 == count_ops(m, "SelectiveScan", "fer_edge")
    assert count_ops(m, "SelectiveScan2D") == 0
    imports = {op.domain: op.version for op in m.opset_import}
    assert imports["fer_edge"] == 1 == scan_op_version(m)
    assert imports[""] >= 17
    for n in nodes:
        assert_scan_node_contract(n)
    assert_model_interface(m)


def test_gather_indices_are_constant_permutations(exported_nano_v1):
    _, m = exported_nano_v1
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


@pytest.mark.parametrize("version", [3, 2, 1])
def test_a_is_minus_exp_a_log_in_graph(exported_nano_at, version):
    model, m = exported_nano_at(version)
    scan = scan_nodes(m)[0]
    producers = {o: n for n in m.graph.node for o in n.output}
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    a_name = scan_inputs(scan)["A"]
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


@pytest.mark.parametrize("version", [3, 2, 1])
def test_main_graph_reference_evaluator_matches_pytorch(exported_nano_at, version):
    model, m = exported_nano_at(version)
    assert scan_op_version(m) == version
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    got = run_reference(m, {"images": x})
    want = torch_levels(model, x)
    worst = 0.0
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        assert_close(g, w, 1e-5)
        worst = max(worst, float(np.abs(g - w).max()))
    print(f"v{version} reference evaluator vs PyTorch: max abs diff {worst:.2e}")


@pytest.mark.parametrize("version", [3, 2])
def test_lowered_to_v1_computes_the_same(exported_nano_at, version):
    """lower_scan_2d (what the scan twin starts from) rewrites every SelectiveScan2D into
    the version 1 form (a version 3 node: its dt projection as a MatMul first); the
    reference evaluator gives the same levels on both."""
    _, m = exported_nano_at(version)
    low = lower_scan_2d(m)
    onnx.checker.check_model(low, full_check=True)
    assert count_ops(low, "SelectiveScan2D") == 0
    assert count_ops(low, "SelectiveScan", "fer_edge") == 4
    assert count_ops(low, "Gather") == 4 * (4 + 1)  # u, delta, Bs, Cs in; y back
    assert count_ops(low, "MatMul") == count_ops(m, "MatMul") + (4 if version == 3 else 0)
    assert scan_op_version(low) == 1
    assert scan_op_version(m) == version  # the input is left alone
    x = np.random.default_rng(4).standard_normal((1, 3, 64, 64)).astype(np.float32)
    got, want = run_reference(low, {"images": x}), run_reference(m, {"images": x})
    for a, b in zip(got, want, strict=True):
        assert_close(a, b, 1e-5)


def test_version_3_computes_what_version_2_computes(exported_nano, exported_nano_v2):
    """The same weights exported in versions 3 and 2: the same levels, from the reference
    evaluator with the numpy kernels and from the Scan twins in onnxruntime (the dt
    projection summed in another order: rounding only)."""
    _, v3 = exported_nano
    _, v2 = exported_nano_v2
    x = np.random.default_rng(5).standard_normal((1, 3, 64, 64)).astype(np.float32)
    feeds = {"images": x}
    for run, (a, b) in (
        (run_reference, (v3, v2)),
        (run_onnxruntime, (make_scan_twin(v3), make_scan_twin(v2))),
    ):
        for got, want in zip(run(a, feeds), run(b, feeds), strict=True):
            assert got.shape == want.shape
            assert_close(got, want, 1e-5)


@pytest.mark.parametrize("version", [3, 2, 1])
def test_scan_twin_onnxruntime_matches_pytorch(exported_nano_at, version):
    model, m = exported_nano_at(version)
    twin = make_scan_twin(m)
    onnx.checker.check_model(twin, full_check=True)
    assert count_ops(twin, "SelectiveScan") == count_ops(twin, "SelectiveScan2D") == 0
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
    """The golden block files the Rust tests load: vss_block.onnx (contract version 2),
    vss_block_v1.onnx (version 1), vss_block_v3.onnx (version 3), vss_block_scan.onnx
    (Scan twin), all computing
    vss_block_output.npy from vss_block_input.npy within the Rust tests' tolerance."""
    register_onnx_schema()
    x = np.load(BLOCK / "vss_block_input.npy")
    y = np.load(BLOCK / "vss_block_output.npy")
    assert x.shape == (1, 32, 8, 6) and x.dtype == np.float32
    v2 = onnx.load(str(BLOCK / "vss_block.onnx"))
    v1 = onnx.load(str(BLOCK / "vss_block_v1.onnx"))
    twin = onnx.load(str(BLOCK / "vss_block_scan.onnx"))
    assert count_ops(v2, "SelectiveScan2D", "fer_edge") == 1
    assert count_ops(v2, "SelectiveScan") == count_ops(v2, "Gather") == 0
    assert scan_op_version(v2) == 2
    assert count_ops(v1, "SelectiveScan", "fer_edge") == 1 and count_ops(v1, "Gather") == 2
    assert count_ops(v1, "SelectiveScan2D") == 0
    assert scan_op_version(v1) == 1
    v3 = onnx.load(str(BLOCK / "vss_block_v3.onnx"))
    assert scan_op_version(v3) == 3 and count_ops(v3, "SelectiveScan2D", "fer_edge") == 1
    assert count_ops(v3, "MatMul") == count_ops(v2, "MatMul") - 1
    assert count_ops(twin, "Scan") == 1 and count_ops(twin, "SelectiveScan") == 0
    # same weights: every initializer of v1 holds a value v2 holds too
    v2_values = [numpy_helper.to_array(i) for i in v2.graph.initializer]
    for init in v1.graph.initializer:
        a = numpy_helper.to_array(init)
        if a.dtype == np.float32 and a.size > 1:
            assert any(b.size == a.size and np.array_equal(b.ravel(), a.ravel()) for b in v2_values)
    for name, got in (
        ("v2", run_reference(v2, {"x": x})[0]),
        ("v1", run_reference(v1, {"x": x})[0]),
        ("v3", run_reference(v3, {"x": x})[0]),
        ("twin", run_onnxruntime(twin, {"x": x})[0]),
    ):
        assert got.shape == y.shape
        # the Rust tests' tolerance: 1e-5 abs + 1e-4 rel
        assert np.all(np.abs(got - y) <= 1e-5 + 1e-4 * np.abs(y)), name
    assert np.abs(y - x).max() > 1e-2  # the block does something
    size = sum(p.stat().st_size for p in BLOCK.iterdir())
    assert size < 400_000  # four models of about 80 kB, the arrays


@pytest.mark.skipif(not MAIN_MODEL.exists(), reason="models/ not generated")
def test_main_model_artifact_twin_reproduces_golden_levels():
    register_onnx_schema()
    m = onnx.load(str(MAIN_MODEL))
    # the shipped model is exported in contract version 2 or 3: one SelectiveScan2D per SS2D
    assert count_ops(m, "SelectiveScan2D", "fer_edge") == 4
    assert count_ops(m, "SelectiveScan") == count_ops(m, "Gather") == 0
    dims = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    size = json.loads((GOLDEN / "detections.json").read_text())["size"]
    assert dims == [1, 3, size, size]
    x = np.load(GOLDEN / "input.npy")
    got = run_onnxruntime(make_scan_twin(m), {"images": x})
    for i, g in enumerate(got):
        assert_close(g, np.load(GOLDEN / f"level{i}.npy"))


@pytest.mark.parametrize("impl", ["fast", "ref", "native"])
@pytest.mark.parametrize("version", [3, 2, 1])
def test_export_emits_one_node_per_scan_whatever_the_impl(impl, version):
    block = set_scan_impl(build_block(0), impl)
    m = torch_to_onnx(block, (torch.randn(1, 32, 8, 6),), ["x"], ["y"], scan_op_version=version)
    op = "SelectiveScan" if version == 1 else "SelectiveScan2D"
    other = "SelectiveScan2D" if version == 1 else "SelectiveScan"
    assert count_ops(m, op, "fer_edge") == 1 and count_ops(m, other) == 0
    (scan,) = scan_nodes(m)
    assert len(scan.input) == (8 if version == 3 else 7)
    assert count_ops(m, "Scan") == count_ops(m, "Loop") == 0
    assert count_ops(m, "Gather") == (2 if version == 1 else 0)
    assert len(m.graph.node) < 120  # nothing unrolled over the 48 time steps
    # the export switched the block to the fused path only while tracing
    assert all(getattr(mod, "scan_op_version", 1) == 1 for mod in block.modules())


def test_unknown_scan_op_version_is_refused():
    block = build_block(0)
    with pytest.raises(ValueError):
        torch_to_onnx(block, (torch.randn(1, 32, 8, 6),), ["x"], ["y"], scan_op_version=4)


def test_cli_scan_op_version(tmp_path, capsys):
    """--scan-op-version 1 writes the version 1 form; the default is version 3."""
    assert build_parser().parse_args([]).scan_op_version == 3
    out = tmp_path / "v1.onnx"
    assert (
        main(["--size", "32", "--seed", "1", "--output", str(out), "--scan-op-version", "1"]) == 0
    )
    m = onnx.load(str(out))
    assert scan_op_version(m) == 1
    assert count_ops(m, "SelectiveScan", "fer_edge") == 4
    assert count_ops(m, "SelectiveScan2D") == 0 and count_ops(m, "Gather") == 8
    assert "contract version 1: 4 SelectiveScan nodes" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--output", str(tmp_path / "v4.onnx"), "--scan-op-version", "4"])
    assert not (tmp_path / "v4.onnx").exists()


def test_cli_confidence_is_written_into_the_model_metadata(tmp_path):
    """--confidence 0.3 puts fer_edge.confidence = 0.3 in --output's metadata (once, even
    if set again); a threshold outside (0, 1] or without --output is refused, no file."""
    out = tmp_path / "own.onnx"
    assert main(["--size", "32", "--seed", "1", "--output", str(out), "--confidence", "0.3"]) == 0
    m = onnx.load(str(out))
    assert [(p.key, p.value) for p in m.metadata_props] == [(CONFIDENCE_METADATA_KEY, "0.3")]
    set_confidence(m, 0.25)
    assert [(p.key, p.value) for p in m.metadata_props] == [(CONFIDENCE_METADATA_KEY, "0.25")]
    for bad in (["--confidence", "0"], ["--confidence", "1.5"]):
        with pytest.raises(SystemExit):
            main(["--size", "32", "--output", str(tmp_path / "bad.onnx"), *bad])
    with pytest.raises(SystemExit):
        main(["--size", "32", "--confidence", "0.3"])
    assert not (tmp_path / "bad.onnx").exists()
    plain = tmp_path / "plain.onnx"
    assert main(["--size", "32", "--seed", "1", "--output", str(plain)]) == 0
    assert not onnx.load(str(plain)).metadata_props
