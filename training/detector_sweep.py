"""Choose the detector's serving thresholds (conf, NMS IoU) on the validation split.

A detector trained for minutes ranks well but is unsure, so its serving ``conf`` and NMS
``iou`` matter for the mAP a user gets. They are chosen here, after training, on the
validation phantoms only (never on a test set): each grid point is scored by the mAP50
of the boxes the stack would serve, i.e. the bundle's own classifier and detector run
in-process on the validation canonical images (the gateway's decoder output) and the
gateway's default fusion rule is applied (``paper``: a Normal call keeps only boxes of
confidence >= 0.5; training may not import the gateway, so the rule is restated here).

Rule (documented in docs/DEMO_BUNDLE.md): the best validation mAP50 wins; grid points
within :data:`TOLERANCE` of it count as ties and go to the higher ``conf`` (fewer, surer
boxes on the page), then the higher mAP50, then the higher ``iou``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.settings import FusionMode, GatewaySettings, ModelServerSettings, documented_defaults
from training.canonical import CanonicalEntry
from training.datasets import CLASS_NAMES, ImageRecord
from training.metrics import coco_map, roc_auc

CONF_GRID = (0.01, 0.025, 0.05, 0.1, 0.15, 0.25)
IOU_GRID = (0.5, 0.6, 0.7)
#: Validation mAP50 differences below this are noise on ~120 images: ties.
TOLERANCE = 0.01


@dataclass(frozen=True)
class SweepPoint:
    conf: float
    iou: float
    map50: float
    map50_95: float
    boxes_per_image: float


@dataclass(frozen=True)
class Sweep:
    points: list[SweepPoint]
    #: The served classifier on the same images (its decisions feed the fusion rule).
    classifier_auroc: float
    classifier_threshold: float
    abnormal_called: int


def choose_point(points: Sequence[SweepPoint], tolerance: float = TOLERANCE) -> SweepPoint:
    """The documented rule: best mAP50; ties (within ``tolerance``) to the higher conf."""
    if not points:
        raise ValueError("no sweep points")
    valid = [p for p in points if not np.isnan(p.map50)] or list(points)
    best = max(p.map50 if not np.isnan(p.map50) else -1.0 for p in valid)
    tied = [p for p in valid if not np.isnan(p.map50) and p.map50 >= best - tolerance] or valid
    return max(tied, key=lambda p: (p.conf, p.map50, p.iou))


def served(
    detections: list[tuple[str, float, tuple[float, float, float, float]]],
    abnormal: bool,
    settings: GatewaySettings,
) -> list[tuple[str, float, tuple[float, float, float, float]]]:
    """The gateway's fusion rule (``gateway.pipeline.fusion.apply_fusion``) on one image's boxes."""
    if abnormal:
        return detections
    if settings.fusion_mode is FusionMode.SEED:
        return []
    return [d for d in detections if d[1] >= settings.fusion_normal_min_confidence]


def _canonical_gt(
    record: ImageRecord, entry: CanonicalEntry
) -> list[tuple[str, tuple[float, float, float, float]]]:
    """Ground truth scaled into the canonical image (IoU is invariant to the scaling)."""
    return [
        (
            b.lesion_type,
            (b.xmin * entry.scale_x, b.ymin * entry.scale_y,
             b.xmax * entry.scale_x, b.ymax * entry.scale_y),
        )
        for b in record.boxes
        if b.lesion_type in CLASS_NAMES
    ]


def sweep_detector(
    bundle_dir: Path,
    records: Sequence[ImageRecord],
    entries: dict[str, CanonicalEntry],
    conf_grid: Sequence[float] = CONF_GRID,
    iou_grid: Sequence[float] = IOU_GRID,
    batch: int = 8,
) -> Sweep:
    """Score every (conf, iou) on ``records`` (the validation split) with the bundle's models.

    One detector pass per IoU at the lowest conf; a higher conf is the same NMS output
    with the boxes below it dropped (NMS is greedy by score, so a box above ``conf`` is
    only ever suppressed by a higher one). PyTorch backend: no ONNX export during a build.
    """
    from classifier_service.model import ClassifierModel
    from detector_service.model import DetectorModel

    # A bundle is built from its recipe, not from where it is built: the models and the
    # fusion rule as the stack serves them by default, whatever this environment says.
    settings = documented_defaults(ModelServerSettings, model_backend="torch")
    defaults = documented_defaults(GatewaySettings)
    classifier = ClassifierModel(bundle_dir, "cpu", settings=settings)
    detector = DetectorModel(bundle_dir, "cpu", settings=settings)
    classifier.load()
    detector.load()
    images = [entries[r.image_id].load() for r in records]
    abnormal, probabilities = [], []
    for start in range(0, len(images), batch):
        for out in classifier.predict_batch(images[start : start + batch]):
            abnormal.append(bool(out["abnormal"][0]))
            probabilities.append(float(out["abnormal_probability"][0]))
    labels = np.array([r.is_abnormal for r in records], dtype=bool)
    gt = {r.image_id: _canonical_gt(r, entries[r.image_id]) for r in records}
    low = min(conf_grid)
    points = []
    base = detector.manifest
    for iou in iou_grid:
        spec = base.detector.model_copy(update={"conf": low, "iou": iou})
        detector.manifest = base.model_copy(update={"detector": spec})
        found: dict[str, list[tuple[str, float, tuple[float, float, float, float]]]] = {}
        for start in range(0, len(images), batch):
            outs = detector.predict_batch(images[start : start + batch])
            for record, out in zip(records[start : start + batch], outs, strict=True):
                found[record.image_id] = [
                    (
                        detector.class_names.get(int(c), str(int(c))),
                        float(s),
                        tuple(float(v) for v in box),  # type: ignore[misc]
                    )
                    for box, s, c in zip(out["boxes"], out["scores"], out["classes"], strict=True)
                ]
        for conf in conf_grid:
            preds = {
                r.image_id: served(
                    [d for d in found[r.image_id] if d[1] >= conf and d[0] in CLASS_NAMES],
                    flag,
                    defaults,
                )
                for r, flag in zip(records, abnormal, strict=True)
            }
            scores = coco_map(gt, preds, CLASS_NAMES)
            points.append(
                SweepPoint(
                    conf=conf,
                    iou=iou,
                    map50=round(scores["map50"], 4),
                    map50_95=round(scores["map50_95"], 4),
                    boxes_per_image=round(sum(map(len, preds.values())) / max(len(preds), 1), 2),
                )
            )
    detector.manifest = base
    return Sweep(
        points,
        classifier_auroc=round(roc_auc(labels, np.array(probabilities)), 4),
        classifier_threshold=classifier.manifest.classifier.threshold,
        abnormal_called=sum(abnormal),
    )


def sweep_record(sweep: Sweep, chosen: SweepPoint, images: int) -> dict[str, Any]:
    """What the bundle keeps of the sweep (``recipe.json``): the grid, its scores, the pick."""
    return {
        "split": "validation",
        "images": images,
        "classifier_calls_abnormal": sweep.abnormal_called,
        "objective": "mAP50 of the served boxes (gateway fusion 'paper'), validation split",
        "rule": (
            f"best mAP50; points within {TOLERANCE} of it are ties, broken by higher conf, "
            "then higher mAP50, then higher iou"
        ),
        "grid": [asdict(p) for p in sweep.points],
        "chosen": asdict(chosen),
    }
