"""The classifier's one ONNX graph: canonical image in, the contract's three outputs out.

``IMAGE`` uint8 ``[N,1,H,W]`` -> /255 -> per member input size one ``Resize`` (bilinear,
``antialias=1``, ``half_pixel``, ``exclude_outside=1``: PyTorch's ``antialias=True``
filter, which only weighs pixels inside the image) -> per member the exported
:class:`MemberGraph` (the 3-channel normalisation, the network, sigmoid/softmax: the same
torch functions :mod:`classifier_service.ensemble` runs) -> ``member_probabilities``;
the weighted vote and ``score > threshold`` in float64, as the torch path computes them
-> ``abnormal_probability``, ``abnormal``. Exported from the torch :class:`Ensemble` and
checked against it (:mod:`model_server.parity`) before it is cached.
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

from classifier_service.ensemble import (
    Ensemble,
    decide,
    normalise,
    probability_from_logits,
    resize_square,
    to_device_batch,
)
from model_server.graph import GraphBuilder, dims, image_input, unit_image
from model_server.graph_runner import IMAGE_INPUT, GraphRunner
from model_server.onnx_export import export_network
from model_server.onnx_runtime import OnnxBackendError
from model_server.parity import SCORE_ATOL, parity_images, worst
from shared import contract
from shared.bundle import MemberSpec


class MemberGraph(nn.Module):
    """A member as served: resized grey ``[N,1,S,S]`` in [0,1] -> P(Abnormal) ``[N]``."""

    def __init__(self, network: nn.Module, spec: MemberSpec) -> None:
        super().__init__()
        self.network = network
        self.mean = tuple(spec.mean)
        self.std = tuple(spec.std)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return probability_from_logits(self.network(normalise(batch, self.mean, self.std)))


def build_graph(
    ensemble: Ensemble, threshold: float, opset: int, metadata: dict[str, str]
) -> onnx.ModelProto:
    """The whole classifier as one graph (``ensemble`` on CPU, float32)."""
    builder = GraphBuilder()
    unit = unit_image(builder, IMAGE_INPUT)
    batch = dims(builder, unit)[0]
    example = to_device_batch(parity_images()[:1], torch.device("cpu"))
    resized: dict[int, str] = {}
    columns = []
    for index, member in enumerate(ensemble.members):
        size = member.spec.input_size
        if size not in resized:
            sizes = builder.op("Concat", batch, builder.const([1, size, size], "int64"), axis=0)
            resized[size] = builder.op(
                "Resize", unit, "", "", sizes, mode="linear", antialias=1, exclude_outside=1,
                coordinate_transformation_mode="half_pixel",
            )
        network = export_network(
            MemberGraph(member.model, member.spec), resize_square(example, size), opset
        )
        (probability,) = builder.inline(network, f"member{index}/", [resized[size]])
        columns.append(builder.op("Unsqueeze", probability, builder.const([1], "int64")))
    members = builder.op("Concat", *columns, axis=1)
    weights = ensemble.weights / ensemble.weights.sum()
    score = builder.op("MatMul", builder.op("Cast", members, to=TensorProto.DOUBLE),
                       builder.const(weights[:, None], "float64"))
    count = len(ensemble.members)
    return builder.build(
        "spine-classifier", [image_input(IMAGE_INPUT)],
        {
            contract.ABNORMAL_PROBABILITY.name: (
                builder.op("Cast", score, to=TensorProto.FLOAT), "float32", ["batch", 1]),
            contract.MEMBER_PROBABILITIES.name: (members, "float32", ["batch", count]),
            contract.ABNORMAL.name: (
                builder.op("Greater", score, builder.const(threshold, "float64")), "bool",
                ["batch", 1]),
        },
        opset, metadata,
    )


def check_graph(runner: GraphRunner, ensemble: Ensemble, threshold: float) -> dict[str, Any]:
    """Parity with the torch path on fresh images; OnnxBackendError if it is not met."""
    images = parity_images()
    scores, members = ensemble.predict(images)
    decisions = decide(scores, threshold)
    answers = runner.run(images)
    member_diffs, score_diffs = [], []
    for index, answer in enumerate(answers):
        member_diffs.append(float(np.abs(answer["member_probabilities"] - members[index]).max()))
        score_diffs.append(float(abs(answer["abnormal_probability"][0] - scores[index])))
        if bool(answer["abnormal"][0]) != bool(decisions[index]):
            raise OnnxBackendError(
                f"classifier graph decides {bool(answer['abnormal'][0])} on image {index}, "
                f"the torch path {bool(decisions[index])} (score {scores[index]:.6f})"
            )
    figures = {
        "images": [list(image.shape) for image in images],
        "max_member_diff": worst(member_diffs), "max_score_diff": worst(score_diffs),
        "decisions_equal": True,
    }
    if figures["max_member_diff"] > SCORE_ATOL or figures["max_score_diff"] > SCORE_ATOL:
        raise OnnxBackendError(
            f"classifier graph probabilities differ from the torch path by up to "
            f"{max(figures['max_member_diff'], figures['max_score_diff']):.3g} "
            f"(limit {SCORE_ATOL})"
        )
    return figures


def export_checked(
    model_dir: Path, spec: Any, opset: int, threads: int, metadata: dict[str, str]
) -> tuple[bytes, dict[str, Any]]:
    """Load the members with torch on CPU, build the graph, prove it: bytes and parity."""
    started = time.perf_counter()
    ensemble = Ensemble(spec, model_dir, torch.device("cpu"), precision="fp32")
    data = build_graph(ensemble, spec.threshold, opset, metadata).SerializeToString()
    parity = check_graph(GraphRunner(data, threads), ensemble, spec.threshold)
    parity["export_seconds"] = round(time.perf_counter() - started, 1)
    return data, parity
