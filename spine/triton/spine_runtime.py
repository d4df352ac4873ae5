"""The numpy side of the exported Triton models: what our services do around the networks.

This file is copied as is into every exported model version folder (``REPO/<model>/1/``)
and imported there by ``model.py`` inside tritonserver's Python backend, in the Triton
environment (numpy < 2, onnxruntime; no torch, nothing of this project). So it imports
only numpy and onnxruntime, and every step reproduces the torch code of our services
exactly, kernel for kernel, in float32:

- classifier (``classifier_service/ensemble.py``): the canonical uint8 image / 255,
  resized per member with PyTorch's antialiased bilinear filter (``F.interpolate(...,
  antialias=True)``: separable triangle weights, as PIL), then the member's ONNX graph,
  which holds the 3-channel normalisation and the sigmoid/softmax; then the weighted vote
  and the decision ``score > threshold``;
- detector (``detector_service/yolo.py``): Ultralytics' letterbox (bilinear resize,
  ``align_corners=False``, centred grey-114 padding, to the square or, with a stride,
  the minimal rectangle: ``DETECTOR_LETTERBOX``; one network call per input shape),
  the ONNX graph (3 channels and the YOLO network with its decoded head), Ultralytics'
  NMS (best class, class offset, torchvision's greedy IoU suppression), boxes back to
  the input image's pixels.

``tests/unit/test_triton_runtime.py`` checks each step against the torch code it copies.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

RUNTIME_FILE = "runtime.json"
PAD_VALUE = np.float32(114 / 255.0)
MAX_NMS = 30000  # Ultralytics' non_max_suppression defaults
MAX_WH = 7680
MIN_IMAGE_SIDE = 8
MAX_IMAGE_PIXELS = 64 * 1024 * 1024


class InputError(ValueError):
    """A request whose IMAGE tensor our services would refuse (400 there)."""


# --- resize kernels (PyTorch's weights, applied as a few taps per output pixel) -----------


def antialias_weights(in_size: int, out_size: int) -> np.ndarray:
    """``[out, in]`` weights of ``F.interpolate(mode="bilinear", antialias=True)`` on one axis.

    PyTorch's ``_compute_indices_min_size_weights_aa``: scale = in / out, support = scale
    (downscaling) or 1, window [center - support + 0.5, center + support + 0.5), triangle
    filter evaluated at (j - center + 0.5) / max(scale, 1), weights normalised per row.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    support = scale if scale >= 1.0 else np.float32(1.0)
    invscale = np.float32(1.0) / scale if scale >= 1.0 else np.float32(1.0)
    matrix = np.zeros((out_size, in_size), dtype=np.float32)
    for i in range(out_size):
        center = scale * np.float32(i + 0.5)
        xmin = max(int(center - support + np.float32(0.5)), 0)
        xmax = min(int(center + support + np.float32(0.5)), in_size)
        taps = np.arange(xmin, xmax, dtype=np.float32)
        weights = np.maximum(
            np.float32(0.0),
            np.float32(1.0) - np.abs((taps - center + np.float32(0.5)) * invscale),
        ).astype(np.float32)
        total = weights.sum(dtype=np.float32)
        if total != 0:
            weights = weights / total
        matrix[i, xmin:xmax] = weights
    return matrix


def bilinear_weights(in_size: int, out_size: int) -> np.ndarray:
    """``[out, in]`` weights of ``F.interpolate(mode="bilinear", align_corners=False)``.

    source = (i + 0.5) * in / out - 0.5, clamped at 0; two taps, the second clamped to
    the last pixel (PyTorch's ``area_pixel_compute_source_index``). The source index is
    rounded to float32 once, after the multiply-add, as PyTorch's fused kernel does.
    """
    scale = float(np.float32(in_size) / np.float32(out_size))
    matrix = np.zeros((out_size, in_size), dtype=np.float32)
    for i in range(out_size):
        source = np.float32(max(scale * (i + 0.5) - 0.5, 0.0))
        i0 = int(source)
        lambda1 = np.float32(source - np.float32(i0))
        i1 = i0 + (1 if i0 < in_size - 1 else 0)
        matrix[i, i0] += np.float32(1.0) - lambda1
        matrix[i, i1] += lambda1
    return matrix


Taps = tuple[np.ndarray, np.ndarray]  # ([out, K] source indices, [out, K] weights)
_CACHE: dict[tuple[str, int, int], Taps] = {}


