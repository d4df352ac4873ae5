"""The writer's input: one analysis as the ``/upload`` JSON states it, typed.

Both users build it from what they already have: the gateway from its findings, by the
``/upload`` JSON's own rules (so the DICOM objects say exactly what the JSON says, bbox
for bbox), ``spine evaluate`` from its in-process predictions. Boxes are in the ORIGINAL
image's pixels (x1, y1, x2, y2).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from shared.contract import demo_warning
from shared.version import SOFTWARE_VERSION

NOT_FOR_DIAGNOSIS = (
    "Research use only. Not for diagnostic use: automated analysis by an unverified "
    "algorithm; not a medical device."
)


@dataclass(frozen=True)
class ResultBox:
    class_name: str
    confidence: float
    bbox: tuple[float, float, float, float]  # original pixels: x1, y1, x2, y2


@dataclass(frozen=True)
class AnalysisResult:
    """What one analysis found and which models found it."""

    diagnosis: str  # "Normal" | "Abnormal"
    abnormal_probability: float
    threshold: float
    members: dict[str, float]
    boxes: tuple[ResultBox, ...] | None  # None: the detector did not answer
    bundle_name: str
    bundle_kind: str  # user | demo | untrained
    checkpoints: dict[str, str] = field(default_factory=dict)  # path -> sha256
    version: str = SOFTWARE_VERSION
    fusion_mode: str | None = None

    @property
    def bundle_digest(self) -> str:
        """What decides the objects besides the image: the bundle (name, kind, weights'
        sha256, threshold) and the fusion rule, as 16 hex digits. An input of the result
        objects' UIDs: a new bundle or rule files new objects, a re-analysis the same ones."""
        facts = [self.bundle_name, self.bundle_kind, sorted(self.checkpoints.items()),
                 repr(self.threshold), self.fusion_mode]
        return hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:16]

    @property
    def disclaimer(self) -> str:
        """The intended-use text, with the DEMO / UNTRAINED warning where it applies."""
        warning = demo_warning(self.bundle_kind)
        return f"{warning} {NOT_FOR_DIAGNOSIS}" if warning else NOT_FOR_DIAGNOSIS
