"""The classifier as an OIP model: ``spine-classifier``.

Input ``IMAGE``: the canonical grey image, UINT8 ``[N,1,H,W]`` or ``[N,H,W]``.
Outputs: ``abnormal_probability`` FP32 ``[N,1]`` (the weighted vote),
``member_probabilities`` FP32 ``[N,M]`` (column order = parameter ``members``), and
``abnormal`` BOOL ``[N,1]`` (score > threshold). The threshold and weights belong to the
bundle, so the decision is made here, next to them. The executor (PyTorch or ONNX
Runtime, ``MODEL_BACKEND``) is chosen at load; the parameter ``backends`` names it per member.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from classifier_service.ensemble import Ensemble
from shared import oip
from shared.bundle import is_demo
from shared.device import configure_torch, resolve_device
from shared.model_server import IMAGE_INPUT, BundleModel
from shared.onnx_runtime import choose_backend, options_from_settings
from shared.settings import Settings

log = logging.getLogger(__name__)

MODEL_NAME = "spine-classifier"


class ClassifierModel(BundleModel):
    name = MODEL_NAME

    def __init__(
        self,
        model_dir: Path,
        device: str = "auto",
        torch_threads: int = 0,
        settings: Settings | None = None,
    ) -> None:
        super().__init__(model_dir, device, torch_threads, settings)
        self.ensemble: Ensemble | None = None

    def load(self) -> None:
        device = resolve_device(self.device_setting)
        configure_torch(device, self.torch_threads)
        self.ensemble = Ensemble(
            self.manifest.classifier, self.model_dir, device,
            backend=choose_backend(self.settings.model_backend, device),
            onnx_options=options_from_settings(self.settings, self.torch_threads),
            precision=self.settings.model_precision,
        )
        self.warn_if_demo()
        # Warm-up: first calls allocate and (on CUDA) autotune; do it before "ready".
        self.ensemble.predict([np.zeros((64, 48), dtype=np.uint8)])
        log.info(
            "classifier bundle %r (%s) on %s: members %s",
            self.manifest.name, self.manifest.kind.value, device, self.ensemble.backends,
        )

    def _require_ensemble(self) -> Ensemble:
        if self.ensemble is None:
            raise RuntimeError("classifier not loaded")
        return self.ensemble

    def predict_batch(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        ensemble = self._require_ensemble()
        scores, members = ensemble.predict(images)
        threshold = self.manifest.classifier.threshold
        return [
            {
                "abnormal_probability": np.array([score], dtype=np.float32),
                "member_probabilities": member_row.astype(np.float32),
                "abnormal": np.array([score > threshold]),
            }
            for score, member_row in zip(scores, members, strict=True)
        ]

    def merge_outputs(self, per_image: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        return {key: np.stack([item[key] for item in per_image]) for key in per_image[0]}

    def response_parameters(self) -> dict[str, Any]:
        ensemble = self._require_ensemble()
        return {
            **self.bundle_parameters(),
            "threshold": self.manifest.classifier.threshold,
            "members": json.dumps(ensemble.member_names),
            "weights": json.dumps([m.spec.weight for m in ensemble.members]),
            "checkpoints": json.dumps(
                {m.spec.checkpoint: m.sha256 for m in ensemble.members}
            ),
            "device": str(ensemble.device),
            "backends": json.dumps(ensemble.backends),
        }

    def metadata(self) -> oip.ModelMetadata:
        members = len(self.manifest.classifier.members)
        return oip.ModelMetadata(
            name=self.name,
            platform="pytorch_timm_ensemble",
            inputs=[oip.TensorMetadata(name=IMAGE_INPUT, datatype="UINT8", shape=[-1, 1, -1, -1])],
            outputs=[
                oip.TensorMetadata(name="abnormal_probability", datatype="FP32", shape=[-1, 1]),
                oip.TensorMetadata(
                    name="member_probabilities", datatype="FP32", shape=[-1, members]
                ),
                oip.TensorMetadata(name="abnormal", datatype="BOOL", shape=[-1, 1]),
            ],
            parameters=self.response_parameters() if self.ready else {
                "bundle": self.manifest.name,
                "bundle_kind": self.manifest.kind.value,
                "demo": is_demo(self.manifest.kind),
            },
        )