def _taps(kind: str, in_size: int, out_size: int) -> Taps:
    """The few non-zero weights of each output pixel (the filter's window), padded to the
    widest window with weight 0: a gather and a K-term sum instead of a dense product."""
    key = (kind, in_size, out_size)
    if key not in _CACHE:
        if len(_CACHE) > 256:
            _CACHE.clear()
        make = antialias_weights if kind == "aa" else bilinear_weights
        matrix = make(in_size, out_size)
        nonzero = matrix != 0
        first = np.where(nonzero.any(axis=1), nonzero.argmax(axis=1), 0)
        last = in_size - 1 - np.where(nonzero.any(axis=1), nonzero[:, ::-1].argmax(axis=1), 0)
        width = int((last - first).max()) + 1
        index = np.minimum(first[:, None] + np.arange(width)[None, :], in_size - 1)
        weights = np.take_along_axis(matrix, index, axis=1)
        weights[first[:, None] + np.arange(width)[None, :] > last[:, None]] = 0
        _CACHE[key] = (index, weights.astype(np.float32))
    return _CACHE[key]


def _resize_rows(image: np.ndarray, taps: Taps) -> np.ndarray:
    """Axis 0 of ``image`` resampled: out[i] = sum_k w[i, k] * image[index[i, k]]."""
    index, weights = taps
    out = np.zeros((index.shape[0], *image.shape[1:]), dtype=np.float32)
    for k in range(index.shape[1]):
        out += weights[:, k, None] * image[index[:, k]]
    return out


def resize(image: np.ndarray, height: int, width: int, *, antialias: bool) -> np.ndarray:
    """A float32 ``(H, W)`` image resized to ``(height, width)`` (width first, as PyTorch)."""
    kind = "aa" if antialias else "bl"
    across = _resize_rows(np.ascontiguousarray(image.T), _taps(kind, image.shape[1], width))
    return _resize_rows(np.ascontiguousarray(across.T), _taps(kind, image.shape[0], height))


