"""Post-training int8 quantization of the convolutions, for tract's quantized kernels.

    python -m fer_edge_training.quantize --data ../../shared/data/facial_expressions \\
        --lfw ../../shared/data/lfw --ferplus ../../shared/data/ferplus \\
        --model ../models/fer-yolo-mamba-nano.onnx \\
        --output ../models/fer-yolo-mamba-nano-int8.onnx --calibration-frames 64

What it does:

1. Calibration frames: camera-like frames composed as for training (:func:`~fer_edge_
   training.mosaic.compose_frame`, camera-shaped, ``--frame-size`` px on the long side
   like the held-out set) from the training photos only (LFW's training identities and
   FER+'s train split; the test photos are what ``tests/data/heldout`` measures), turned
   into the network input by
   :func:`fer_edge_training.preprocess.preprocess`, the runtime's own preprocessing, at
   the input size read from the model.
2. Activation ranges (:func:`calibrate`): onnxruntime cannot run
   ``fer_edge::SelectiveScan`` nor ``fer_edge::SelectiveScan2D`` (ONNX contract versions
   1 to 3, docs/model-contract.md), so the frames go through the model's scan twin
   (:func:`~fer_edge_training.onnx_graph.make_scan_twin`: the same network, standard
   ``Scan`` nodes, the same value names), with the input and output of every Conv to
   quantize exposed as extra graph outputs. The range of a value is its min/max over the
   frames, or with ``--percentile p`` the lowest and highest per-frame ``100-p`` / ``p``
   percentiles (each frame's rarest outliers are clipped).
3. Rewrite (:func:`quantize_convs`, on the model itself, not the twin, so the output
   keeps the model's contract version and scan nodes): every Conv
   whose weight is an initializer is computed by tract's quantized convolution (int8 x
   int8 -> int32 products), with

   * weights int8, symmetric (zero point 0, values in -127..127), one scale per output
     channel (``max |w| / 127``; ``--weights tensor``: one per Conv);
   * activations int8 (``--activations uint8`` is the other choice), asymmetric, one
     scale and zero point per tensor from the calibrated range widened to hold 0. tract
     turns every quantized operand into int8 before its matrix product
     (``wire_ensure_q8_flavour``), so int8 saves it a conversion. A value is quantized
     once, however many Convs read it.

   in one of two forms (``--form``):

   * ``integer`` (default): ``QuantizeLinear(x) -> ConvInteger -> Cast -> Mul(x_scale *
     w_scale[c]) -> Add(bias)``. The int32 sums are rescaled in float32, per channel,
     and the output is not requantized.
   * ``qlinear``: ``QuantizeLinear(x) -> QLinearConv -> DequantizeLinear``, the bias int32
     at scale ``x_scale * w_scale[c]`` (zero point 0), the output requantized to its
     calibrated range (so its range is calibrated too). A QLinearConv's int8 output
     feeds a quantized Conv that reads it directly (same value, same range: the
     ``DequantizeLinear -> QuantizeLinear`` pair would be the identity); it is
     dequantized only for float readers.

   Why ``integer``: tract 0.23.9 folds a per-tensor requantization into its int8 matrix
   product, but runs QLinearConv's per-channel one (and the zero-point terms of a
   per-channel weight zero point) as separate, unvectorised int32 broadcasting ops
   after it, which made the per-channel ``qlinear`` model about twice as slow as the
   ``integer`` one; the ``integer`` form is also more exact (no requantized output) and
   keeps per-channel weights.

   Everything else stays float32: the SelectiveScan / SelectiveScan2D nodes (the scan
   state must stay f32), LayerNorm, SiLU, the Mamba blocks' MatMul/Gemm, Gather,
   Reshape...
   ``--keep-f32`` keeps chosen Convs in float32 too (node or weight names, shell
   patterns).
4. A check on a few more training frames (``--check-frames``): the rewrite applied to the
   twin as well, both run in onnxruntime, the signal-to-quantization-noise ratio (SQNR)
   of every output printed. Measure the written model with tract: ``fer-edge eval``,
   ``fer-edge bench`` and :mod:`fer_edge_training.card`.

:func:`calibrate` and :func:`quantize_convs` work on any ONNX graph (the twin only matters
for models with fer_edge scan nodes); ``training/tests/test_quantize.py`` checks them on a
two-conv model.
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .onnx_graph import count_ops, is_scan_node, make_scan_twin, register_onnx_schema

#: Activation types: numpy type, (lowest, highest) code.
ACTIVATION_TYPES = {"int8": (np.int8, (-128, 127)), "uint8": (np.uint8, (0, 255))}
#: Graph forms of a quantized Conv (see :func:`quantize_convs`).
FORMS = ("integer", "qlinear")
#: Weights: symmetric int8 without -128, so that -w is representable as well.
WEIGHT_MAX = 127
INT32_MAX = 2**31 - 1

Range = tuple[float, float]


# --------------------------------------------------------------------------------------
# Which Convs
# --------------------------------------------------------------------------------------


def quantizable_convs(model: onnx.ModelProto, keep_f32: Sequence[str] = ()) -> list[str]:
    """Output names of the top-level Conv nodes with an initializer weight (and bias, if
    any), except those whose node name or weight name matches a ``keep_f32`` pattern."""
    inits = {i.name for i in model.graph.initializer}
    chosen = []
    for node in model.graph.node:
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
            continue
        if node.input[1] not in inits:
            continue
        if len(node.input) > 2 and node.input[2] and node.input[2] not in inits:
            continue
        if any(
            fnmatch.fnmatchcase(name, pattern)
            for pattern in keep_f32
            for name in (node.name, node.input[1])
        ):
            continue
        chosen.append(node.output[0])
    return chosen


def conv_values(model: onnx.ModelProto, convs: Iterable[str], form: str = "integer") -> list[str]:
    """The values whose ranges quantizing ``convs`` needs: their inputs, and for the
    ``qlinear`` form (see :func:`quantize_convs`) their outputs."""
    wanted = set(convs)
    names: list[str] = []
    for node in model.graph.node:
        if node.op_type == "Conv" and node.output[0] in wanted:
            for name in (node.input[0], node.output[0])[: 2 if form == "qlinear" else 1]:
                if name not in names:
                    names.append(name)
    return names


# --------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------


def with_outputs(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """Copy of ``model`` with ``names`` (float values) added to its graph outputs."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    present = {o.name for o in out.graph.output} | {i.name for i in out.graph.input}
    for name in names:
        if name not in present:
            out.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
            present.add(name)
    return out


