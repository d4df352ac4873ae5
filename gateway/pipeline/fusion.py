"""Merge the classifier's call and the detector's boxes: pure functions, no I/O.

The default rule is the VinDr-SpineXR paper's: when the ensemble says Normal, only
boxes the detector is sure of (confidence >= 0.5) are kept; when Abnormal, every box
above the detector's own threshold is kept. ``seed`` mode reproduces the original app,
which showed no boxes at all for a Normal image.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from shared import contract
from shared.geometry import canonical_to_original
from shared.settings import FusionMode

Diagnosis = Literal["Normal", "Abnormal"]


@dataclass(frozen=True)
class Box:
    class_id: int
    class_name: str
    confidence: float
    x1: float
    y1: float
    x2: float
    y2: float


def diagnose(abnormal: bool, probability: float) -> tuple[Diagnosis, float]:
    """The classifier's call in words, with the confidence of that call."""
    if abnormal:
        return "Abnormal", probability
    return "Normal", 1.0 - probability


def boxes_from_outputs(
    outputs: dict[str, np.ndarray], class_names: dict[int, str], index: int = 0
) -> list[Box]:
    """The detector's padded tensors for image ``index`` -> boxes (canonical pixels).

    Boxes with no area (clipped flat against the image edge) are dropped: nothing can
    be drawn or reviewed there.
    """
    count = int(outputs[contract.NUM_DETECTIONS.name][index, 0])
    boxes = outputs[contract.DETECTION_BOXES.name][index, :count]
    scores = outputs[contract.DETECTION_SCORES.name][index, :count]
    classes = outputs[contract.DETECTION_CLASSES.name][index, :count]
    return [
        Box(
            class_id=int(cls),
            class_name=class_names.get(int(cls), f"class {int(cls)}"),
            confidence=float(score),
            x1=float(box[0]),
            y1=float(box[1]),
            x2=float(box[2]),
            y2=float(box[3]),
        )
        for box, score, cls in zip(boxes, scores, classes, strict=True)
        if box[2] > box[0] and box[3] > box[1]
    ]


def to_original(box: Box, scale_x: float, scale_y: float, width: int, height: int) -> Box:
    """Canonical-image pixels -> original DICOM pixels (clipped to the image)."""
    x1, y1, x2, y2 = canonical_to_original(
        (box.x1, box.y1, box.x2, box.y2), scale_x, scale_y, width, height
    )
    return replace(box, x1=x1, y1=y1, x2=x2, y2=y2)


def apply_fusion(
    boxes: list[Box], diagnosis: Diagnosis, mode: FusionMode, normal_min_confidence: float
) -> tuple[list[Box], int]:
    """``(kept boxes sorted by confidence, number suppressed)``."""
    if diagnosis == "Abnormal":
        kept = boxes
    elif mode is FusionMode.SEED:
        kept = []
    else:
        kept = [box for box in boxes if box.confidence >= normal_min_confidence]
    kept = sorted(kept, key=lambda box: box.confidence, reverse=True)
    return kept, len(boxes) - len(kept)
