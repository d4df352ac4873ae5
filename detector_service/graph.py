"""The detector's one ONNX graph: canonical image in, the contract's four outputs out.

``IMAGE`` uint8 ``[N,1,H,W]`` (one shape per call) ->

- the letterbox of :mod:`detector_service.letterbox`, computed from ``H`` and ``W`` in
  float64 as Python does (``Round`` is half-to-even, as Python's ``round``): the gain,
  the new size, the stride-32 rectangle (``DETECTOR_LETTERBOX=rect``) or the square, the
  centred padding; /255, ``Resize`` (bilinear, ``half_pixel``: PyTorch's
  ``align_corners=False``), ``Pad`` with grey 114;
- the network as :class:`GreyYolo` (grey to 3 channels, the decoded head);
- Ultralytics' NMS (best class only, ``score > conf``, class-aware by the 7680 px class
  offset, greedy IoU suppression, ``max_det``) as ONNX's ``NonMaxSuppression`` over the
  offset boxes with one score per anchor: the same selection as torchvision's greedy
  NMS (ONNX Runtime's CPU kernel suppresses on ``IoU > threshold`` and keeps
  ``score > threshold``, as torchvision and Ultralytics do). Where more than Ultralytics'
  30000 candidates are possible a ``TopK`` keeps the 30000 best first, as it does;
- boxes back to the input's pixels in float64 and clipped, as
  :func:`~detector_service.yolo.unletterbox_boxes`; packed per image, score-descending,
  padded to the most boxes of the call (at least one row).

End-to-end heads (no NMS) are not built into the graph: such a bundle is served by the
torch path. Checked against :func:`~detector_service.yolo.detect` before it is cached.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto
from torch import nn

from detector_service.yolo import (
    RawOutput,
    detect,
    letterbox_batch,
    load_yolo,
    reset_anchor_cache,
)
from model_server.graph import GraphBuilder, dims, image_input, unit_image
from model_server.graph_runner import IMAGE_INPUT, GraphRunner
from model_server.onnx_export import export_network
from model_server.onnx_runtime import OnnxBackendError
from model_server.parity import match_detections, parity_images, worst
from shared import contract
from shared.bundle import DetectorSpec

PAD_VALUE = 114 / 255.0
MAX_NMS = 30000  # Ultralytics' non_max_suppression defaults
MAX_WH = 7680
INT64_MAX = np.iinfo(np.int64).max


class GreyYolo(nn.Module):
    """YOLO as served: letterboxed grey ``[N,1,h,w]`` -> decoded predictions (RawOutput)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.raw = RawOutput(network)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.raw(batch.expand(-1, 3, -1, -1))


def _threshold_below(value: float) -> np.float32:
    """The float32 ``t`` with ``s > t`` iff ``s > value`` for every float32 ``s``
    (torchvision compares a float IoU with a double threshold)."""
    low = np.float32(value)
    return np.nextafter(low, np.float32(-np.inf)) if float(low) > value else low


class _Letterbox:
    """The letterbox's numbers as graph tensors (each ``[1]``)."""

    def __init__(self, b: GraphBuilder, image: str, size: int, stride: int | None) -> None:
        self.batch, _, height, width = dims(b, image)
        self.height = b.op("Cast", height, to=TensorProto.DOUBLE)
        self.width = b.op("Cast", width, to=TensorProto.DOUBLE)
        side = b.const([float(size)], "float64")
        self.gain = b.op("Min", b.op("Div", side, self.height), b.op("Div", side, self.width))
        one = b.const([1.0], "float64")
        new_h, new_w = (
            b.op("Cast", b.op("Max", b.op("Round", b.op("Mul", axis, self.gain)), one),
                 to=TensorProto.INT64)
            for axis in (self.height, self.width)
        )
        self.new_height, self.new_width = new_h, new_w
        pads = [b.op("Sub", b.const([size], "int64"), new) for new in (new_h, new_w)]
        if stride:
            pads = [b.op("Mod", pad, b.const([stride], "int64")) for pad in pads]
        before = [
            b.op("Cast", b.op("Round", b.op("Sub", b.op("Div", b.op(
                "Cast", pad, to=TensorProto.DOUBLE), b.const([2.0], "float64")),
                b.const([0.1], "float64"))), to=TensorProto.INT64)
            for pad in pads
        ]
        self.top, self.left = before
        self.bottom, self.right = (
            b.op("Sub", pad, start) for pad, start in zip(pads, before, strict=True)
        )

    def place(self, b: GraphBuilder, unit: str) -> str:
        """``unit`` resized into its place, grey 114 around it: ``[N, 1, h, w]``."""
        sizes = b.op("Concat", self.batch, b.const([1], "int64"), self.new_height,
                     self.new_width, axis=0)
        resized = b.op("Resize", unit, "", "", sizes, mode="linear",
                       coordinate_transformation_mode="half_pixel")
        zeros = b.const([0, 0], "int64")
        pads = b.op("Concat", zeros, self.top, self.left, zeros, self.bottom, self.right, axis=0)
        return b.op("Pad", resized, pads, b.const(PAD_VALUE, "float32"), mode="constant")

    def unplace(self, b: GraphBuilder, boxes: str) -> str:
        """Float32 ``[S, 4]`` boxes in input pixels -> the image's pixels, clipped to it."""
        shift = b.op("Cast", b.op("Concat", self.left, self.top, self.left, self.top, axis=0),
                     to=TensorProto.DOUBLE)
        mapped = b.op("Div", b.op("Sub", b.op("Cast", boxes, to=TensorProto.DOUBLE), shift),
                      self.gain)
        limit = b.op("Concat", self.width, self.height, self.width, self.height, axis=0)
        clipped = b.op("Min", b.op("Max", mapped, b.const([0.0], "float64")), limit)
        return b.op("Cast", clipped, to=TensorProto.FLOAT)