def ort_session(model: onnx.ModelProto, threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def calibrate(
    model: onnx.ModelProto,
    feeds: Iterable[dict[str, np.ndarray]],
    names: Sequence[str],
    percentile: float | None = None,
    threads: int = 1,
) -> dict[str, Range]:
    """Range of every value in ``names`` over the ``feeds``, run by onnxruntime (``model``
    must be standard ONNX: pass the scan twin of a SelectiveScan model).

    ``percentile`` None: min/max over all feeds. Else ``p`` in (50, 100]: the lowest
    ``100 - p`` and the highest ``p`` percentile of any single feed."""
    if percentile is not None and not 50 < percentile <= 100:
        raise ValueError(f"percentile {percentile} outside (50, 100]")
    graph_inputs = {i.name for i in model.graph.input}
    probe = with_outputs(model, [n for n in names if n not in graph_inputs])
    sess = ort_session(probe, threads)
    fetch = [o.name for o in sess.get_outputs() if o.name in set(names)]
    lo = dict.fromkeys(names, np.inf)
    hi = dict.fromkeys(names, -np.inf)
    count = 0
    for feed in feeds:
        values = dict(zip(fetch, sess.run(fetch, feed), strict=True))
        values.update({k: v for k, v in feed.items() if k in lo})
        for name in names:
            v = np.asarray(values[name], np.float32).ravel()
            if percentile is None or percentile == 100:
                a, b = float(v.min()), float(v.max())
            else:
                a, b = (float(x) for x in np.percentile(v, [100 - percentile, percentile]))
            lo[name], hi[name] = min(lo[name], a), max(hi[name], b)
        count += 1
    if count == 0:
        raise ValueError("no calibration feeds")
    return {name: (lo[name], hi[name]) for name in names}


# --------------------------------------------------------------------------------------
# Quantization parameters
# --------------------------------------------------------------------------------------


def activation_params(value_range: Range, dtype: str = "int8") -> tuple[np.float32, np.generic]:
    """Scale and zero point of an asymmetric per-tensor quantization of ``value_range``
    (widened to hold 0, so 0 and zero padding are exact)."""
    np_type, (qmin, qmax) = ACTIVATION_TYPES[dtype]
    lo, hi = min(float(value_range[0]), 0.0), max(float(value_range[1]), 0.0)
    scale = (hi - lo) / (qmax - qmin)
    if not np.isfinite(scale) or scale <= 0:
        scale = 1.0
    zero_point = int(np.clip(np.round(qmin - lo / scale), qmin, qmax))
    return np.float32(scale), np_type(zero_point)


def quantize_conv_weights(
    weight: np.ndarray, bias: np.ndarray | None, x_scale: float, per_channel: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(w_q int8 [M, ...], w_scale float32 [M], b_q int32 [M])``: symmetric weights (one
    scale per output channel, or the same for all), the bias at scale ``x_scale * w_scale``
    (zero point 0)."""
    m = weight.shape[0]
    w = weight.astype(np.float64).reshape(m, -1)
    b = np.zeros(m) if bias is None else bias.astype(np.float64)
    scale = np.abs(w).max(axis=1) / WEIGHT_MAX
    # the bias must fit int32 at x_scale * w_scale: a wider weight scale where it would not
    scale = np.maximum(scale, np.abs(b) / (float(x_scale) * INT32_MAX))
    if not per_channel:
        scale = np.full(m, scale.max())
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    w_q = np.clip(np.round(w / scale[:, None]), -WEIGHT_MAX, WEIGHT_MAX)
    bias_scale = np.float32(x_scale) * scale  # float32, as the runtimes compute it
    b_q = np.clip(np.round(b / bias_scale.astype(np.float64)), -INT32_MAX, INT32_MAX)
    return w_q.astype(np.int8).reshape(weight.shape), scale, b_q.astype(np.int32)


# --------------------------------------------------------------------------------------
# Rewrite
# --------------------------------------------------------------------------------------


def _subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs read (outer-scope values included)."""
    names: set[str] = set()
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for g in graphs:
            for sub in g.node:
                names.update(sub.input)
                names.update(_subgraph_inputs(sub))
    return names


def quantize_convs(
    model: onnx.ModelProto,
    ranges: dict[str, Range],
    convs: Iterable[str] | None = None,
    activations: str = "int8",
    form: str = "integer",
    per_channel: bool = True,
) -> onnx.ModelProto:
    """Copy of ``model`` with the Convs whose outputs are in ``convs`` (default: all
    :func:`quantizable_convs`) computed in int8.

    ``form="qlinear"``: ``QuantizeLinear -> QLinearConv -> DequantizeLinear`` (int32 bias
    at scale ``x_scale * w_scale``, output requantized to the calibrated range of the
    Conv's output). ``form="integer"``: ``QuantizeLinear -> ConvInteger -> Cast -> Mul
    (x_scale * w_scale per channel) -> Add (float bias)``: the output is not requantized.
    ``per_channel``: one weight scale per output channel, else one per Conv.

    ``ranges`` must hold the input (and for ``qlinear`` the output) of each Conv (see
    :func:`conv_values`). Other nodes are left as they are; weights and biases nothing
    else reads are dropped."""
    if activations not in ACTIVATION_TYPES:
        raise ValueError(f"activations must be one of {sorted(ACTIVATION_TYPES)}")
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}")
    g = model.graph
    selected = set(quantizable_convs(model) if convs is None else convs)
    inits = {i.name: i for i in g.initializer}
    needed = conv_values(model, selected, form)
    missing = [v for v in needed if v not in ranges or not np.all(np.isfinite(ranges[v]))]
    if missing:
        raise ValueError(f"no calibrated range for {missing[:5]} ({len(missing)} values)")

    # who reads each value as a float: anything but a quantized Conv's data input
    float_readers: set[str] = {o.name for o in g.output}
    for node in g.node:
        if node.op_type == "Conv" and node.output[0] in selected:
            float_readers.update(node.input[1:])
        else:
            float_readers.update(node.input)
        float_readers.update(_subgraph_inputs(node))

    taken = {v for node in g.node for v in (*node.input, *node.output)} | set(inits)
    taken |= {i.name for i in g.input}

    def fresh(name: str) -> str:
        out, k = name, 1
        while out in taken:
            out, k = f"{name}_{k}", k + 1
        taken.add(out)
        return out

    new_inits: list[TensorProto] = []

    def const(name: str, value: np.ndarray) -> str:
        name = fresh(name)
        new_inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    # value -> (quantized value, scale name, zero point name, scale)
    quantized: dict[str, tuple[str, str, str, float]] = {}

    def qparams(value: str) -> tuple[str, str, float]:
        scale, zp = activation_params(ranges[value], activations)
        return const(f"{value}_scale", np.float32(scale)), const(f"{value}_zero_point", zp), scale

    nodes: list[onnx.NodeProto] = []
    done = 0
    for node in g.node:
        if not (node.op_type == "Conv" and node.output[0] in selected):
            nodes.append(node)
            continue
        x, w_name = node.input[0], node.input[1]
        b_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        y = node.output[0]
        base = node.name or y
        if x not in quantized:
            xs, xz, x_scale = qparams(x)
            xq = fresh(f"{x}_quantized")
            nodes.append(
                helper.make_node("QuantizeLinear", [x, xs, xz], [xq], name=fresh(f"{xq}_node"))
            )
            quantized[x] = (xq, xs, xz, x_scale)
        xq, xs, xz, x_scale = quantized[x]
        weight = numpy_helper.to_array(inits[w_name])
        bias = numpy_helper.to_array(inits[b_name]) if b_name else None
        w_q, w_scale, b_q = quantize_conv_weights(
            weight, bias if form == "qlinear" else None, x_scale, per_channel
        )
        wq = const(f"{base}_w_quantized", w_q)
        if form == "integer":
            # acc = sum (x_q - x_zp) * w_q exactly in int32; y = acc * x_scale * w_scale + b
            wz = const(f"{base}_w_zero_point", np.int8(0))
            shape = [1, len(w_scale)] + [1] * (weight.ndim - 2)
            rescale = (np.float32(x_scale) * w_scale).astype(np.float32).reshape(shape)
            acc, accf = fresh(f"{y}_int32"), fresh(f"{y}_int32_float")
            scaled = fresh(f"{y}_unbiased") if bias is not None else y
            conv = helper.make_node("ConvInteger", [xq, wq, xz, wz], [acc], name=fresh(base))
            conv.attribute.extend(node.attribute)
            nodes += [
                conv,
                helper.make_node("Cast", [acc], [accf], to=TensorProto.FLOAT, name=fresh(accf)),
                helper.make_node(
                    "Mul", [accf, const(f"{base}_rescale", rescale)], [scaled], name=fresh(scaled)
                ),
            ]
            if bias is not None:
                b = const(f"{base}_bias", bias.astype(np.float32).reshape(shape))
                nodes.append(helper.make_node("Add", [scaled, b], [y], name=fresh(f"{y}_add")))
        else:
            if not per_channel:
                w_scale = w_scale[:1].reshape(())
            ws = const(f"{base}_w_scale", w_scale)
            wz = const(f"{base}_w_zero_point", np.zeros(w_scale.shape, np.int8))
            bq = [const(f"{base}_b_quantized", b_q)] if bias is not None else []
            ys, yz, y_scale = qparams(y)
            yq = fresh(f"{y}_quantized")
            conv = helper.make_node(
                "QLinearConv", [xq, xs, xz, wq, ws, wz, ys, yz, *bq], [yq], name=fresh(base)
            )
            conv.attribute.extend(node.attribute)
            nodes.append(conv)
            # a quantized Conv reading y takes yq as it is: same value, same range
            quantized[y] = (yq, ys, yz, y_scale)
            if y in float_readers:
                nodes.append(
                    helper.make_node("DequantizeLinear", [yq, ys, yz], [y], name=fresh(f"{y}_dq"))
                )
        done += 1
    if done != len(selected):
        raise ValueError(f"{len(selected) - done} of the Convs to quantize are not in the graph")

    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    used = {o.name for o in g.output}
    for node in nodes:
        used.update(node.input)
        used.update(_subgraph_inputs(node))
    keep = [i for i in g.initializer if i.name in used] + new_inits
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep)
    return out


