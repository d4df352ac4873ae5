"""The classifier as an OIP model: ``spine-classifier``.

Input ``IMAGE``: the canonical grey image, UINT8 ``[N,1,H,W]`` or ``[N,H,W]``.
Outputs: ``abnormal_probability`` FP32 ``[N,1]`` (the weighted vote),
``member_probabilities`` FP32 ``[N,M]`` (column order = the fact ``members``), and
``abnormal`` BOOL ``[N,1]`` (score > threshold). The threshold and weights belong to the
bundle, so the decision is made here, next to them, and nowhere else.

On CPU the bundle is served as one ONNX graph with ONNX Runtime
(:mod:`classifier_service.graph`: exported and checked once, then cached; a cached graph
is served without importing torch); on CUDA, or with ``MODEL_BACKEND=torch``, by the
torch :class:`~classifier_service.ensemble.Ensemble`. The fact ``backends`` names the
executor per member. Tensor names and facts: :mod:`shared.contract`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from model_server.graph_runner import GraphRunner
from model_server.lifecycle import BundleModel, bundle_digest
from model_server.onnx_runtime import CachedGraph, OnnxBackendError, session_threads
from shared import contract, oip
from shared.bundle import check_pins, resolve_checkpoint

if TYPE_CHECKING:
    from classifier_service.ensemble import Ensemble

log = logging.getLogger(__name__)


class ClassifierModel(BundleModel):
    name = contract.CLASSIFIER_MODEL
    platform = "pytorch_timm_ensemble"
    ensemble: Ensemble | None = None  # the torch path, set by load()
    graph: GraphRunner | None = None  # the ONNX graph, set by load()
    checkpoints: dict[str, str] | None = None
    device = "cpu"

    def load(self) -> None:
        if self.serves_graph():
            try:
                self.graph = self.graph_runner(self.graph_entry())
                self.platform = "onnxruntime_onnx"
            except OnnxBackendError as exc:
                log.warning("classifier graph refused (%s); serving it with PyTorch", exc)
        if self.graph is None:
            self._load_torch()
        self.warn_if_demo()
        # Warm-up: first calls allocate and (on CUDA) autotune; do it before "ready".
        self.predict_batch([np.zeros((64, 48), dtype=np.uint8)])
        log.info("classifier bundle %r (%s) on %s: members %s", self.manifest.name,
                 self.manifest.kind.value, self.device, self.backends)

    def graph_entry(self) -> CachedGraph:
        """The bundle's graph, from the cache or exported and checked now (raises
        OnnxBackendError if it does not match the torch path)."""
        spec = self.manifest.classifier
        self._read_checkpoints()
        return self.cached_graph(
            {"spec": spec.model_dump(mode="json"), "facts": self.graph_facts("cpu").identity()},
            self._export,
        )

    def _read_checkpoints(self) -> None:
        """Each member's checkpoint sha256 (and its pin checked): torch-free."""
        self.checkpoints = {}
        for index, member in enumerate(self.manifest.classifier.members):
            field = f"classifier.members[{index}].checkpoint"
            path = resolve_checkpoint(self.model_dir, member.checkpoint, field)
            self.checkpoints[member.checkpoint] = check_pins(path, member, field)[0]

    def _load_torch(self) -> None:
        from classifier_service.ensemble import Ensemble
        from model_server.device import configure_torch, resolve_device

        device = resolve_device(self.device_setting)
        configure_torch(device, self.torch_threads)
        self.ensemble = Ensemble(self.manifest.classifier, self.model_dir, device,
                                 precision=self.settings.model_precision)
        self.checkpoints = {m.spec.checkpoint: m.sha256 for m in self.ensemble.members}
        self.device = str(device)

    def _export(self) -> tuple[bytes, dict[str, Any]]:
        import torch

        from classifier_service.graph import export_checked
        from model_server.device import configure_torch

        facts = self.graph_facts("cpu")
        configure_torch(torch.device("cpu"), self.torch_threads)
        data, parity = export_checked(
            self.model_dir, self.manifest.classifier, self.graph_opset,
            session_threads(self.settings, self.torch_threads), self.graph_metadata(facts),
        )
        return data, {"bundle_digest": bundle_digest(facts), "parity": parity}

    @property
    def backends(self) -> dict[str, str]:
        executor = "onnx" if self.graph is not None else "torch"
        return {member.name: executor for member in self.manifest.classifier.members}

    def predict_batch(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        if self.graph is not None:
            return self.graph.run(images)
        if self.ensemble is None:
            raise RuntimeError("classifier not loaded")
        from classifier_service.ensemble import decide

        scores, members = self.ensemble.predict(images)
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

    def graph_facts(self, device: str, entry: CachedGraph | None = None
                    ) -> contract.ClassifierFacts:
        """The facts of the bundle as the graph serves it on ``device``."""
        return self._facts(device, "onnx")

    def _facts(self, device: str, executor: str | None = None) -> contract.ClassifierFacts:
        spec = self.manifest.classifier
        if self.checkpoints is None:
            raise RuntimeError("classifier not loaded")
        return contract.ClassifierFacts(
            **self.bundle_facts().model_dump(),
            threshold=spec.threshold,
            members=[member.name for member in spec.members],
            weights=[member.weight for member in spec.members],
            checkpoints=self.checkpoints,
            device=device,
            backends=dict.fromkeys(self.backends, executor) if executor else self.backends,
        )

    def facts(self) -> contract.ClassifierFacts:
        return self._facts(self.device)

    def output_specs(self) -> list[oip.TensorMetadata]:
        return [
            contract.ABNORMAL_PROBABILITY.metadata(),
            contract.MEMBER_PROBABILITIES.metadata(columns=len(self.manifest.classifier.members)),
            contract.ABNORMAL.metadata(),
        ]