def _candidates(b: GraphBuilder, raw: str, limit_top: bool) -> tuple[str, str, str]:
    """Raw ``[N, 4+C, A]`` -> (xyxy ``[N,A',4]``, best score ``[N,A']``, best class)."""
    pred = b.op("Transpose", raw, perm=[0, 2, 1])
    starts = [b.const([k], "int64") for k in (0, 2, 4)]
    axis = b.const([2], "int64")
    xy = b.op("Slice", pred, starts[0], starts[1], axis)
    half = b.op("Div", b.op("Slice", pred, starts[1], starts[2], axis), b.const(2.0))
    scores = b.op("Slice", pred, starts[2], b.const([INT64_MAX], "int64"), axis)
    xyxy = b.op("Concat", b.op("Sub", xy, half), b.op("Add", xy, half), axis=2)
    conf = b.op("ReduceMax", scores, axis, keepdims=0)
    best = b.op("ArgMax", scores, axis=2, keepdims=0)
    if limit_top:  # keep the MAX_NMS best anchors per image, as Ultralytics does
        anchors = b.op("Slice", b.op("Shape", conf), b.const([1], "int64"), starts[1])
        k = b.op("Min", anchors, b.const([MAX_NMS], "int64"))
        conf, index = b.ops("TopK", conf, k, outputs=2, axis=1)
        best = b.op("GatherElements", best, index, axis=1)
        index4 = b.op("Expand", b.op("Unsqueeze", index, axis), b.const([1, 1, 4], "int64"))
        xyxy = b.op("GatherElements", xyxy, index4, axis=1)
    return xyxy, conf, best


def _pack(b: GraphBuilder, batch: str, image_of: str, rows: dict[str, tuple[str, int, object]]
          ) -> tuple[str, dict[str, str]]:
    """Selected rows ``[S, ...]`` of images ``image_of`` ``[S]`` (grouped, in order) ->
    ``[N, K, ...]`` padded per image, and the count per image ``[N, 1]`` int32."""
    images = b.op("Range", b.const(0, "int64"), b.op("Squeeze", batch), b.const(1, "int64"))
    one_hot = b.op("Cast", b.op("Equal", b.op("Unsqueeze", image_of, b.const([1], "int64")),
                                b.op("Unsqueeze", images, b.const([0], "int64"))),
                   to=TensorProto.INT64)
    counts = b.op("ReduceSum", one_hot, b.const([0], "int64"), keepdims=0)
    column = b.op("Unsqueeze", image_of, b.const([1], "int64"))
    position = b.op("Sub", b.op("GatherElements", b.op("CumSum", one_hot, b.const(0, "int64")),
                                column, axis=1), b.const([[1]], "int64"))
    where = b.op("Concat", column, position, axis=1)
    width = b.op("Max", b.op("ReduceMax", counts, keepdims=1), b.const([1], "int64"))
    packed = {}
    for name, (source, element, fill) in rows.items():
        tail = [b.const([4], "int64")] if name == contract.DETECTION_BOXES.name else []
        shape = b.op("Concat", batch, width, *tail, axis=0)
        empty = b.op("ConstantOfShape", shape, value=onnx.helper.make_tensor("v", element, [1],
                                                                             [fill]))
        packed[name] = b.op("ScatterND", empty, where, source)
    count = b.op("Cast", b.op("Unsqueeze", counts, b.const([1], "int64")), to=TensorProto.INT32)
    return count, packed