# --------------------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------------------


def input_spec(model: onnx.ModelProto) -> tuple[str, list[int]]:
    """Name and static shape of the model's (single) input."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ValueError(f"expected one input, got {[i.name for i in inputs]}")
    dims = inputs[0].type.tensor_type.shape.dim
    if not all(d.HasField("dim_value") for d in dims):
        raise ValueError(f"input {inputs[0].name} has no static shape")
    return inputs[0].name, [d.dim_value for d in dims]


def training_frames(
    args: argparse.Namespace, frame_size: int, seed: int = 0, balance: float = 0.5
) -> Iterator[np.ndarray]:
    """Endless camera-like uint8 RGB frames (camera-shaped, ``frame_size`` px on the long
    side) composed from the training photos (paths of
    :func:`~fer_edge_training.photos.add_source_arguments`)."""
    from .ferplus import read_ferplus
    from .mosaic import Sources, compose_frame
    from .photos import ferplus_photos, lfw_photos

    lfw = lfw_photos(args.lfw, args.data, args.lfw_boxes, args.splits)["train"]
    ferplus = ferplus_photos(read_ferplus(args.ferplus)[0]["train"])
    sources = Sources(lfw, ferplus, power=balance)
    # stream 3: training uses [seed, 0, it], validation [seed, 1], the held-out set [seed, 2]
    rng = np.random.default_rng([seed, 3])
    while True:
        frame, _, _ = compose_frame(sources, frame_size, rng, letterbox=False)
        yield frame


def network_input(frame: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The runtime's preprocessing of ``frame`` for an input of ``shape`` [1, 3, S, S]."""
    from .preprocess import preprocess

    if len(shape) != 4 or shape[:2] != [1, 3] or shape[2] != shape[3]:
        raise ValueError(f"expected an input of shape [1, 3, S, S], got {shape}")
    return preprocess(frame, shape[2])[0]


