"""The report figures render headless to real PNG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.metrics import coco_map, detection_pr_curves
from training.plots import save_detection_pr_png, save_pr_png, save_roc_png

PNG = b"\x89PNG\r\n\x1a\n"


def test_figures_are_pngs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = rng.random(120) < 0.5
    scores = {"ensemble": rng.normal(y, 0.8), "densenet121": rng.normal(y, 1.2)}
    roc = save_roc_png(tmp_path / "roc.png", y, scores, {"bundle": 0.449, "Youden": 0.3})
    pr = save_pr_png(tmp_path / "sub" / "pr.png", y, scores)
    gt = {0: [("A", (0, 0, 10, 10))], 1: [("B", (5, 5, 30, 30))]}
    preds = {0: [("A", 0.9, (1, 1, 10, 10)), ("A", 0.3, (50, 50, 60, 60))]}
    names = ["A", "B"]
    det = save_detection_pr_png(
        tmp_path / "det.png",
        detection_pr_curves(gt, preds, names),
        coco_map(gt, preds, names)["per_class_ap50"],
    )
    for path in (roc, pr, det):
        data = path.read_bytes()
        assert data.startswith(PNG) and len(data) > 5_000