def build_graph(
    network: nn.Module, spec: DetectorSpec, stride: int | None, opset: int,
    metadata: dict[str, str],
) -> onnx.ModelProto:
    """The whole detector as one graph (``network``: fused, float32, on CPU)."""
    b = GraphBuilder()
    box = _Letterbox(b, IMAGE_INPUT, spec.image_size, stride)
    placed = box.place(b, unit_image(b, IMAGE_INPUT))
    example, _ = letterbox_batch(parity_images()[:1], spec.image_size, torch.device("cpu"), stride)
    grey = GreyYolo(network)
    (raw,) = b.inline(export_network(grey, example[:, :1].contiguous(), opset, stride is not None),
                      "yolo/", [placed])
    strides = [int(s) for s in torch.as_tensor(network.stride).flatten()]
    anchors = sum((spec.image_size // s + 1) ** 2 for s in strides)
    xyxy, conf, best = _candidates(b, raw, limit_top=anchors > MAX_NMS)
    offset = b.op("Unsqueeze", b.op("Mul", b.op("Cast", best, to=TensorProto.FLOAT),
                                    b.const(float(MAX_WH))), b.const([2], "int64"))
    selected = b.op(
        "NonMaxSuppression", b.op("Add", xyxy, offset),
        b.op("Unsqueeze", conf, b.const([1], "int64")), b.const([spec.max_det], "int64"),
        b.const([_threshold_below(spec.iou)], "float32"), b.const([spec.conf], "float32"),
    )
    image_of = b.op("Gather", selected, b.const(0, "int64"), axis=1)
    anchor = b.op("Gather", selected, b.const(2, "int64"), axis=1)
    where = b.op("Concat", *(b.op("Unsqueeze", v, b.const([1], "int64"))
                             for v in (image_of, anchor)), axis=1)
    count, packed = _pack(b, box.batch, image_of, {
        contract.DETECTION_BOXES.name: (
            box.unplace(b, b.op("GatherND", xyxy, where)), TensorProto.FLOAT, 0.0),
        contract.DETECTION_SCORES.name: (b.op("GatherND", conf, where), TensorProto.FLOAT, 0.0),
        contract.DETECTION_CLASSES.name: (
            b.op("Cast", b.op("GatherND", best, where), to=TensorProto.INT32),
            TensorProto.INT32, -1),
    })
    outputs = {
        contract.NUM_DETECTIONS.name: (count, "int32", ["batch", 1]),
        contract.DETECTION_BOXES.name: (packed[contract.DETECTION_BOXES.name], "float32",
                                        ["batch", "boxes", 4]),
        contract.DETECTION_SCORES.name: (packed[contract.DETECTION_SCORES.name], "float32",
                                         ["batch", "boxes"]),
        contract.DETECTION_CLASSES.name: (packed[contract.DETECTION_CLASSES.name], "int32",
                                          ["batch", "boxes"]),
    }
    return b.build("spine-detector", [image_input(IMAGE_INPUT)], outputs, opset, metadata)


def _rows(found: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([found["boxes"], found["scores"][:, None],
                           found["classes"][:, None].astype(np.float32)], axis=1)


def check_graph(
    runner: GraphRunner, network: nn.Module, spec: DetectorSpec, stride: int | None
) -> dict[str, Any]:
    """Parity with the torch path on fresh images; OnnxBackendError if it is not met."""
    images = parity_images()
    with torch.inference_mode():
        expected = detect(images, network, spec=spec, stride=stride,
                          device=torch.device("cpu"), end2end=False)
    box_diffs, score_diffs, counts, ties = [], [], [], []
    for index, (answer, reference) in enumerate(zip(runner.run(images), expected, strict=True)):
        count = int(answer[contract.NUM_DETECTIONS.name][0])
        mine = np.concatenate([
            answer[contract.DETECTION_BOXES.name][:count],
            answer[contract.DETECTION_SCORES.name][:count, None],
            answer[contract.DETECTION_CLASSES.name][:count, None].astype(np.float32),
        ], axis=1)
        outcome = match_detections(_rows(reference), mine)
        if isinstance(outcome, str):
            height, width = images[index].shape
            raise OnnxBackendError(f"detector graph on image {index} ({height}x{width}): {outcome}")
        box_diffs.append(outcome["box"])
        score_diffs.append(outcome["score"])
        ties.append(int(outcome["tie_broken"]))
        counts.append(count)
    return {"images": [list(image.shape) for image in images], "boxes": counts,
            "max_box_diff_px": worst(box_diffs), "max_score_diff": worst(score_diffs),
            "tie_broken": ties}


def export_checked(
    checkpoint: Path, spec: DetectorSpec, *, trusted: bool, rect: bool,
    opset: int, threads: int, metadata: Any,
) -> tuple[bytes, dict[str, Any], int | None]:
    """Load the network with torch on CPU, build the graph, prove it: bytes, parity and
    the letterbox stride. ``metadata`` is called with the class names (facts need them)."""
    started = time.perf_counter()
    network, class_names = load_yolo(checkpoint, trusted=trusted)
    if getattr(network, "end2end", False):
        raise OnnxBackendError("end-to-end YOLO heads are not built into the graph")
    stride = max(int(torch.as_tensor(network.stride).max()), 1) if rect else None
    network = network.float()
    if hasattr(network, "fuse"):
        network = network.fuse(verbose=False)  # conv+bn folded: what Ultralytics serves
    reset_anchor_cache(network)
    graph = build_graph(network, spec, stride, opset, metadata(class_names))
    data = graph.SerializeToString()
    parity = check_graph(GraphRunner(data, threads), network, spec, stride)
    parity["export_seconds"] = round(time.perf_counter() - started, 1)
    return data, parity, stride
