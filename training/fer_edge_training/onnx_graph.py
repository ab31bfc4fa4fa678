"""ONNX-side helpers: the ``fer_edge`` contract (``SelectiveScan``, version 1, and
``SelectiveScan2D``, version 2 and its 8-input version 3 form: docs/model-contract.md),
numpy kernels for them (for ``onnx.reference``), the lowering of every SelectiveScan2D
node into the version 1 form (:func:`lower_scan_2d`), and the rewrite of every
SelectiveScan node into a standard ONNX ``Scan`` (the "scan twin", :func:`make_scan_twin`,
which lowers first).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference.op_run import OpRun

from .scan import ONNX_DOMAIN, ONNX_OP_TYPE, ONNX_OP_VERSION
from .scan2d import (
    ONNX_OP_TYPE_2D,
    ONNX_OP_VERSION_2D,
    ONNX_OP_VERSION_2D_LOW_RANK,
    _cross_scan_indices_np,
)

INPUT_NAMES = ("u", "delta", "A", "Bs", "Cs", "D", "delta_bias")
#: SelectiveScan2D's inputs from contract version 3 on: the dt projection moved inside.
INPUT_NAMES_LOW_RANK = ("u", "dt_low", "dt_weight", "A", "Bs", "Cs", "D", "delta_bias")
#: The fer_edge op types, and the contract version that introduced each.
SCAN_OPS = {ONNX_OP_TYPE: ONNX_OP_VERSION, ONNX_OP_TYPE_2D: ONNX_OP_VERSION_2D}
#: Every fer_edge schema: (op type, since version, inputs). An op's schema holds from its
#: version until the next one's, so a version 2 model's SelectiveScan2D keeps 7 inputs.
SCHEMAS = (
    (ONNX_OP_TYPE, ONNX_OP_VERSION, INPUT_NAMES),
    (ONNX_OP_TYPE_2D, ONNX_OP_VERSION_2D, INPUT_NAMES),
    (ONNX_OP_TYPE_2D, ONNX_OP_VERSION_2D_LOW_RANK, INPUT_NAMES_LOW_RANK),
)


def register_onnx_schema() -> None:
    """Register the schemas of fer_edge::SelectiveScan (v1) and fer_edge::SelectiveScan2D
    (v2: 7 inputs, v3: 8 inputs) with onnx (idempotent).

    Lets onnxscript emit the nodes and onnx.checker check their arity and attribute.
    """
    param = onnx.defs.OpSchema.FormalParameter
    docs = {
        ONNX_OP_TYPE: "Selective scan of FER-YOLO-Mamba (training/fer_edge_training/scan.py).",
        ONNX_OP_TYPE_2D: "SS2D's 2-D selective scan over K directions "
        "(docs/model-contract.md, training/fer_edge_training/scan2d.py).",
    }
    for op_type, version, inputs in SCHEMAS:
        if (
            onnx.defs.has(op_type, version, ONNX_DOMAIN)
            and onnx.defs.get_schema(op_type, version, ONNX_DOMAIN).since_version == version
        ):
            continue
        schema = onnx.defs.OpSchema(
            op_type,
            ONNX_DOMAIN,
            version,
            doc=docs[op_type],
            inputs=[param(n, "T") for n in inputs],
            outputs=[param("y", "T")],
            type_constraints=[("T", ["tensor(float)"], "float32 tensors")],
            attributes=[
                onnx.defs.OpSchema.Attribute(
                    "delta_softplus",
                    helper.make_attribute("delta_softplus", 1),
                    "1: dt = softplus(delta + delta_bias); 0: dt = delta + delta_bias",
                )
            ],
        )
        onnx.defs.register_schema(schema)


def is_scan_node(node: onnx.NodeProto, op_type: str | None = None) -> bool:
    """A fer_edge scan node (``op_type`` None: either op)."""
    if node.domain != ONNX_DOMAIN:
        return False
    return node.op_type in SCAN_OPS if op_type is None else node.op_type == op_type


def scan_op_version(model: onnx.ModelProto) -> int | None:
    """The ``fer_edge`` version in the model's opset_import (None: not imported)."""
    for op in model.opset_import:
        if op.domain == ONNX_DOMAIN:
            return int(op.version)
    return None


# --------------------------------------------------------------------------------------
# numpy kernel (for onnx.reference) -- the recurrence, step by step
# --------------------------------------------------------------------------------------


