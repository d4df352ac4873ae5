"""The detector as an OIP model: ``spine-detector``.

Input ``IMAGE``: canonical grey image(s), UINT8 ``[N,1,H,W]`` or ``[N,H,W]``. Outputs
(Triton's NMS naming): ``num_detections`` INT32 ``[N,1]``, ``detection_boxes`` FP32
``[N,K,4]`` (x1, y1, x2, y2 in the INPUT image's pixels), ``detection_scores`` FP32
``[N,K]``, ``detection_classes`` INT32 ``[N,K]``; rows past ``num_detections`` are
padding. Class names are the fact ``class_names``. The network runs in
PyTorch (conv+bn fused; CUDA: fp16/bf16) or, on CPU, in ONNX Runtime exported from the
same checkpoint (``MODEL_BACKEND``); letterbox and NMS are the same torch code for both.
Tensor names and facts: :mod:`shared.contract`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch
from torch import nn

from detector_service.yolo import (
    RawOutput,
    check_images,
    group_by_input_shape,
    letterbox_batch,
    load_yolo,
    postprocess,
    reset_anchor_cache,
    unletterbox_boxes,
)
from model_server.device import configure_torch, resolve_device
from model_server.dtypes import compute_dtype
from model_server.lifecycle import BundleModel
from model_server.onnx_runtime import (
    OnnxRunner,
    choose_backend,
    options_from_settings,
    release_freed_memory,
    try_onnx,
)
from shared import contract, oip
from shared.bundle import DetectorSpec, check_pins, resolve_checkpoint

log = logging.getLogger(__name__)


class DetectorModel(BundleModel):
    name = contract.DETECTOR_MODEL
    platform = "pytorch_ultralytics_yolo"
    # Set by load(); these are the values before it.
    network: nn.Module | None = None
    onnx: OnnxRunner | None = None
    class_names: Mapping[int, str] = MappingProxyType({})
    device = torch.device("cpu")
    dtype = torch.float32
    end2end = False
    sha256 = ""
    stride: int | None = None  # None: the fixed square letterbox; else the minimal rectangle

    @property
    def spec(self) -> DetectorSpec:
        return self.manifest.detector

    @property
    def backend(self) -> str:
        return "onnx" if self.onnx is not None else "torch"

    def load(self) -> None:
        self.device = resolve_device(self.device_setting)
        configure_torch(self.device, self.torch_threads)
        path = resolve_checkpoint(self.model_dir, self.spec.checkpoint, "detector.checkpoint")
        self.sha256, trusted = check_pins(path, self.spec, "detector.checkpoint")
        network, self.class_names = load_yolo(path, trusted=trusted)
        self.end2end = bool(getattr(network, "end2end", False))
        if self.settings.detector_letterbox == "rect":
            self.stride = max(int(torch.as_tensor(network.stride).max()), 1)
        network = network.float()
        if hasattr(network, "fuse"):
            network = network.fuse(verbose=False)  # conv+bn folded: what Ultralytics serves
        if choose_backend(self.settings.model_backend, self.device) == "onnx":
            self.onnx = self._export(network)
        if self.onnx is not None:
            del network
            release_freed_memory()
        else:
            self.dtype = compute_dtype(self.device, self.settings.model_precision)
            self.network = network.to(self.device).to(self.dtype)
        self.warn_if_demo()
        self.predict_batch([np.zeros((64, 48), dtype=np.uint8)])  # warm-up before ready
        log.info(
            "detector %s on %s (%s): %d classes",
            self.spec.checkpoint, self.device, self.backend, len(self.class_names),
        )

    def _export(self, network: nn.Module) -> OnnxRunner | None:
        """The ONNX Runtime runner (None: serve with torch). For the rectangle letterbox
        the export has dynamic height and width, checked at a second shape as well."""
        reset_anchor_cache(network)
        size, cpu, rect = self.spec.image_size, torch.device("cpu"), self.stride is not None
        portrait, landscape = check_images()
        if rect:  # one rectangle per batch: the image and its mirror
            check, _ = letterbox_batch([portrait, portrait[:, ::-1].copy()], size, cpu, self.stride)
        else:
            check, _ = letterbox_batch([portrait, landscape], size, cpu)
        wrapped = RawOutput(network).eval()
        options = options_from_settings(self.settings, self.torch_threads)
        runner = try_onnx(
            wrapped, check, name=f"detector-{Path(self.spec.checkpoint).stem}",
            sha256=self.sha256, input_size=size, options=options, spatial_dynamic=rect,
        )
        if runner is not None and rect:
            other, _ = letterbox_batch([landscape], size, cpu, self.stride)
            with torch.no_grad():
                expected = wrapped(other).float().numpy()
            try:
                actual = runner.run(other.numpy())
                same = np.allclose(actual, expected, rtol=options.rtol, atol=options.atol)
            except Exception:  # noqa: BLE001 - any failure: serve it with torch
                same = False
            if not same:
                log.warning("detector ONNX export differs at a second input shape; PyTorch")
                runner = None
        return runner

    def _forward(self, batch: torch.Tensor) -> torch.Tensor | tuple | list:
        if self.onnx is not None:
            return self.onnx(batch)
        if self.network is None:
            raise RuntimeError("detector not loaded")
        return self.network(batch.to(self.dtype))

    @torch.inference_mode()
    def predict_batch(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        if self.network is None and self.onnx is None:
            raise RuntimeError("detector not loaded")
        results: list[dict[str, np.ndarray]] = [{} for _ in images]
        for group in group_by_input_shape(images, self.spec.image_size, self.stride):
            members = [images[index] for index in group]
            batch, geometries = letterbox_batch(
                members, self.spec.image_size, self.device, self.stride
            )
            detections = postprocess(
                self._forward(batch),
                conf=self.spec.conf,
                iou=self.spec.iou,
                max_det=self.spec.max_det,
                end2end=self.end2end,
            )
            for index, image, geometry, found in zip(
                group, members, geometries, detections, strict=True
            ):
                found = found.float().cpu().numpy()
                boxes = unletterbox_boxes(found[:, :4], geometry, image.shape[0], image.shape[1])
                results[index] = {
                    "boxes": boxes.astype(np.float32),
                    "scores": found[:, 4].astype(np.float32),
                    "classes": found[:, 5].astype(np.int32),
                }
        return results

    def merge_outputs(self, per_image: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
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
            contract.NUM_DETECTIONS.name: found,
            contract.DETECTION_BOXES.name: boxes,
            contract.DETECTION_SCORES.name: scores,
            contract.DETECTION_CLASSES.name: classes,
        }

    def facts(self) -> contract.DetectorFacts:
        return contract.DetectorFacts(
            **self.bundle_facts().model_dump(),
            checkpoints={self.spec.checkpoint: self.sha256},
            device=str(self.device),
            class_names=dict(sorted(self.class_names.items())),
            conf=self.spec.conf,
            iou=self.spec.iou,
            max_det=self.spec.max_det,
            image_size=self.spec.image_size,
            backend=self.backend,
        )

    def output_specs(self) -> list[oip.TensorMetadata]:
        return [spec.metadata() for spec in contract.DETECTOR_OUTPUTS]
