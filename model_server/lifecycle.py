"""The model object and its lifecycle, KServe-style: load once, then ready, then predict.

A model service is one :class:`BatchedModel` (in practice a :class:`BundleModel`, served
from a bundle folder) inside the OIP app of :mod:`model_server.app`. ``load()`` runs
in a background thread at start-up, so ``/v2/health/live`` answers at once and
``ready`` turns true only once the checkpoints are loaded and warmed up.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from model_server.graph import MIN_OPSET
from model_server.graph_runner import GraphRunner
from model_server.onnx_runtime import (
    CachedGraph,
    Record,
    graph_key,
    graphs_dir,
    key_path,
    load_or_build,
    session_threads,
    wants_graph,
)
from shared import contract, oip
from shared.bundle import BundleManifest, load_manifest
from shared.settings import ModelServerSettings

log = logging.getLogger(__name__)


class BatchedModel(ABC):
    """Lifecycle: ``load()`` once (blocking), then ``predict_batch`` on lists of images."""

    name: str

    def __init__(self) -> None:
        self.ready = False
        self.load_error: str | None = None
        self.load_seconds: float | None = None

    def load_in_background(self) -> threading.Thread:
        """Start ``load()`` in a thread; ``ready`` turns true, or ``load_error`` says why not."""
        thread = threading.Thread(target=self._load_and_report, name="model-load", daemon=True)
        thread.start()
        return thread

    def _load_and_report(self) -> None:
        started = time.perf_counter()
        try:
            self.load()
        except Exception as exc:  # noqa: BLE001 - reported through readiness and the log
            self.load_error = str(exc)
            log.error("model %s failed to load: %s", self.name, exc)
            return
        self.load_seconds = time.perf_counter() - started
        self.ready = True
        log.info("model %s ready in %.1f s", self.name, self.load_seconds)

    @abstractmethod
    def load(self) -> None:
        """Read checkpoints, move to the device, warm up. Raise with a clear message."""

    @abstractmethod
    def metadata(self) -> oip.ModelMetadata: ...

    @abstractmethod
    def predict_batch(self, images: list[np.ndarray]) -> Sequence[dict[str, np.ndarray]]:
        """One forward pass over single-channel uint8 images of any sizes."""

    @abstractmethod
    def merge_outputs(self, per_image: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Per-image outputs of one request -> the request's output tensors."""

    def model_version(self) -> str:
        """The ``model_version`` of infer answers and metadata ``versions``."""
        return "1"

    def config_parameters(self) -> contract.ConfigParameters:
        """The model configuration's ``parameters``: the loaded model's facts."""
        return {}

    def instance_kind(self) -> str:
        """Triton's instance-group kind of the loaded model: KIND_CPU or KIND_GPU."""
        return "KIND_CPU"


class BundleModel(BatchedModel):
    """A model served from a bundle folder: what both model services share.

    Holds the manifest, device and thread settings, and the bundle facts
    (:mod:`shared.contract`) that the metadata and model-configuration answers carry
    (infer answers carry only their digest, as ``model_version``).
    """

    def __init__(
        self,
        model_dir: Path,
        device: str = "auto",
        torch_threads: int = 0,
        *,
        settings: ModelServerSettings,
    ) -> None:
        super().__init__()
        self.model_dir = model_dir
        self.device_setting = device
        self.torch_threads = torch_threads
        self.settings = settings
        self.manifest: BundleManifest = load_manifest(model_dir)

    def bundle_facts(self) -> contract.BundleFacts:
        """What the manifest says; known before the checkpoints load."""
        return contract.BundleFacts(name=self.manifest.name, kind=self.manifest.kind)

    @abstractmethod
    def facts(self) -> contract.ServedFacts:
        """The loaded model's facts (checkpoint hashes, device, ...); only once loaded."""

    def known_facts(self) -> contract.BundleFacts:
        """What the metadata answer reports: full facts once loaded, the manifest's before."""
        return self.facts() if self.ready else self.bundle_facts()

    def model_version(self) -> str:
        """The facts' digest once loaded: a client that cached the facts (the gateway) sees
        from any answer whether they are still the ones behind it."""
        return self.facts().version if self.ready else "1"

    def config_parameters(self) -> contract.ConfigParameters:
        return self.facts().to_config_parameters()

    def instance_kind(self) -> str:
        return "KIND_GPU" if self.facts().device.startswith("cuda") else "KIND_CPU"

    platform: str = ""  # OIP model metadata's platform, named by each service

    @abstractmethod
    def output_specs(self) -> list[oip.TensorMetadata]:
        """The model's outputs as OIP metadata (shapes from the bundle where they vary)."""

    def metadata(self) -> oip.ModelMetadata:
        return oip.ModelMetadata(
            name=self.name,
            versions=[self.model_version()],
            platform=self.platform,
            inputs=[contract.IMAGE.metadata()],
            outputs=self.output_specs(),
            parameters=self.known_facts().to_parameters(),
        )

    @property
    def graph_opset(self) -> int:
        """``ONNX_OPSET``, at least 18 (Resize with antialiasing)."""
        return max(self.settings.onnx_opset, MIN_OPSET)

    def serves_graph(self) -> bool:
        """Whether this replica serves the bundle's ONNX graph (else the torch path)."""
        return wants_graph(self.settings.model_backend, self.device_setting)

    def cached_graph(
        self, key_inputs: Record, build: Callable[[], tuple[bytes, Record]]
    ) -> CachedGraph:
        """The bundle's graph from the signed cache; ``build`` exports and checks it when
        it is missing (only then is torch imported) and raises if it does not match."""
        key = graph_key({**key_inputs, "model": self.name, "opset": self.graph_opset})
        entry = load_or_build(graphs_dir(self.settings), key_path(self.settings),
                              f"{self.name}-{self.manifest.name}", key, build)
        log.info("%s: ONNX graph %s (%s; parity at export: %s)", self.name, entry.path.name,
                 "exported now" if entry.exported else "cached", entry.record.get("parity"))
        return entry

    def graph_runner(self, entry: CachedGraph) -> GraphRunner:
        """An ONNX Runtime session over the graph with this service's thread budget."""
        return GraphRunner(entry.data, session_threads(self.settings, self.torch_threads))

    def graph_metadata(self, facts: contract.ServedFacts) -> dict[str, str]:
        """What a graph carries about itself: model, bundle digest, facts (ONNX metadata)."""
        return {
            "spine.model": self.name,
            "spine.bundle_digest": bundle_digest(facts),
            "spine.facts": json.dumps(facts.identity(), sort_keys=True),
        }

    def warn_if_demo(self) -> None:
        warning = self.bundle_facts().demo_warning
        if warning:
            log.warning("%s Serve your own checkpoints with --model-dir / MODEL_DIR.", warning)


def bundle_digest(facts: contract.ServedFacts) -> str:
    """A digest of the facts replicas share (``facts.identity()``): what a graph exported
    from the bundle carries, the same whichever server (ours, Triton) or device serves it."""
    return contract.facts_digest(facts.identity())