def _softplus_np(x: np.ndarray) -> np.ndarray:
    # torch.nn.functional.softplus (beta 1, threshold 20)
    return np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20)))).astype(x.dtype)


def selective_scan_numpy(u, delta, A, Bs, Cs, D, delta_bias, delta_softplus=1) -> np.ndarray:
    b, kd, length = u.shape
    g, n = Bs.shape[1], A.shape[1]
    dg = kd // g
    dt = delta + delta_bias[None, :, None]
    if delta_softplus:
        dt = _softplus_np(dt)
    a = A.reshape(g, dg, n)
    h = np.zeros((b, g, dg, n), dtype=u.dtype)
    y = np.empty_like(u)
    for t in range(length):
        dt_t = dt[:, :, t].reshape(b, g, dg, 1)
        u_t = u[:, :, t].reshape(b, g, dg, 1)
        h = np.exp(dt_t * a) * h + dt_t * Bs[:, :, None, :, t] * u_t
        y[:, :, t] = (h * Cs[:, :, None, :, t]).sum(-1).reshape(b, kd)
    return (y + D[None, :, None] * u).astype(u.dtype)


class SelectiveScanOpRun(OpRun):
    """fer_edge::SelectiveScan for ``onnx.reference.ReferenceEvaluator(new_ops=[...])``."""

    op_domain = ONNX_DOMAIN

    def _run(self, u, delta, A, Bs, Cs, D, delta_bias, delta_softplus=1):
        return (selective_scan_numpy(u, delta, A, Bs, Cs, D, delta_bias, delta_softplus),)


SelectiveScanOpRun.__name__ = ONNX_OP_TYPE  # the evaluator matches classes by op_type


def selective_scan_2d_numpy(u, delta, A, Bs, Cs, D, delta_bias, delta_softplus=1) -> np.ndarray:
    """fer_edge::SelectiveScan2D (docs/model-contract.md), written from its definition:
    direction k reads pixel ``p_k(l)`` at step l, runs :func:`selective_scan_numpy`, and
    each step's output is added onto the pixel it read."""
    b, di, h, w = u.shape
    k = delta.shape[1]
    length = h * w
    if not 1 <= k <= 8:
        raise ValueError(f"SelectiveScan2D: K must be 1..8, got {k}")
    n = A.shape[1]
    if A.shape[0] != k * di or Bs.shape != (b, k, n, h, w) or Cs.shape != Bs.shape:
        raise ValueError("SelectiveScan2D: inconsistent shapes")
    visits, _ = _cross_scan_indices_np(h, w)  # visits[k, l] = p_k(l)
    y = np.zeros((b, di, length), dtype=np.float64)
    for kk in range(k):
        p = visits[kk]
        ch = slice(kk * di, (kk + 1) * di)
        y_k = selective_scan_numpy(
            u.reshape(b, di, length)[:, :, p],
            delta[:, kk].reshape(b, di, length)[:, :, p],
            A[ch],
            Bs[:, kk : kk + 1].reshape(b, 1, n, length)[:, :, :, p],
            Cs[:, kk : kk + 1].reshape(b, 1, n, length)[:, :, :, p],
            D[ch],
            delta_bias[ch],
            delta_softplus,
        )
        np.add.at(y, (slice(None), slice(None), p), y_k)
    return y.reshape(b, di, h, w).astype(u.dtype)


def selective_scan_2d_low_rank_numpy(
    u, dt_low, dt_weight, A, Bs, Cs, D, delta_bias, delta_softplus=1
) -> np.ndarray:
    """fer_edge::SelectiveScan2D's version 3 form: :func:`selective_scan_2d_numpy` on
    ``delta[b, k, c, h, w] = sum_r dt_weight[k*Di + c, r] * dt_low[b, k, r, h, w]``."""
    b, di, h, w = u.shape
    if dt_low.ndim != 5 or dt_low.shape[:1] + dt_low.shape[3:] != (b, h, w):
        raise ValueError(f"SelectiveScan2D: dt_low must be [B, K, R, H, W], got {dt_low.shape}")
    k, r = dt_low.shape[1:3]
    if r < 1 or dt_weight.shape != (k * di, r):
        raise ValueError(
            f"SelectiveScan2D: dt_weight must be [{k * di}, {r}], got {dt_weight.shape}"
        )
    delta = np.matmul(dt_weight.reshape(k, di, r), dt_low.reshape(b, k, r, h * w))
    delta = delta.reshape(b, k, di, h, w)
    return selective_scan_2d_numpy(u, delta, A, Bs, Cs, D, delta_bias, delta_softplus)