def to_unit(image: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [0, 1], as ``tensor.float().div_(255)``."""
    return image.astype(np.float32) / np.float32(255.0)


# --- requests ------------------------------------------------------------------------------


def split_images(array: np.ndarray) -> list[np.ndarray]:
    """UINT8 ``[N,1,H,W]`` or ``[N,H,W]`` -> N ``(H, W)`` images (our services' rules)."""
    if array.dtype != np.uint8:
        raise InputError(f"IMAGE must be UINT8, got {array.dtype}")
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 3:
        raise InputError(f"IMAGE must have shape [N,1,H,W] or [N,H,W], got {list(array.shape)}")
    n, height, width = array.shape
    if n < 1 or height < MIN_IMAGE_SIDE or width < MIN_IMAGE_SIDE:
        raise InputError(f"IMAGE shape {list(array.shape)} is too small")
    if height * width > MAX_IMAGE_PIXELS:
        raise InputError(f"IMAGE of {height}x{width} is too large")
    return [np.ascontiguousarray(image) for image in array]


def create_session(path: str, threads: int, gpu: bool):  # type: ignore[no-untyped-def]
    """ONNX Runtime with our services' session options (no spinning, one inter-op thread)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads > 0:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    if gpu and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(path, options, providers=providers)


class Runner:
    """One exported model: ``run`` maps each request's IMAGE to its output tensors."""

    def run(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        raise NotImplementedError

    def run_requests(self, tensors: list[np.ndarray]) -> list[dict[str, np.ndarray] | str]:
        """Every request's images in one batch; a refused request gets its error text."""
        parts: list[list[np.ndarray] | str] = []
        for tensor in tensors:
            try:
                parts.append(split_images(tensor))
            except InputError as exc:
                parts.append(str(exc))
        flat = [image for part in parts if not isinstance(part, str) for image in part]
        results = self.run(flat) if flat else []
        answers: list[dict[str, np.ndarray] | str] = []
        position = 0
        for part in parts:
            if isinstance(part, str):
                answers.append(part)
                continue
            answers.append(self.merge(results[position:position + len(part)]))
            position += len(part)
        return answers

    def merge(self, per_image: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        return {key: np.stack([item[key] for item in per_image]) for key in per_image[0]}


class ClassifierRunner(Runner):
    """Members in column order; the weighted vote and the decision, as our classifier."""

    def __init__(self, folder: str, config: dict[str, Any]) -> None:
        gpu = config.get("kind") == "gpu"
        self.members = [
            (int(member["input_size"]),
             create_session(os.path.join(folder, member["file"]), config["threads"], gpu))
            for member in config["members"]
        ]
        weights = np.array(config["weights"], dtype=np.float64)
        self.weights = weights / weights.sum()
        self.threshold = float(config["threshold"])

    def member_probabilities(self, images: list[np.ndarray]) -> np.ndarray:
        units = [to_unit(image) for image in images]
        resized: dict[int, np.ndarray] = {}  # members sharing a size share the resize
        columns = []
        for size, session in self.members:
            if size not in resized:
                resized[size] = np.stack(
                    [resize(unit, size, size, antialias=True) for unit in units]
                )[:, None]
            probability = session.run(None, {session.get_inputs()[0].name: resized[size]})[0]
            columns.append(np.asarray(probability, dtype=np.float32).reshape(len(images)))
        return np.stack(columns, axis=1).astype(np.float64)

    def run(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        members = self.member_probabilities(images)
        scores = members @ self.weights
        abnormal = scores > self.threshold
        return [
            {
                "abnormal_probability": np.array([score], dtype=np.float32),
                "member_probabilities": row.astype(np.float32),
                "abnormal": np.array([decision], dtype=np.bool_),
            }
            for score, row, decision in zip(scores, members, abnormal, strict=True)
        ]


Geometry = tuple[float, int, int, int, int, int, int]


def letterbox_geometry(height: int, width: int, size: int, stride: int | None = None
                       ) -> Geometry:
    """Ultralytics' LetterBox arithmetic (``detector_service/letterbox.py``, copied: this file runs
    without our packages): (gain, left, top, new_width, new_height, input_height,
    input_width); ``stride`` None = the ``size`` square, else the minimal rectangle."""
    gain = min(size / height, size / width)
    new_width = max(round(width * gain), 1)
    new_height = max(round(height * gain), 1)
    pad_w, pad_h = size - new_width, size - new_height
    if stride:
        pad_w, pad_h = pad_w % stride, pad_h % stride
    return (gain, round(pad_w / 2 - 0.1), round(pad_h / 2 - 0.1), new_width, new_height,
            new_height + pad_h, new_width + pad_w)


def xywh2xyxy(boxes: np.ndarray) -> np.ndarray:
    out = np.empty_like(boxes)
    half_w = boxes[:, 2] / np.float32(2)
    half_h = boxes[:, 3] / np.float32(2)
    out[:, 0] = boxes[:, 0] - half_w
    out[:, 1] = boxes[:, 1] - half_h
    out[:, 2] = boxes[:, 0] + half_w
    out[:, 3] = boxes[:, 1] + half_h
    return out


def greedy_nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """torchvision.ops.nms on CPU: by score descending, drop boxes with IoU > ``iou``."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = (boxes[:, axis] for axis in range(4))
    areas = (x2 - x1) * (y2 - y1)
    suppressed = np.zeros(len(boxes), dtype=bool)
    keep = []
    threshold = np.float32(iou)
    for position, index in enumerate(order):
        if suppressed[index]:
            continue
        keep.append(index)
        rest = order[position + 1:]
        rest = rest[~suppressed[rest]]
        if not len(rest):
            continue
        zero = np.float32(0)
        width = np.maximum(zero, np.minimum(x2[index], x2[rest]) - np.maximum(x1[index], x1[rest]))
        height = np.maximum(zero, np.minimum(y2[index], y2[rest]) - np.maximum(y1[index], y1[rest]))
        inter = width * height
        overlap = inter / (areas[index] + areas[rest] - inter)
        suppressed[rest[overlap > threshold]] = True
    return np.array(keep, dtype=np.int64)


def non_max_suppression(
    prediction: np.ndarray, *, conf: float, iou: float, max_det: int, end2end: bool
) -> list[np.ndarray]:
    """Ultralytics' ``non_max_suppression`` (best class only, class-aware): per image a
    ``[K, 6]`` float32 array (x1, y1, x2, y2, score, class)."""
    prediction = prediction.astype(np.float32, copy=False)
    if prediction.shape[-1] == 6 or end2end:
        return [pred[pred[:, 4] > conf][:max_det] for pred in prediction]
    classes = prediction.shape[1] - 4
    output = []
    for x in prediction.transpose(0, 2, 1):  # [anchors, 4 + classes]
        x = x[x[:, 4:4 + classes].max(axis=1) > conf]
        if not len(x):
            output.append(np.zeros((0, 6), dtype=np.float32))
            continue
        box = xywh2xyxy(x[:, :4])
        scores = x[:, 4:4 + classes]
        best = scores.argmax(axis=1)
        score = scores[np.arange(len(x)), best]
        rows = np.concatenate([box, score[:, None], best[:, None].astype(np.float32)], axis=1)
        rows = rows[score > conf]
        if not len(rows):
            output.append(np.zeros((0, 6), dtype=np.float32))
            continue
        if len(rows) > MAX_NMS:
            rows = rows[np.argsort(-rows[:, 4], kind="stable")[:MAX_NMS]]
        offset = rows[:, 5:6] * np.float32(MAX_WH)
        keep = greedy_nms(rows[:, :4] + offset, rows[:, 4], iou)[:max_det]
        output.append(rows[keep])
    return output


class DetectorRunner(Runner):
    """Letterbox, the YOLO graph, NMS, boxes in the input image's pixels; as our detector."""

    def __init__(self, folder: str, config: dict[str, Any]) -> None:
        self.session = create_session(
            os.path.join(folder, config["file"]), config["threads"], config.get("kind") == "gpu"
        )
        self.size = int(config["image_size"])
        self.stride = int(config["stride"]) if config.get("stride") else None
        self.conf = float(config["conf"])
        self.iou = float(config["iou"])
        self.max_det = int(config["max_det"])
        self.end2end = bool(config["end2end"])

    def letterbox(self, images: list[np.ndarray]) -> tuple[np.ndarray, list[Geometry]]:
        """Images of one input shape -> float32 ``[N,1,h,w]`` (grey 114 around them)."""
        geometries = [
            letterbox_geometry(image.shape[0], image.shape[1], self.size, self.stride)
            for image in images
        ]
        shapes = {geometry[5:] for geometry in geometries}
        if len(shapes) != 1:
            raise ValueError(f"images of one batch need one input shape, got {sorted(shapes)}")
        ((height, width),) = shapes
        batch = np.full((len(images), 1, height, width), PAD_VALUE, dtype=np.float32)
        for index, (image, geometry) in enumerate(zip(images, geometries, strict=True)):
            _, left, top, new_width, new_height, _, _ = geometry
            batch[index, 0, top:top + new_height, left:left + new_width] = resize(
                to_unit(image), new_height, new_width, antialias=False
            )
        return batch, geometries

    def groups(self, images: list[np.ndarray]) -> list[list[int]]:
        """Indices by letterbox input shape, first seen first: one network call each."""
        found: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            shape = letterbox_geometry(image.shape[0], image.shape[1], self.size, self.stride)[5:]
            found.setdefault(shape, []).append(index)
        return list(found.values())

    def run(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        results: list[dict[str, np.ndarray]] = [{} for _ in images]
        for group in self.groups(images):
            members = [images[index] for index in group]
            batch, geometries = self.letterbox(members)
            raw = self.session.run(None, {self.session.get_inputs()[0].name: batch})[0]
            found_all = non_max_suppression(
                raw, conf=self.conf, iou=self.iou, max_det=self.max_det, end2end=self.end2end
            )
            for index, image, geometry, found in zip(group, members, geometries, found_all,
                                                     strict=True):
                gain, left, top = geometry[:3]
                boxes = found[:, :4].astype(np.float64)
                boxes[:, [0, 2]] = ((boxes[:, [0, 2]] - left) / gain).clip(0, image.shape[1])
                boxes[:, [1, 3]] = ((boxes[:, [1, 3]] - top) / gain).clip(0, image.shape[0])
                results[index] = {
                    "boxes": boxes.astype(np.float32),
                    "scores": found[:, 4].astype(np.float32),
                    "classes": found[:, 5].astype(np.int32),
                }
        return results

    def merge(self, per_image: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Padded to the most boxes of the request (at least 1 row), as our detector."""
        count = len(per_image)
        width = max(1, max(len(item["scores"]) for item in per_image))
        boxes = np.zeros((count, width, 4), dtype=np.float32)
        scores = np.zeros((count, width), dtype=np.float32)
        classes = np.full((count, width), -1, dtype=np.int32)
        found = np.zeros((count, 1), dtype=np.int32)
        for index, item in enumerate(per_image):
            k = len(item["scores"])
            found[index, 0] = k
            boxes[index, :k] = item["boxes"]
            scores[index, :k] = item["scores"]
            classes[index, :k] = item["classes"]
        return {
            "num_detections": found,
            "detection_boxes": boxes,
            "detection_scores": scores,
            "detection_classes": classes,
        }


def load(folder: str) -> Runner:
    """The runner described by ``folder/runtime.json`` (written by ``spine export-triton``)."""
    with open(os.path.join(folder, RUNTIME_FILE), encoding="utf-8") as handle:
        config = json.load(handle)
    if config["model"] == "classifier":
        return ClassifierRunner(folder, config)
    if config["model"] == "detector":
        return DetectorRunner(folder, config)
    raise ValueError(f"{RUNTIME_FILE}: unknown model {config['model']!r}")