def sqnr_db(reference: np.ndarray, approx: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB."""
    noise = float(np.sum((reference.astype(np.float64) - approx) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(signal / noise)


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    from .export import check_and_save
    from .photos import add_source_arguments

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_source_arguments(ap)
    ap.add_argument("--model", type=Path, required=True, help="f32 ONNX model")
    ap.add_argument("--output", type=Path, required=True, help="int8 ONNX model to write")
    ap.add_argument("--calibration-frames", type=int, default=64)
    ap.add_argument("--check-frames", type=int, default=4, help="frames for the ORT check")
    ap.add_argument("--frame-size", type=int, default=320, help="long side of the frames")
    ap.add_argument("--seed", type=int, default=0, help="seed of the calibration frames")
    ap.add_argument(
        "--percentile", type=float, help="range from per-frame percentiles (default: min/max)"
    )
    ap.add_argument("--form", default="integer", choices=FORMS, help="see the module doc")
    ap.add_argument("--weights", default="channel", choices=("channel", "tensor"))
    ap.add_argument("--activations", default="int8", choices=sorted(ACTIVATION_TYPES))
    ap.add_argument(
        "--keep-f32",
        nargs="*",
        default=[],
        metavar="PATTERN",
        help="Convs to leave in float32 (node or weight names, shell patterns)",
    )
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime threads")
    args = ap.parse_args(argv)
    if args.calibration_frames < 1:
        ap.error("--calibration-frames must be at least 1")

    t0 = time.monotonic()
    register_onnx_schema()
    model = onnx.load(str(args.model))
    input_name, shape = input_spec(model)
    has_scan = any(is_scan_node(n) for n in model.graph.node)
    twin = make_scan_twin(model) if has_scan else model
    convs = quantizable_convs(model, args.keep_f32)
    print(
        f"{args.model}: input {input_name} {shape}, {count_ops(model, 'Conv')} Convs, "
        f"quantizing {len(convs)} ({args.form} form, per-{args.weights} weights, "
        f"{args.activations} activations)",
        file=sys.stderr,
    )

    frames = training_frames(args, args.frame_size, args.seed)
    feeds = [
        {input_name: network_input(next(frames), shape)} for _ in range(args.calibration_frames)
    ]
    names = conv_values(model, convs, args.form)
    ranges = calibrate(twin, feeds, names, args.percentile, args.threads)
    method = "min/max" if args.percentile is None else f"{args.percentile} percentile"
    print(
        f"calibrated {len(names)} values on {len(feeds)} training frames ({method}) "
        f"in {time.monotonic() - t0:.0f} s",
        file=sys.stderr,
    )

    options = {
        "activations": args.activations,
        "form": args.form,
        "per_channel": args.weights == "channel",
    }
    quantized = quantize_convs(model, ranges, convs, **options)
    size = check_and_save(quantized, args.output)

    if args.check_frames > 0:
        twin_q = quantize_convs(twin, ranges, convs, **options)
        ref, got = ort_session(twin, args.threads), ort_session(twin_q, args.threads)
        outputs = [o.name for o in twin.graph.output]
        worst = dict.fromkeys(outputs, np.inf)
        for _ in range(args.check_frames):
            feed = {input_name: network_input(next(frames), shape)}
            pairs = zip(outputs, ref.run(outputs, feed), got.run(outputs, feed), strict=True)
            for name, a, b in pairs:
                worst[name] = min(worst[name], sqnr_db(a, b))
        print(
            f"onnxruntime check, scan twin f32 vs int8 on {args.check_frames} more frames, "
            "worst SQNR: " + ", ".join(f"{k} {v:.1f} dB" for k, v in worst.items()),
            file=sys.stderr,
        )
    ops = ", ".join(
        f"{count_ops(quantized, op)} {op}"
        for op in ("QuantizeLinear", "QLinearConv", "ConvInteger", "DequantizeLinear", "Conv")
        if count_ops(quantized, op)
    )
    print(
        f"{args.output}: {size / 1e6:.2f} MB (f32 {args.model.stat().st_size / 1e6:.2f} MB); "
        f"{ops}; done in {time.monotonic() - t0:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
