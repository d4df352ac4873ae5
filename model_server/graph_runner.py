"""Serve one graph with ONNX Runtime: images batched by shape, answers split per image.

Torch-free: a model service that finds its graph in the cache never imports torch.
The graph takes uint8 ``[N, 1, H, W]`` (one shape per call), so the images of one
dynamic batch are grouped by shape: same-shape images run together, others alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model_server.onnx_runtime import create_session

IMAGE_INPUT = "IMAGE"


def group_by_shape(images: list[np.ndarray]) -> list[list[int]]:
    """Indices of ``images`` grouped by their shape, first seen first."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(images):
        groups.setdefault(image.shape, []).append(index)
    return list(groups.values())


def stack_images(images: list[np.ndarray]) -> np.ndarray:
    """Same-shape ``(H, W)`` uint8 images -> one contiguous ``[N, 1, H, W]`` batch (a view
    of the only image when there is one)."""
    if len(images) == 1:
        return np.ascontiguousarray(images[0])[None, None]
    return np.stack(images)[:, None]


class GraphRunner:
    """An ONNX Runtime session over one graph, called with lists of images."""

    def __init__(self, model: Path | bytes, threads: int) -> None:
        self.session = create_session(model, threads)
        self.output_names = [item.name for item in self.session.get_outputs()]

    def run_batch(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """One call: uint8 ``[N, 1, H, W]`` -> every output, batch axis first."""
        values = self.session.run(self.output_names, {IMAGE_INPUT: batch})
        return dict(zip(self.output_names, values, strict=True))

    def run(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Per image, its row of every output (images of one shape share a call)."""
        rows: list[dict[str, np.ndarray]] = [{} for _ in images]
        for group in group_by_shape(images):
            outputs = self.run_batch(stack_images([images[index] for index in group]))
            for position, index in enumerate(group):
                rows[index] = {name: value[position] for name, value in outputs.items()}
        return rows