class SelectiveScan2DOpRun(OpRun):
    """fer_edge::SelectiveScan2D for ``onnx.reference.ReferenceEvaluator(new_ops=[...])``:
    the version 2 form (7 inputs) or the version 3 one (8 inputs), told by the count."""

    op_domain = ONNX_DOMAIN

    def _run(self, *inputs, delta_softplus=1):
        if len(inputs) == len(INPUT_NAMES_LOW_RANK):
            return (selective_scan_2d_low_rank_numpy(*inputs, delta_softplus),)
        return (selective_scan_2d_numpy(*inputs, delta_softplus),)


SelectiveScan2DOpRun.__name__ = ONNX_OP_TYPE_2D

#: Every fer_edge kernel, for ``ReferenceEvaluator(model, new_ops=REFERENCE_OPS)``.
REFERENCE_OPS = [SelectiveScanOpRun, SelectiveScan2DOpRun]


# --------------------------------------------------------------------------------------
# Graph utilities
# --------------------------------------------------------------------------------------


def strip_metadata(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop per-node metadata and doc strings (stack traces, local paths)."""

    def clean(graph: onnx.GraphProto) -> None:
        graph.doc_string = ""
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    clean(attr.g)
        for vi in [*graph.value_info, *graph.input, *graph.output]:
            del vi.metadata_props[:]
        for init in graph.initializer:
            del init.metadata_props[:]

    clean(model.graph)
    del model.metadata_props[:]
    model.doc_string = ""
    return model


CONFIDENCE_METADATA_KEY = "fer_edge.confidence"
"""The model's own face score threshold, in its ``metadata_props`` (docs/model-contract.md)."""


def set_confidence(model: onnx.ModelProto, confidence: float) -> None:
    """Write ``confidence``, the face score threshold the model was tuned at, into its
    metadata, replacing any earlier one; the runtime decodes at it unless told otherwise."""
    if not 0.0 < confidence <= 1.0:
        raise ValueError(f"confidence {confidence} is not in (0, 1]")
    kept = [p for p in model.metadata_props if p.key != CONFIDENCE_METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=CONFIDENCE_METADATA_KEY, value=f"{confidence:g}")


def ensure_opset(model: onnx.ModelProto, domain: str, version: int) -> None:
    for op in model.opset_import:
        if op.domain == domain:
            op.version = version
            return
    model.opset_import.append(helper.make_opsetid(domain, version))


def count_ops(model: onnx.ModelProto, op_type: str, domain: str | None = None) -> int:
    return sum(
        1
        for n in model.graph.node
        if n.op_type == op_type and (domain is None or n.domain == domain)
    )


def _known_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    g = model.graph
    shapes: dict[str, list[int]] = {}
    for vi in [*g.input, *g.value_info, *g.output]:
        tt = vi.type.tensor_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            shapes[vi.name] = [d.dim_value for d in tt.shape.dim]
    for init in g.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def static_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Static shapes of every named value, through onnx shape inference.

    The output of SelectiveScan and SelectiveScan2D has the shape of their input ``u``:
    that is added as value_info (on a copy) whenever onnx cannot infer it, then inference
    is run again.
    """
    work = onnx.ModelProto()
    work.CopyFrom(model)
    while True:
        work = onnx.shape_inference.infer_shapes(work)
        shapes = _known_shapes(work)
        added = False
        for node in work.graph.node:
            if is_scan_node(node):
                y = node.output[0]
                if y not in shapes and node.input[0] in shapes:
                    work.graph.value_info.append(
                        helper.make_tensor_value_info(y, TensorProto.FLOAT, shapes[node.input[0]])
                    )
                    added = True
        if not added:
            return shapes


def _const_i64(name: str, values) -> onnx.NodeProto:
    return helper.make_node(
        "Constant",
        [],
        [name],
        value=numpy_helper.from_array(np.asarray(values, dtype=np.int64), name),
    )


def _scan_body(p: str, b: int, g: int, dg: int, n: int) -> onnx.GraphProto:
    """One time step. Every broadcast is an explicit Expand (tract requires it)."""
    f = TensorProto.FLOAT
    s4 = [b, g, dg, n]
    nodes = [
        _const_i64(f"{p}shape", s4),
        _const_i64(f"{p}ax3", [3]),
        _const_i64(f"{p}ax2", [2]),
        # dA = exp(dt * A)
        helper.make_node("Unsqueeze", [f"{p}dt_t", f"{p}ax3"], [f"{p}dt4"]),
        helper.make_node("Expand", [f"{p}dt4", f"{p}shape"], [f"{p}dtE"]),
        helper.make_node("Mul", [f"{p}dtE", f"{p}a_in"], [f"{p}dtA"]),
        helper.make_node("Exp", [f"{p}dtA"], [f"{p}dA"]),
        # dt * u * B
        helper.make_node("Mul", [f"{p}dt_t", f"{p}u_t"], [f"{p}du"]),
        helper.make_node("Unsqueeze", [f"{p}du", f"{p}ax3"], [f"{p}du4"]),
        helper.make_node("Expand", [f"{p}du4", f"{p}shape"], [f"{p}duE"]),
        helper.make_node("Unsqueeze", [f"{p}b_t", f"{p}ax2"], [f"{p}b4"]),
        helper.make_node("Expand", [f"{p}b4", f"{p}shape"], [f"{p}bE"]),
        helper.make_node("Mul", [f"{p}duE", f"{p}bE"], [f"{p}dBu"]),
        # h = dA * h + dBu
        helper.make_node("Mul", [f"{p}dA", f"{p}h_prev"], [f"{p}decayed"]),
        helper.make_node("Add", [f"{p}decayed", f"{p}dBu"], [f"{p}h_next"]),
        # y_t = sum_n C * h
        helper.make_node("Unsqueeze", [f"{p}c_t", f"{p}ax2"], [f"{p}c4"]),
        helper.make_node("Expand", [f"{p}c4", f"{p}shape"], [f"{p}cE"]),
        helper.make_node("Mul", [f"{p}h_next", f"{p}cE"], [f"{p}hc"]),
        helper.make_node("ReduceSum", [f"{p}hc", f"{p}ax3"], [f"{p}y_t"], keepdims=0),
        helper.make_node("Identity", [f"{p}a_in"], [f"{p}a_out"]),
    ]
    inputs = [
        helper.make_tensor_value_info(f"{p}h_prev", f, s4),
        helper.make_tensor_value_info(f"{p}a_in", f, s4),
        helper.make_tensor_value_info(f"{p}dt_t", f, [b, g, dg]),
        helper.make_tensor_value_info(f"{p}u_t", f, [b, g, dg]),
        helper.make_tensor_value_info(f"{p}b_t", f, [b, g, n]),
        helper.make_tensor_value_info(f"{p}c_t", f, [b, g, n]),
    ]
    outputs = [
        helper.make_tensor_value_info(f"{p}h_next", f, s4),
        helper.make_tensor_value_info(f"{p}a_out", f, s4),
        helper.make_tensor_value_info(f"{p}y_t", f, [b, g, dg]),
    ]
    return helper.make_graph(nodes, f"{p}body", inputs, outputs)


def _scan_replacement(node: onnx.NodeProto, shapes: dict, idx: int) -> list[onnx.NodeProto]:
    """Standard-ONNX nodes computing what one SelectiveScan node computes."""
    u, delta, a, bs, cs, d, dbias = node.input
    (y,) = node.output
    sp = 1
    for attr in node.attribute:
        if attr.name == "delta_softplus":
            sp = attr.i
    b, kd, length = shapes[u]
    _, g, n, _ = shapes[bs]
    dg = kd // g
    p = f"scan_twin{idx}_"
    nodes = [
        _const_i64(f"{p}s_b1", [1, kd, 1]),
        _const_i64(f"{p}s_bgdl", [b, g, dg, length]),
        _const_i64(f"{p}s_1gdn", [1, g, dg, n]),
        _const_i64(f"{p}s_bgdn", [b, g, dg, n]),
        _const_i64(f"{p}s_bkl", [b, kd, length]),
        helper.make_node("Reshape", [dbias, f"{p}s_b1"], [f"{p}bias3"]),
        helper.make_node("Add", [delta, f"{p}bias3"], [f"{p}pre"]),
    ]
    if sp:
        # softplus(x) = relu(x) + log1p(exp(-|x|)); log1p(e) = log(1+e) * e / ((1+e) - 1)
        # (exact where 1+e rounds, e where it rounds to 1): no overflow, no lost digits.
        one = f"{p}one"
        zero = f"{p}zero"
        nodes += [
            helper.make_node(
                "Constant", [], [one], value=numpy_helper.from_array(np.float32(1.0), one)
            ),
            helper.make_node(
                "Constant", [], [zero], value=numpy_helper.from_array(np.float32(0.0), zero)
            ),
            helper.make_node("Abs", [f"{p}pre"], [f"{p}abs"]),
            helper.make_node("Neg", [f"{p}abs"], [f"{p}nabs"]),
            helper.make_node("Exp", [f"{p}nabs"], [f"{p}e"]),
            helper.make_node("Add", [f"{p}e", one], [f"{p}w"]),
            helper.make_node("Sub", [f"{p}w", one], [f"{p}wm1"]),
            helper.make_node("Log", [f"{p}w"], [f"{p}logw"]),
            helper.make_node("Mul", [f"{p}logw", f"{p}e"], [f"{p}num"]),
            helper.make_node("Equal", [f"{p}wm1", zero], [f"{p}tiny"]),
            helper.make_node("Where", [f"{p}tiny", one, f"{p}wm1"], [f"{p}den"]),
            helper.make_node("Div", [f"{p}num", f"{p}den"], [f"{p}l1p_big"]),
            helper.make_node("Where", [f"{p}tiny", f"{p}e", f"{p}l1p_big"], [f"{p}l1p"]),
            helper.make_node("Relu", [f"{p}pre"], [f"{p}relu"]),
            helper.make_node("Add", [f"{p}relu", f"{p}l1p"], [f"{p}dt"]),
        ]
    else:
        nodes.append(helper.make_node("Identity", [f"{p}pre"], [f"{p}dt"]))
    nodes += [
        # scanned inputs, time axis first
        helper.make_node("Reshape", [f"{p}dt", f"{p}s_bgdl"], [f"{p}dt4"]),
        helper.make_node("Transpose", [f"{p}dt4"], [f"{p}dt_seq"], perm=[3, 0, 1, 2]),
        helper.make_node("Reshape", [u, f"{p}s_bgdl"], [f"{p}u4"]),
        helper.make_node("Transpose", [f"{p}u4"], [f"{p}u_seq"], perm=[3, 0, 1, 2]),
        helper.make_node("Transpose", [bs], [f"{p}b_seq"], perm=[3, 0, 1, 2]),
        helper.make_node("Transpose", [cs], [f"{p}c_seq"], perm=[3, 0, 1, 2]),
        # loop-carried: state h (zeros) and A expanded to the state's shape (passed through)
        helper.make_node("Reshape", [a, f"{p}s_1gdn"], [f"{p}a4"]),
        helper.make_node("Expand", [f"{p}a4", f"{p}s_bgdn"], [f"{p}a_full"]),
        helper.make_node(
            "ConstantOfShape",
            [f"{p}s_bgdn"],
            [f"{p}h0"],
            value=numpy_helper.from_array(np.zeros(1, np.float32), f"{p}h0_value"),
        ),
        helper.make_node(
            "Scan",
            [f"{p}h0", f"{p}a_full", f"{p}dt_seq", f"{p}u_seq", f"{p}b_seq", f"{p}c_seq"],
            [f"{p}h_last", f"{p}a_last", f"{p}y_seq"],
            num_scan_inputs=4,
            body=_scan_body(f"{p}body_", b, g, dg, n),
        ),
        helper.make_node("Transpose", [f"{p}y_seq"], [f"{p}y4"], perm=[1, 2, 3, 0]),
        helper.make_node("Reshape", [f"{p}y4", f"{p}s_bkl"], [f"{p}y_ssm"]),
        helper.make_node("Reshape", [d, f"{p}s_b1"], [f"{p}d3"]),
        helper.make_node("Mul", [u, f"{p}d3"], [f"{p}du"]),
        helper.make_node("Add", [f"{p}y_ssm", f"{p}du"], [y]),
    ]
    return nodes


def _lowering(node: onnx.NodeProto, shapes: dict, idx: int) -> list[onnx.NodeProto]:
    """Version 1 nodes computing what one SelectiveScan2D node computes: constant-index
    Gathers into the K direction sequences, one SelectiveScan (G = K groups), a Gather
    back onto the pixels and a ReduceSum over the directions (same value names in/out)."""
    u, delta, a, bs, cs, d, dbias = node.input
    (y,) = node.output
    b, di, h, w = shapes[u]
    k, n = shapes[bs][1:3]
    length = h * w
    scan, merge = _cross_scan_indices_np(h, w)
    scan, merge = scan[:k], merge[:k]
    steps = np.arange(k)[:, None] * length
    p = f"scan2d_lowered{idx}_"
    nodes = [
        _const_i64(f"{p}u_idx", scan.reshape(-1)),
        _const_i64(f"{p}scan_idx", (scan + steps).reshape(-1)),
        _const_i64(f"{p}merge_idx", (merge + steps).reshape(-1)),
        _const_i64(f"{p}s_bdl", [b, di, length]),
        _const_i64(f"{p}s_bdkl", [b, di, k * length]),
        _const_i64(f"{p}s_bnkl", [b, n, k * length]),
        _const_i64(f"{p}s_bdk_l", [b, di, k, length]),
        _const_i64(f"{p}s_bnk_l", [b, n, k, length]),
        _const_i64(f"{p}s_bkdl", [b, k * di, length]),
        _const_i64(f"{p}s_bkd_l", [b, k, di, length]),
        _const_i64(f"{p}s_y", [b, di, h, w]),
        _const_i64(f"{p}ax2", [2]),
        # u: shared by the directions, direction k reads pixel scan[k, l]
        helper.make_node("Reshape", [u, f"{p}s_bdl"], [f"{p}u3"]),
        helper.make_node("Gather", [f"{p}u3", f"{p}u_idx"], [f"{p}u_g"], axis=2),
        helper.make_node("Reshape", [f"{p}u_g", f"{p}s_bdk_l"], [f"{p}u_4"]),
        helper.make_node("Transpose", [f"{p}u_4"], [f"{p}u_t"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", [f"{p}u_t", f"{p}s_bkdl"], [f"{p}u_seq"]),
    ]
    # delta, Bs, Cs: direction k's own map, read at (k, scan[k, l]) = k*L + scan[k, l]
    for name, value, s_flat, s_4 in (
        ("delta", delta, "s_bdkl", "s_bdk_l"),
        ("bs", bs, "s_bnkl", "s_bnk_l"),
        ("cs", cs, "s_bnkl", "s_bnk_l"),
    ):
        q = f"{p}{name}_"
        nodes += [
            helper.make_node("Transpose", [value], [f"{q}t"], perm=[0, 2, 1, 3, 4]),
            helper.make_node("Reshape", [f"{q}t", f"{p}{s_flat}"], [f"{q}flat"]),
            helper.make_node("Gather", [f"{q}flat", f"{p}scan_idx"], [f"{q}g"], axis=2),
            helper.make_node("Reshape", [f"{q}g", f"{p}{s_4}"], [f"{q}4"]),
            helper.make_node("Transpose", [f"{q}4"], [f"{q}seq4"], perm=[0, 2, 1, 3]),
        ]
    nodes += [
        helper.make_node("Reshape", [f"{p}delta_seq4", f"{p}s_bkdl"], [f"{p}delta_seq"]),
        helper.make_node(
            ONNX_OP_TYPE,
            [f"{p}u_seq", f"{p}delta_seq", a, f"{p}bs_seq4", f"{p}cs_seq4", d, dbias],
            [f"{p}y_seq"],
            domain=ONNX_DOMAIN,
            name=f"{p}scan",
            delta_softplus=_delta_softplus(node),
        ),
        # back onto the pixels: pixel q of direction k is step merge[k, q]; sum over k
        helper.make_node("Reshape", [f"{p}y_seq", f"{p}s_bkd_l"], [f"{p}y4"]),
        helper.make_node("Transpose", [f"{p}y4"], [f"{p}y_t"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", [f"{p}y_t", f"{p}s_bdkl"], [f"{p}y_flat"]),
        helper.make_node("Gather", [f"{p}y_flat", f"{p}merge_idx"], [f"{p}y_g"], axis=2),
        helper.make_node("Reshape", [f"{p}y_g", f"{p}s_bdk_l"], [f"{p}y_m"]),
        helper.make_node("ReduceSum", [f"{p}y_m", f"{p}ax2"], [f"{p}y_sum"], keepdims=0),
        helper.make_node("Reshape", [f"{p}y_sum", f"{p}s_y"], [y]),
    ]
    return nodes


def _delta_softplus(node: onnx.NodeProto) -> int:
    for attr in node.attribute:
        if attr.name == "delta_softplus":
            return int(attr.i)
    return 1


def _dt_projection(
    node: onnx.NodeProto, shapes: dict, idx: int
) -> tuple[list[onnx.NodeProto], onnx.NodeProto]:
    """A version 3 SelectiveScan2D node as the version 2 one it means: the nodes of the dt
    projection, a ``MatMul`` (``dt_weight`` as ``[K, Di, R]`` times ``dt_low`` as ``[B, K,
    R, H*W]``) whose output reshaped is delta, and a 7-input SelectiveScan2D node on that
    delta (same other inputs, same output)."""
    u, dt_low, dt_weight, *rest = node.input
    b, di, h, w = shapes[u]
    k, r = shapes[dt_low][1:3]
    p = f"scan2d_dt{idx}_"
    delta = f"{p}delta"
    nodes = [
        _const_i64(f"{p}s_kdr", [k, di, r]),
        _const_i64(f"{p}s_bkrl", [b, k, r, h * w]),
        _const_i64(f"{p}s_delta", [b, k, di, h, w]),
        helper.make_node("Reshape", [dt_weight, f"{p}s_kdr"], [f"{p}weight"]),
        helper.make_node("Reshape", [dt_low, f"{p}s_bkrl"], [f"{p}low"]),
        helper.make_node("MatMul", [f"{p}weight", f"{p}low"], [f"{p}product"]),
        helper.make_node("Reshape", [f"{p}product", f"{p}s_delta"], [delta]),
    ]
    scan = helper.make_node(
        ONNX_OP_TYPE_2D,
        [u, delta, *rest],
        list(node.output),
        domain=ONNX_DOMAIN,
        name=f"{p}scan",
        delta_softplus=_delta_softplus(node),
    )
    return nodes, scan


def lower_scan_2d(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy of ``model`` in contract version 1: every fer_edge::SelectiveScan2D node
    replaced by its version 1 form (:func:`_lowering`; a version 3 node goes through its
    version 2 form first, :func:`_dt_projection`), ``fer_edge`` version 1 in the
    opset_import. A model without SelectiveScan2D nodes comes back as an unchanged copy."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    if not any(is_scan_node(n, ONNX_OP_TYPE_2D) for n in model.graph.node):
        return out
    shapes = static_shapes(model)
    new_nodes: list[onnx.NodeProto] = []
    for idx, node in enumerate(model.graph.node):
        if is_scan_node(node, ONNX_OP_TYPE_2D):
            low_rank = len(node.input) == len(INPUT_NAMES_LOW_RANK)
            names = INPUT_NAMES_LOW_RANK if low_rank else INPUT_NAMES
            inputs = dict(zip(names, node.input, strict=True))
            needed = ("u", "dt_low", "Bs") if low_rank else ("u", "Bs")
            missing = [inputs[v] for v in needed if inputs[v] not in shapes]
            if missing:
                raise ValueError(f"static shapes unknown for {missing}")
            if low_rank:
                dt_nodes, node = _dt_projection(node, shapes, idx)
                new_nodes.extend(dt_nodes)
            new_nodes.extend(_lowering(node, shapes, idx))
        else:
            new_nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(new_nodes)
    ensure_opset(out, ONNX_DOMAIN, ONNX_OP_VERSION)
    return out


def make_scan_twin(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy of ``model`` where every fer_edge scan node is replaced by standard ONNX ops
    around one ``Scan`` (same maths, same value names in and out). SelectiveScan2D nodes
    (version 2 or 3) are lowered to the version 1 form first (:func:`lower_scan_2d`)."""
    model = lower_scan_2d(model)
    shapes = static_shapes(model)
    twin = onnx.ModelProto()
    twin.CopyFrom(model)
    new_nodes: list[onnx.NodeProto] = []
    idx = 0
    for node in model.graph.node:
        if is_scan_node(node, ONNX_OP_TYPE):
            missing = [v for v in (node.input[0], node.input[3]) if v not in shapes]
            if missing:
                raise ValueError(f"static shapes unknown for {missing}")
            new_nodes.extend(_scan_replacement(node, shapes, idx))
            idx += 1
        else:
            new_nodes.append(node)
    del twin.graph.node[:]
    twin.graph.node.extend(new_nodes)
    keep = [op for op in twin.opset_import if op.domain != ONNX_DOMAIN]
    del twin.opset_import[:]
    twin.opset_import.extend(keep)
    return twin
