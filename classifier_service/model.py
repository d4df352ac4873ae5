"""The classifier as an OIP model: ``spine-classifier``.

Input ``IMAGE``: the canonical grey image, UINT8 ``[N,1,H,W]`` or ``[N,H,W]``.
Outputs: ``abnormal_probability`` FP32 ``[N,1]`` (the weighted vote),
``member_probabilities`` FP32 ``[N,M]`` (column order = the fact ``members``), and
``abnormal`` BOOL ``[N,1]`` (score > threshold). The threshold and weights belong to the
bundle, so the decision is made here, next to them, and nowhere else. The executor
(PyTorch or ONNX Runtime, ``MODEL_BACKEND``) is chosen at load; the fact ``backends``
names it per member. Tensor names and facts: :mod:`shared.contract`.
"""

from __future__ import annotations

import logging

import numpy as np

from classifier_service.ensemble import Ensemble, decide
from model_server.device import configure_torch, resolve_device
from model_server.lifecycle import BundleModel
from model_server.onnx_runtime import choose_backend, options_from_settings
from shared import contract, oip

log = logging.getLogger(__name__)


class ClassifierModel(BundleModel):
    name = contract.CLASSIFIER_MODEL
    platform = "pytorch_timm_ensemble"
    ensemble: Ensemble | None = None  # set by load()

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
        abnormal = decide(scores, self.manifest.classifier.threshold)
        return [
            {
                contract.ABNORMAL_PROBABILITY.name: np.array([score], dtype=np.float32),
                contract.MEMBER_PROBABILITIES.name: member_row.astype(np.float32),
                contract.ABNORMAL.name: np.array([decision], dtype=np.bool_),
            }
            for score, member_row, decision in zip(scores, members, abnormal, strict=True)
        ]

    def merge_outputs(self, per_image: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        return {key: np.stack([item[key] for item in per_image]) for key in per_image[0]}

    def facts(self) -> contract.ClassifierFacts:
        ensemble = self._require_ensemble()
        return contract.ClassifierFacts(
            **self.bundle_facts().model_dump(),
            threshold=self.manifest.classifier.threshold,
            members=ensemble.member_names,
            weights=[m.spec.weight for m in ensemble.members],
            checkpoints={m.spec.checkpoint: m.sha256 for m in ensemble.members},
            device=str(ensemble.device),
            backends=ensemble.backends,
        )

    def output_specs(self) -> list[oip.TensorMetadata]:
        return [
            contract.ABNORMAL_PROBABILITY.metadata(),
            contract.MEMBER_PROBABILITIES.metadata(columns=len(self.manifest.classifier.members)),
            contract.ABNORMAL.metadata(),
        ]
