"""The detector as an OIP model: ``spine-detector``.

Input ``IMAGE``: canonical grey image(s), UINT8 ``[N,1,H,W]`` or ``[N,H,W]``. Outputs
(Triton's NMS naming): ``num_detections`` INT32 ``[N,1]``, ``detection_boxes`` FP32
``[N,K,4]`` (x1, y1, x2, y2 in the INPUT image's pixels), ``detection_scores`` FP32
``[N,K]``, ``detection_classes`` INT32 ``[N,K]``; rows past ``num_detections`` are
padding. Class names are the fact ``class_names``.

On CPU the bundle is served as one ONNX graph with ONNX Runtime
(:mod:`detector_service.graph`: letterbox, network, NMS and box mapping inside; exported
and checked once, then cached; a cached graph is served without importing torch); on
CUDA, or with ``MODEL_BACKEND=torch``, by the torch path of :mod:`detector_service.yolo`
(conv+bn fused; CUDA: fp16/bf16). Tensor names and facts: :mod:`shared.contract`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from model_server.graph_runner import GraphRunner
from model_server.lifecycle import BundleModel, bundle_digest
from model_server.onnx_runtime import CachedGraph, OnnxBackendError, session_threads
from shared import contract, oip
from shared.bundle import DetectorSpec, check_pins, resolve_checkpoint

log = logging.getLogger(__name__)


class DetectorModel(BundleModel):
    name = contract.DETECTOR_MODEL
    platform = "pytorch_ultralytics_yolo"
    # Set by load(); these are the values before it.
    graph: GraphRunner | None = None
    network: Any = None  # the torch path's fused network
    class_names: Mapping[int, str] = MappingProxyType({})
    device: Any = "cpu"
    dtype: Any = None
    end2end = False
    sha256 = ""
    stride: int | None = None  # None: the fixed square letterbox; else the minimal rectangle

    @property
    def spec(self) -> DetectorSpec:
        return self.manifest.detector

    @property
    def backend(self) -> str:
        return "onnx" if self.graph is not None else "torch"

    def load(self) -> None:
        path, trusted = self._checkpoint()
        if self.serves_graph():
            try:
                entry = self.graph_entry()
                self.graph = self.graph_runner(entry)
                self.class_names = self.graph_facts("cpu", entry).class_names
                self.stride = entry.record.get("stride")
                self.platform = "onnxruntime_onnx"
            except OnnxBackendError as exc:
                log.warning("detector graph refused (%s); serving it with PyTorch", exc)
        if self.graph is None:
            self._load_torch(path, trusted)
        self.warn_if_demo()
        self.predict_batch([np.zeros((64, 48), dtype=np.uint8)])  # warm-up before ready
        log.info("detector %s on %s (%s): %d classes", self.spec.checkpoint, self.device,
                 self.backend, len(self.class_names))

    def _checkpoint(self) -> tuple[Path, bool]:
        """The checkpoint's path and whether it is trusted; its sha256 (pin checked)."""
        path = resolve_checkpoint(self.model_dir, self.spec.checkpoint, "detector.checkpoint")
        self.sha256, trusted = check_pins(path, self.spec, "detector.checkpoint")
        return path, trusted

    def graph_entry(self) -> CachedGraph:
        """The bundle's graph, from the cache or exported and checked now (raises
        OnnxBackendError if it does not match the torch path)."""
        path, trusted = self._checkpoint()
        rect = self.settings.detector_letterbox == "rect"

        def export() -> tuple[bytes, dict[str, Any]]:
            from detector_service.graph import export_checked

            served: list[contract.DetectorFacts] = []

            def metadata(names: dict[int, str]) -> dict[str, str]:
                served.append(self._facts(names, "cpu", "onnx"))
                return self.graph_metadata(served[0])

            data, parity, stride = export_checked(
                path, self.spec, trusted=trusted, rect=rect, opset=self.graph_opset,
                threads=session_threads(self.settings, self.torch_threads), metadata=metadata,
            )
            return data, {"bundle_digest": bundle_digest(served[0]), "parity": parity,
                          "class_names": {str(k): v for k, v in served[0].class_names.items()},
                          "stride": stride}

        return self.cached_graph(
            {"spec": self.spec.model_dump(mode="json"), "letterbox": "rect" if rect else "square",
             "checkpoint_sha256": self.sha256, "bundle": self.bundle_facts().model_dump()},
            export,
        )

    def graph_facts(self, device: str, entry: CachedGraph | None = None
                    ) -> contract.DetectorFacts:
        """The facts of the bundle as the graph serves it on ``device`` (class names from
        the graph's signed record)."""
        assert entry is not None, "the detector's facts need its graph's record"
        names = {int(k): str(v) for k, v in entry.record["class_names"].items()}
        return self._facts(names, device, "onnx")

    def _load_torch(self, path: Path, trusted: bool) -> None:
        import torch

        from detector_service.yolo import load_yolo
        from model_server.device import configure_torch, resolve_device
        from model_server.dtypes import compute_dtype

        self.device = resolve_device(self.device_setting)
        configure_torch(self.device, self.torch_threads)
        network, self.class_names = load_yolo(path, trusted=trusted)
        self.end2end = bool(getattr(network, "end2end", False))
        if self.settings.detector_letterbox == "rect":
            self.stride = max(int(torch.as_tensor(network.stride).max()), 1)
        network = network.float()
        if hasattr(network, "fuse"):
            network = network.fuse(verbose=False)  # conv+bn folded: what Ultralytics serves
        self.dtype = compute_dtype(self.device, self.settings.model_precision)
        self.network = network.to(self.device).to(self.dtype)

    def predict_batch(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        if self.graph is not None:
            return [self._trimmed(row) for row in self.graph.run(images)]
        if self.network is None:
            raise RuntimeError("detector not loaded")
        import torch

        from detector_service.yolo import detect

        with torch.inference_mode():
            return detect(images, lambda batch: self.network(batch.to(self.dtype)),
                          spec=self.spec, stride=self.stride, device=self.device,
                          end2end=self.end2end)

    @staticmethod
    def _trimmed(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        count = int(row[contract.NUM_DETECTIONS.name][0])
        return {
            "boxes": row[contract.DETECTION_BOXES.name][:count],
            "scores": row[contract.DETECTION_SCORES.name][:count],
            "classes": row[contract.DETECTION_CLASSES.name][:count],
        }

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

    def _facts(self, names: Mapping[int, str], device: str, backend: str
               ) -> contract.DetectorFacts:
        return contract.DetectorFacts(
            **self.bundle_facts().model_dump(),
            checkpoints={self.spec.checkpoint: self.sha256},
            device=device,
            class_names=dict(sorted(names.items())),
            conf=self.spec.conf,
            iou=self.spec.iou,
            max_det=self.spec.max_det,
            image_size=self.spec.image_size,
            backend=backend,
        )

    def facts(self) -> contract.DetectorFacts:
        return self._facts(self.class_names, str(self.device), self.backend)

    def output_specs(self) -> list[oip.TensorMetadata]:
        return [spec.metadata() for spec in contract.DETECTOR_OUTPUTS]
