"""The detector as an OIP model: ``spine-detector``.

Input ``IMAGE``: canonical grey image(s), UINT8 ``[N,1,H,W]`` or ``[N,H,W]``. Outputs
(Triton's NMS naming): ``num_detections`` INT32 ``[N,1]``, ``detection_boxes`` FP32
``[N,K,4]`` (x1, y1, x2, y2 in the INPUT image's pixels), ``detection_scores`` FP32
``[N,K]``, ``detection_classes`` INT32 ``[N,K]``; rows past ``num_detections`` are
padding. Class names are in the metadata parameter ``class_names``. The network runs in
PyTorch (conv+bn fused; CUDA: fp16/bf16) or, on CPU, in ONNX Runtime exported from the
same checkpoint (``MODEL_BACKEND``); letterbox and NMS are the same torch code for both.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from detector_service.yolo import (
    RawOutput,
    check_images,
    letterbox_batch,
    load_yolo,
    postprocess,
    reset_anchor_cache,
    unletterbox_boxes,
)
from shared import oip
from shared.bundle import (
    is_demo,
    resolve_checkpoint,
    sha256_file,
)
from shared.device import configure_torch, resolve_device
from shared.model_server import IMAGE_INPUT, BundleModel
from shared.onnx_runtime import (
    OnnxRunner,
    choose_backend,
    options_from_settings,
    release_freed_memory,
    try_onnx,
)
from shared.settings import Settings

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

log = logging.getLogger(__name__)

MODEL_NAME = "spine-detector"


class DetectorModel(BundleModel):
    name = MODEL_NAME

    def __init__(
        self,
        model_dir: Path,
        device: str = "auto",
        torch_threads: int = 0,
        settings: Settings | None = None,
    ) -> None:
        super().__init__(model_dir, device, torch_threads, settings)
        self.spec = self.manifest.detector
        self.network: nn.Module | None = None
        self.onnx: OnnxRunner | None = None
        self.class_names: dict[int, str] = {}
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.end2end = False
        self.sha256 = ""

    @property
    def backend(self) -> str:
        return "onnx" if self.onnx is not None else "torch"

    def load(self) -> None:
        self.device = resolve_device(self.device_setting)
        configure_torch(self.device, self.torch_threads)
        path = resolve_checkpoint(self.model_dir, self.spec.checkpoint)
        network, self.class_names = load_yolo(path)
        self.sha256 = sha256_file(path)
        self.end2end = bool(getattr(network, "end2end", False))
        network = network.float()
        if hasattr(network, "fuse"):
            network = network.fuse(verbose=False)  # conv+bn folded: what Ultralytics serves
        if choose_backend(self.settings.model_backend, self.device) == "onnx":
            self.onnx = self._export(network)
        if self.onnx is not None:
            del network
            release_freed_memory()
        else:
            if self.device.type == "cuda":
                self.dtype = DTYPES.get(self.settings.model_precision, torch.float16)
            self.network = network.to(self.device).to(self.dtype)
        self.warn_if_demo()
        self.predict_batch([np.zeros((64, 48), dtype=np.uint8)])  # warm-up before ready
        log.info(
            "detector %s on %s (%s): %d classes",
            self.spec.checkpoint, self.device, self.backend, len(self.class_names),
        )

    def _export(self, network: nn.Module) -> OnnxRunner | None:
        reset_anchor_cache(network)
        check, _ = letterbox_batch(check_images(), self.spec.image_size, torch.device("cpu"))
        return try_onnx(
            RawOutput(network).eval(), check,
            name=f"detector-{Path(self.spec.checkpoint).stem}", sha256=self.sha256,
            input_size=self.spec.image_size,
            options=options_from_settings(self.settings, self.torch_threads),
        )

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
        batch, geometries = letterbox_batch(images, self.spec.image_size, self.device)
        raw = self._forward(batch)
        detections = postprocess(
            raw,
            conf=self.spec.conf,
            iou=self.spec.iou,
            max_det=self.spec.max_det,
            end2end=self.end2end,
        )
        results = []
        for image, geometry, found in zip(images, geometries, detections, strict=True):
            found = found.float().cpu().numpy()
            boxes = unletterbox_boxes(found[:, :4], geometry, image.shape[0], image.shape[1])
            results.append(
                {
                    "boxes": boxes.astype(np.float32),
                    "scores": found[:, 4].astype(np.float32),
                    "classes": found[:, 5].astype(np.int32),
                }
            )
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
            "num_detections": found,
            "detection_boxes": boxes,
            "detection_scores": scores,
            "detection_classes": classes,
        }

    def response_parameters(self) -> dict[str, Any]:
        return {
            **self.bundle_parameters(),
            "checkpoints": json.dumps({self.spec.checkpoint: self.sha256}),
            "class_names": json.dumps({str(k): v for k, v in sorted(self.class_names.items())}),
            "conf": self.spec.conf,
            "iou": self.spec.iou,
            "device": str(self.device),
            "backend": self.backend,
        }

    def metadata(self) -> oip.ModelMetadata:
        return oip.ModelMetadata(
            name=self.name,
            platform="pytorch_ultralytics_yolo",
            inputs=[oip.TensorMetadata(name=IMAGE_INPUT, datatype="UINT8", shape=[-1, 1, -1, -1])],
            outputs=[
                oip.TensorMetadata(name="num_detections", datatype="INT32", shape=[-1, 1]),
                oip.TensorMetadata(name="detection_boxes", datatype="FP32", shape=[-1, -1, 4]),
                oip.TensorMetadata(name="detection_scores", datatype="FP32", shape=[-1, -1]),
                oip.TensorMetadata(name="detection_classes", datatype="INT32", shape=[-1, -1]),
            ],
            parameters=self.response_parameters() if self.ready else {
                "bundle": self.manifest.name,
                "bundle_kind": self.manifest.kind.value,
                "demo": is_demo(self.manifest.kind),
            },
        )
