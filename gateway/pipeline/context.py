"""What every step of an analysis needs, built once by the runtime (:mod:`gateway.runtime`).

The pipeline's functions take a :class:`Pipeline` rather than the whole app container,
so they depend on the two model clients, the decode pool and budget and the input
selection rules, and on nothing of HTTP, delivery or the audit log.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from gateway.pipeline.budget import DecodeBudget
from gateway.pipeline.building import BuildWatch
from gateway.telemetry import GatewayMetrics
from gateway.upstream.client import ModelClient
from shared import dicom
from shared.contract import ClassifierFacts, DetectorFacts
from shared.settings import GatewaySettings


@dataclass
class Pipeline:
    """The models, the decode workers and the rules of one gateway."""

    settings: GatewaySettings
    classifier: ModelClient[ClassifierFacts]
    detector: ModelClient[DetectorFacts]
    decode_pool: ThreadPoolExecutor
    # The worker processes the intake runs in (None: in-process, DICOM_ISOLATE_DECODERS=false).
    decoders: dicom.DecoderPool | None = None
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    # Input selection rules (read once; None = INPUT_SELECTION=off).
    selection: dicom.SelectionRules | None = None
    # Pixel memory all decodes together may hold (DECODE_MEMORY_BUDGET_MB).
    decode_budget: DecodeBudget = field(default_factory=lambda: DecodeBudget(2048 * 2**20))
    # The bundle `spine serve` is building (None: none; BUNDLE_BUILD_PROGRESS_FILE).
    building: BuildWatch | None = None
