"""The paper's metrics in plain numpy, so evaluation needs neither sklearn nor pycocotools.

Classification: AUROC (+ percentile bootstrap CI), F1 / sensitivity /
specificity / precision / accuracy at a threshold with the service's rule
"Abnormal iff score > threshold", the Youden-optimal threshold, ROC and PR
points.  Detection: COCO-style mAP (101-point interpolated AP, IoU
.50:.05:.95, maxDets 100, area "all") that reproduces pycocotools' COCOeval,
and a percentile bootstrap CI of its mAP50 (images resampled).  The tests
check every number against scikit-learn and pycocotools.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]

COCO_IOU_THRESHOLDS: FloatArray = np.linspace(0.5, 0.95, 10)
COCO_RECALL_THRESHOLDS: FloatArray = np.linspace(0.0, 1.0, 101)

Xyxy = Sequence[float]
GroundTruth = Mapping[Hashable, Sequence[tuple[str | int, Xyxy]]]
Predictions = Mapping[Hashable, Sequence[tuple[str | int, float, Xyxy]]]


# ---------------------------------------------------------------- classification


def _binary_inputs(y_true: ArrayLike, scores: ArrayLike) -> tuple[NDArray[np.bool_], FloatArray]:
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or y.shape != s.shape:
        raise ValueError(f"y_true and scores must be 1-D of equal length, got {y.shape}, {s.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must hold 0/1 (or False/True) labels")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return y.astype(bool), s


def roc_auc(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic (ties count one half)."""
    y, s = _binary_inputs(y_true, scores)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both classes in y_true")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    start = np.cumsum(counts) - counts  # 0-based rank of each tie group's first member
    ranks = (start + (counts + 1) / 2.0)[inverse]
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def bootstrap_auc_ci(
    y_true: ArrayLike,
    scores: ArrayLike,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the AUROC (images resampled with replacement).

    Resamples that miss one class are drawn again, as is usual for AUROC CIs.
    Vectorised over tie groups of scores, so 1000 resamples of thousands of
    images take well under a second.
    """
    y, s = _binary_inputs(y_true, scores)
    if y.all() or not y.any():
        raise ValueError("AUROC needs both classes in y_true")
    _, group = np.unique(s, return_inverse=True)
    n_groups = int(group.max()) + 1
    rng = np.random.default_rng(seed)
    aucs: list[FloatArray] = []
    need = n
    while need > 0:
        chunk = min(max(need, 64), max(1, 4_000_000 // y.size))
        idx = rng.integers(0, y.size, size=(chunk, y.size))
        flat = np.arange(chunk)[:, None] * n_groups + group[idx]
        pos = np.bincount(flat[y[idx]], minlength=chunk * n_groups).reshape(chunk, n_groups)
        neg = np.bincount(flat[~y[idx]], minlength=chunk * n_groups).reshape(chunk, n_groups)
        n_pos = pos.sum(axis=1)
        n_neg = neg.sum(axis=1)
        below = np.cumsum(neg, axis=1) - neg  # negatives with a strictly lower score
        wins = (pos * (below + 0.5 * neg)).sum(axis=1)
        ok = (n_pos > 0) & (n_neg > 0)
        auc = wins[ok] / (n_pos[ok] * n_neg[ok])
        aucs.append(auc[:need])
        need -= min(need, auc.size)
    all_aucs = np.concatenate(aucs)
    low, high = np.quantile(all_aucs, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def binary_metrics_at(y_true: ArrayLike, scores: ArrayLike, threshold: float) -> dict[str, float]:
    """Confusion-matrix metrics for "Abnormal iff score > threshold" (0 where undefined)."""
    y, s = _binary_inputs(y_true, scores)
    pred = s > threshold
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    tn = int((~pred & ~y).sum())

    def ratio(a: int, b: int) -> float:
        return a / b if b else 0.0

    return {
        "threshold": float(threshold),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "precision": ratio(tp, tp + fp),
        "accuracy": ratio(tp + tn, y.size),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def _cumulative_counts(
    y: NDArray[np.bool_], s: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(fps, tps, thresholds) at each distinct score, highest score first (as sklearn)."""
    order = np.argsort(s, kind="mergesort")[::-1]
    s_sorted = s[order]
    y_sorted = y[order]
    last_of_group = np.r_[np.flatnonzero(np.diff(s_sorted)), y.size - 1]
    tps = np.cumsum(y_sorted)[last_of_group].astype(np.float64)
    fps = (last_of_group + 1 - tps).astype(np.float64)
    return fps, tps, s_sorted[last_of_group]


def roc_curve(y_true: ArrayLike, scores: ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(fpr, tpr, thresholds) with positives = score >= threshold; first threshold is +inf.

    Same points as sklearn.metrics.roc_curve(drop_intermediate=False).
    """
    y, s = _binary_inputs(y_true, scores)
    if y.all() or not y.any():
        raise ValueError("a ROC curve needs both classes in y_true")
    fps, tps, thr = _cumulative_counts(y, s)
    fps, tps = np.r_[0.0, fps], np.r_[0.0, tps]
    return fps / fps[-1], tps / tps[-1], np.r_[np.inf, thr]


def pr_curve(y_true: ArrayLike, scores: ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(precision, recall, thresholds) as sklearn.metrics.precision_recall_curve returns them.

    Thresholds increase; the last point (precision 1, recall 0) has no threshold.
    """
    y, s = _binary_inputs(y_true, scores)
    if not y.any():
        raise ValueError("a PR curve needs at least one positive")
    fps, tps, thr = _cumulative_counts(y, s)
    predicted = tps + fps
    precision = np.divide(tps, predicted, out=np.zeros_like(tps), where=predicted != 0)
    recall = tps / tps[-1]
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thr[::-1]


def average_precision(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Step-wise area under the PR curve (sklearn's average_precision_score)."""
    precision, recall, _ = pr_curve(y_true, scores)
    return float(-np.sum(np.diff(recall) * precision[:-1]))


def youden_threshold(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Threshold maximising sensitivity + specificity - 1 for the rule score > threshold.

    The best ROC cut "score >= s_k" is returned as the midpoint between s_k and
    the next lower distinct score, which classifies the given data identically
    and sits as far as possible from both; ties in J pick the highest threshold.
    """
    fpr, tpr, thr = roc_curve(y_true, scores)
    k = int(np.argmax(tpr - fpr))
    if k == 0:  # predicting nobody abnormal is best: any threshold >= max score
        return float(thr[1])
    upper = thr[k]
    if k + 1 < thr.size:
        lower = thr[k + 1]
        mid = (upper + lower) / 2.0
        return float(mid if lower < mid < upper else lower)
    return float(np.nextafter(upper, -np.inf))


# --------------------------------------------------------------------- detection


def box_iou(a: ArrayLike, b: ArrayLike) -> FloatArray:
    """Pairwise IoU of xyxy boxes, (n, 4) x (m, 4) -> (n, m); zero-area unions give 0."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _greedy_match(ious: FloatArray, thresholds: FloatArray) -> NDArray[np.bool_]:
    """COCOeval's matching: each detection (score order) takes the best free GT at IoU >= t.

    Equal IoUs go to the later GT, exactly as pycocotools does.
    """
    n_det, n_gt = ious.shape
    matched = np.zeros((thresholds.size, n_det), dtype=bool)
    for ti, t in enumerate(thresholds):
        floor = min(float(t), 1 - 1e-10)
        free = np.ones(n_gt, dtype=bool)
        for d in range(n_det):
            cand = np.where(free, ious[d], -1.0)
            best = n_gt - 1 - int(np.argmax(cand[::-1]))
            if cand[best] < floor:
                continue
            free[best] = False
            matched[ti, d] = True
    return matched


def _class_index(cls: str | int, names: Sequence[str]) -> int:
    if isinstance(cls, (int, np.integer)):
        if not 0 <= int(cls) < len(names):
            raise ValueError(f"class id {cls} outside 0..{len(names) - 1}")
        return int(cls)
    try:
        return list(names).index(cls)
    except ValueError:
        raise ValueError(f"unknown class {cls!r}; expected one of {list(names)}") from None


def _precision_envelope(matched: NDArray[np.bool_], n_gt: int) -> tuple[FloatArray, FloatArray]:
    """(recall, monotone precision) per IoU threshold from score-ordered match flags."""
    tp = np.cumsum(matched, axis=1, dtype=np.float64)
    fp = np.cumsum(~matched, axis=1, dtype=np.float64)
    recall = tp / n_gt
    precision = tp / (tp + fp + np.spacing(1))
    return recall, np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]


def _interpolated_precision(matched: NDArray[np.bool_], n_gt: int) -> FloatArray:
    """Precision at the 101 COCO recall points, per IoU threshold (0 past the last recall)."""
    recall, precision = _precision_envelope(matched, n_gt)
    out = np.zeros((matched.shape[0], COCO_RECALL_THRESHOLDS.size))
    for t in range(matched.shape[0]):
        idx = np.searchsorted(recall[t], COCO_RECALL_THRESHOLDS, side="left")
        ok = idx < precision.shape[1]
        out[t, ok] = precision[t, idx[ok]]
    return out


@dataclass
class _ClassMatches:
    """All detections of one class over the data set, best score first, with TP flags."""

    scores: FloatArray
    matched: NDArray[np.bool_]  # (IoU thresholds, detections)
    n_gt: int


def _match_by_class(
    gt: GroundTruth, preds: Predictions, names: Sequence[str], max_dets: int
) -> list[_ClassMatches]:
    k_count = len(names)
    gt_boxes: dict[Hashable, list[list[list[float]]]] = {}
    det_boxes: dict[Hashable, list[list[tuple[float, list[float]]]]] = {}
    for image_id, items in gt.items():
        per = gt_boxes.setdefault(image_id, [[] for _ in range(k_count)])
        for cls, box in items:
            per[_class_index(cls, names)].append([float(v) for v in box])
    for image_id, items in preds.items():
        per_d = det_boxes.setdefault(image_id, [[] for _ in range(k_count)])
        for cls, score, box in items:
            per_d[_class_index(cls, names)].append((float(score), [float(v) for v in box]))
    # Image order only decides ties between equal scores in different images.
    image_ids = sorted(set(gt_boxes) | set(det_boxes), key=lambda i: (str(type(i)), i))
    thresholds = COCO_IOU_THRESHOLDS
    empty: list[list[Any]] = [[] for _ in range(k_count)]
    out: list[_ClassMatches] = []
    for k in range(k_count):
        scores: list[FloatArray] = []
        flags: list[NDArray[np.bool_]] = []
        n_gt = 0
        for image_id in image_ids:
            g = gt_boxes.get(image_id, empty)[k]
            d = det_boxes.get(image_id, empty)[k]
            n_gt += len(g)
            if not d:
                continue
            s = np.array([score for score, _ in d])
            order = np.argsort(-s, kind="mergesort")[:max_dets]
            if g:
                boxes = np.array([d[i][1] for i in order])
                flags.append(_greedy_match(box_iou(boxes, np.array(g)), thresholds))
            else:
                flags.append(np.zeros((thresholds.size, order.size), dtype=bool))
            scores.append(s[order])
        all_scores = np.concatenate(scores) if scores else np.zeros(0)
        all_flags = np.concatenate(flags, axis=1) if flags else np.zeros((thresholds.size, 0), bool)
        order = np.argsort(-all_scores, kind="mergesort")
        out.append(_ClassMatches(all_scores[order], all_flags[:, order], n_gt))
    return out


def coco_map(
    gt: GroundTruth,
    preds: Predictions,
    class_names: Sequence[str],
    max_dets: int = 100,
) -> dict[str, Any]:
    """COCO bbox mAP as pycocotools computes it (no crowd, area "all", maxDets per image+class).

    gt maps image id -> [(class, xyxy)], preds maps image id -> [(class, score,
    xyxy)]; a class is a name from class_names or its index.  Images only in
    preds count their detections as false positives.  Classes without ground
    truth are left out of the means (their per-class AP is None); with no
    ground truth at all the means are NaN.
    """
    names = list(class_names)
    matches = _match_by_class(gt, preds, names, max_dets)
    ap = np.full((COCO_IOU_THRESHOLDS.size, len(names)), np.nan)
    for k, cm in enumerate(matches):
        if cm.n_gt:
            ap[:, k] = _interpolated_precision(cm.matched, cm.n_gt).mean(axis=1)
    valid = ~np.isnan(ap[0])
    return {
        "map50": float(ap[0, valid].mean()) if valid.any() else float("nan"),
        "map50_95": float(ap[:, valid].mean()) if valid.any() else float("nan"),
        "per_class_ap50": {n: (float(ap[0, k]) if valid[k] else None) for k, n in enumerate(names)},
        "per_class_ap50_95": {
            n: (float(ap[:, k].mean()) if valid[k] else None) for k, n in enumerate(names)
        },
        "n_gt": {n: cm.n_gt for n, cm in zip(names, matches, strict=True)},
    }


def detection_pr_curves(
    gt: GroundTruth,
    preds: Predictions,
    class_names: Sequence[str],
    iou: float = 0.5,
    max_dets: int = 100,
) -> dict[str, tuple[FloatArray, FloatArray]]:
    """Per class with ground truth: (recall, precision) of the score-ranked detections at one
    COCO IoU threshold, precision made monotone as COCO's AP uses it (for the PR plots)."""
    t = int(np.argmin(np.abs(COCO_IOU_THRESHOLDS - iou)))
    if not np.isclose(COCO_IOU_THRESHOLDS[t], iou):
        raise ValueError(f"iou must be one of {COCO_IOU_THRESHOLDS.round(2).tolist()}")
    names = list(class_names)
    curves: dict[str, tuple[FloatArray, FloatArray]] = {}
    for name, cm in zip(names, _match_by_class(gt, preds, names, max_dets), strict=True):
        if cm.n_gt:
            recall, precision = _precision_envelope(cm.matched[t : t + 1], cm.n_gt)
            curves[name] = (recall[0], precision[0])
    return curves


@dataclass
class _ImageDetections:
    """Every image's detections of one class at IoU 0.5, in coco_map's ranking order."""

    image: NDArray[np.intp]  # which image each detection came from
    matched: NDArray[np.bool_]  # true positive at IoU 0.5 (matched within its image)
    n_gt: NDArray[np.int64]  # ground-truth boxes of this class per image


def _per_image_detections(
    gt: GroundTruth, preds: Predictions, names: Sequence[str], max_dets: int
) -> tuple[int, list[_ImageDetections]]:
    """Match each image on its own (COCO matching never crosses images), then rank globally."""
    image_ids = sorted(set(gt) | set(preds), key=lambda i: (str(type(i)), i))
    per_class: list[tuple[list[int], list[float], list[bool]]] = [([], [], []) for _ in names]
    n_gt = np.zeros((len(names), len(image_ids)), dtype=np.int64)
    for index, image_id in enumerate(image_ids):
        one_gt = {image_id: gt.get(image_id, [])}
        one_pred = {image_id: preds.get(image_id, [])}
        for k, cm in enumerate(_match_by_class(one_gt, one_pred, names, max_dets)):
            n_gt[k, index] = cm.n_gt
            images, scores, flags = per_class[k]
            images += [index] * cm.scores.size
            scores += cm.scores.tolist()
            flags += cm.matched[0].tolist()
    out = []
    for k, (images, scores, flags) in enumerate(per_class):
        order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
        out.append(
            _ImageDetections(
                np.asarray(images, dtype=np.intp)[order],
                np.asarray(flags, dtype=bool)[order],
                n_gt[k],
            )
        )
    return len(image_ids), out


def _weighted_ap(matched: NDArray[np.bool_], weights: FloatArray, n_gt: float) -> float:
    """101-point AP of ranked detections, each counted ``weights`` times (a resample's copies).

    Copies of one detection share its score and match, so they sit together in the ranking;
    counting them with weights gives the same precision envelope as listing them one by one.
    """
    tp = np.cumsum(weights * matched)
    fp = np.cumsum(weights * ~matched)
    recall = tp / n_gt
    precision = np.maximum.accumulate((tp / (tp + fp + np.spacing(1)))[::-1])[::-1]
    idx = np.searchsorted(recall, COCO_RECALL_THRESHOLDS, side="left")
    ok = idx < precision.size
    interpolated = np.zeros(COCO_RECALL_THRESHOLDS.size)
    interpolated[ok] = precision[idx[ok]]
    return float(interpolated.mean())


def _weighted_map50(classes: list[_ImageDetections], counts: FloatArray) -> float:
    aps = []
    for det in classes:
        n_gt = float(counts @ det.n_gt)
        if n_gt > 0:
            aps.append(_weighted_ap(det.matched, counts[det.image], n_gt))
    return float(np.mean(aps)) if aps else float("nan")


def bootstrap_map50_ci(
    gt: GroundTruth,
    preds: Predictions,
    class_names: Sequence[str],
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    max_dets: int = 100,
) -> tuple[float, float]:
    """Percentile bootstrap CI of coco_map's mAP50 (images resampled with replacement).

    Each image is matched once; a resample only counts every image as often as it was
    drawn, so 1000 resamples cost about as much as 1000 cumulative sums per class.
    Resamples in which no class has ground truth are drawn again.
    """
    n_images, classes = _per_image_detections(gt, preds, list(class_names), max_dets)
    if n_images == 0 or not any(det.n_gt.any() for det in classes):
        raise ValueError("mAP50 needs ground truth")
    rng = np.random.default_rng(seed)
    values: list[float] = []
    while len(values) < n:
        counts = np.bincount(rng.integers(0, n_images, n_images), minlength=n_images)
        value = _weighted_map50(classes, counts.astype(np.float64))
        if value == value:  # not NaN
            values.append(value)
    low, high = np.quantile(values, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)
