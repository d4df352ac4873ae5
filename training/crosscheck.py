"""Recompute a ``spine evaluate`` report with scikit-learn and pycocotools.

The report's metrics are our own numpy code (no heavy dependency at serving time). This
module re-derives AUROC and COCO mAP from the written CSVs with the reference libraries,
so anyone can check a report independently (``bench/demo_quality.py`` does). Both
libraries come with the ``dev`` extra.
"""

from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

from training.datasets import CLASS_NAMES, load_vindr

Box = Sequence[float]


def pycocotools_map(
    gt: Mapping[object, list[tuple[int, Box]]],
    preds: Mapping[object, list[tuple[int, float, Box]]],
    n_classes: int,
) -> tuple[float, float, list[float]]:
    """``(mAP50-95, mAP50, per-class AP50)`` from pycocotools; boxes are xyxy, classes 0-based."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    image_ids = {key: i + 1 for i, key in enumerate(dict.fromkeys([*gt, *preds]))}

    def xywh(b: Box) -> list[float]:
        return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]

    annotations = [
        {
            "id": n + 1,
            "image_id": image_ids[image],
            "category_id": cls + 1,
            "bbox": xywh(box),
            "area": float((box[2] - box[0]) * (box[3] - box[1])),
            "iscrowd": 0,
        }
        for n, (image, cls, box) in enumerate(
            (image, cls, box) for image, items in gt.items() for cls, box in items
        )
    ]
    dataset = {
        "images": [{"id": i} for i in image_ids.values()],
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": str(k)} for k in range(n_classes)],
    }
    results = [
        {"image_id": image_ids[image], "category_id": c + 1, "score": s, "bbox": xywh(b)}
        for image, items in preds.items()
        for c, s, b in items
    ]
    if not results:  # pycocotools cannot load an empty result list
        return (
            0.0,
            0.0,
            [
                0.0 if any(c == k for i in gt.values() for c, _ in i) else float("nan")
                for k in range(n_classes)
            ],
        )
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = dataset
        coco.createIndex()
        evaluation = COCOeval(coco, coco.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    precision = evaluation.eval["precision"][0, :, :, 0, 2]  # IoU .5, recalls, classes, all, 100
    per_class = [
        float(precision[:, k].mean()) if (precision[:, k] > -1).any() else float("nan")
        for k in range(n_classes)
    ]
    return float(evaluation.stats[0]), float(evaluation.stats[1]), per_class


def crosscheck_report(data: Path, split: str, out: Path) -> dict[str, float]:
    """AUROC (scikit-learn) and mAP50 / mAP50-95 (pycocotools) from ``out``'s CSVs."""
    from sklearn.metrics import roc_auc_score

    records = load_vindr(data, split)
    labels = {r.image_id: r.is_abnormal for r in records}
    with (out / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    auroc = roc_auc_score(
        [labels[row["image_id"]] for row in rows],
        [float(row["abnormal_probability"]) for row in rows],
    )
    gt = {
        r.image_id: [
            (CLASS_NAMES.index(b.lesion_type), b.xyxy)
            for b in r.boxes
            if b.lesion_type in CLASS_NAMES
        ]
        for r in records
    }
    preds: dict[object, list[tuple[int, float, Box]]] = {}
    with (out / "detections.csv").open() as handle:
        for row in csv.DictReader(handle):
            if row["class"] in CLASS_NAMES:
                box = tuple(float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
                preds.setdefault(row["image_id"], []).append(
                    (CLASS_NAMES.index(row["class"]), float(row["confidence"]), box)
                )
    map50_95, map50, _ = pycocotools_map(gt, preds, len(CLASS_NAMES))
    return {"auroc": float(auroc), "map50": map50, "map50_95": map50_95}
