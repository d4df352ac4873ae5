"""The numpy metrics must give the numbers scikit-learn and pycocotools give."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from training.crosscheck import pycocotools_map
from training.metrics import (
    COCO_IOU_THRESHOLDS,
    average_precision,
    binary_metrics_at,
    bootstrap_auc_ci,
    bootstrap_map50_ci,
    box_iou,
    coco_map,
    detection_pr_curves,
    pr_curve,
    roc_auc,
    roc_curve,
    youden_threshold,
)

CLASSES = ("A", "B", "C", "D", "E", "F", "G")


def _binary_data(seed: int, n: int = 300, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.random(n) < rng.uniform(0.2, 0.8)
    y[:2] = [True, False]
    scores = rng.normal(y * rng.uniform(0.3, 2.0), 1.0)
    scores = 1 / (1 + np.exp(-scores))
    if ties:
        scores = np.round(scores, 1)
    return y.astype(int), scores


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [False, True])
def test_auc_and_curves_match_sklearn(seed: int, ties: bool) -> None:
    y, s = _binary_data(seed, n=50 + 97 * seed, ties=ties)
    assert roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)

    fpr, tpr, thr = roc_curve(y, s)
    sk_fpr, sk_tpr, sk_thr = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_array_equal(thr[1:], sk_thr[1:])
    assert np.isinf(thr[0])

    precision, recall, pthr = pr_curve(y, s)
    sk_p, sk_r, sk_pt = skm.precision_recall_curve(y, s)
    np.testing.assert_allclose(precision, sk_p)
    np.testing.assert_allclose(recall, sk_r)
    np.testing.assert_array_equal(pthr, sk_pt)
    assert average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_binary_metrics_match_sklearn(seed: int) -> None:
    y, s = _binary_data(seed, ties=seed % 2 == 1)
    for threshold in (0.1, 0.449, 0.5, float(np.median(s)), 0.95):
        pred = (s > threshold).astype(int)
        got = binary_metrics_at(y, s, threshold)
        assert got["f1"] == pytest.approx(skm.f1_score(y, pred, zero_division=0))
        assert got["sensitivity"] == pytest.approx(skm.recall_score(y, pred, zero_division=0))
        assert got["specificity"] == pytest.approx(
            skm.recall_score(y, pred, pos_label=0, zero_division=0)
        )
        assert got["precision"] == pytest.approx(skm.precision_score(y, pred, zero_division=0))
        assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
        tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
        assert (got["tp"], got["fp"], got["tn"], got["fn"]) == (tp, fp, tn, fn)


def test_binary_metrics_use_strict_threshold() -> None:
    got = binary_metrics_at([1, 0], [0.449, 0.2], 0.449)
    assert got["sensitivity"] == 0.0  # Abnormal iff score > threshold, as the service decides


@pytest.mark.parametrize("seed", range(5))
def test_youden_threshold_reaches_best_j(seed: int) -> None:
    y, s = _binary_data(seed, ties=seed % 2 == 0)
    fpr, tpr, _ = skm.roc_curve(y, s)
    threshold = youden_threshold(y, s)
    got = binary_metrics_at(y, s, threshold)
    assert got["sensitivity"] + got["specificity"] - 1 == pytest.approx(np.max(tpr - fpr))


def test_youden_edge_cases() -> None:
    assert youden_threshold([0, 1], [0.2, 0.8]) == pytest.approx(0.5)
    # Perfectly inverted scores: best is to call nobody abnormal (J = 0).
    t = youden_threshold([1, 0], [0.2, 0.8])
    assert binary_metrics_at([1, 0], [0.2, 0.8], t)["fp"] == 0


def test_bootstrap_ci_equals_naive_sklearn_loop() -> None:
    y, s = _binary_data(3, n=200)
    low, high = bootstrap_auc_ci(y, s, n=300, seed=7)
    idx = np.random.default_rng(7).integers(0, y.size, size=(300, y.size))
    naive = [skm.roc_auc_score(y[i], s[i]) for i in idx]
    assert (low, high) == pytest.approx(tuple(np.quantile(naive, [0.025, 0.975])), abs=1e-12)
    assert low <= roc_auc(y, s) <= high
    assert bootstrap_auc_ci(y, s, n=300, seed=7) == (low, high)


def test_bootstrap_ci_survives_tiny_sets() -> None:
    low, high = bootstrap_auc_ci([0, 1, 0, 1], [0.1, 0.9, 0.4, 0.3], n=200, seed=1)
    assert 0.0 <= low <= high <= 1.0


def test_single_class_is_an_error() -> None:
    with pytest.raises(ValueError):
        roc_auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError):
        roc_auc([0, 1], [0.1])


# ------------------------------------------------------------------- detection


def _random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    xy = rng.uniform(0, 900, (n, 2))
    wh = rng.uniform(20, 250, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1)


def _random_detection_problem(seed: int) -> tuple[dict, dict]:
    """GT, and predictions mixing near hits, duplicates, wrong classes and background."""
    rng = np.random.default_rng(seed)
    gt: dict[int, list] = {}
    preds: dict[int, list] = {}
    for image in range(40):
        n_gt = int(rng.choice([0, 0, 1, 2, 3, 5]))
        boxes = _random_boxes(rng, n_gt)
        # Class 6 never has ground truth; class 5 gets ground truth but no predictions.
        classes = rng.integers(0, 6, n_gt)
        gt[image] = [(int(c), b.tolist()) for c, b in zip(classes, boxes, strict=True)]
        out = []
        for c, b in zip(classes, boxes, strict=True):
            if c == 5:
                continue
            for _ in range(int(rng.choice([0, 1, 1, 2]))):
                jitter = rng.normal(0, rng.choice([2, 10, 30]), 4)
                cls = int(c) if rng.random() < 0.85 else int(rng.integers(0, 5))
                x0, y0, x1, y1 = b + jitter
                box = [min(x0, x1), min(y0, y1), max(x0, x1) + 1, max(y0, y1) + 1]
                out.append((cls, float(rng.random()), box))
        for b in _random_boxes(rng, int(rng.integers(0, 4))):
            out.append((int(rng.choice([0, 1, 2, 3, 4, 6])), float(rng.random() * 0.7), b.tolist()))
        preds[image] = out
    # One crowded image past maxDets=100 for class 0.
    crowd = _random_boxes(rng, 130)
    gt[999] = [(0, b.tolist()) for b in crowd[:20]]
    preds[999] = [(0, float(rng.random()), b.tolist()) for b in crowd]
    return gt, preds


@pytest.mark.parametrize("seed", range(5))
def test_coco_map_matches_pycocotools(seed: int) -> None:
    gt, preds = _random_detection_problem(seed)
    ours = coco_map(gt, preds, CLASSES)
    map50_95, map50, per_class = pycocotools_map(gt, preds, len(CLASSES))
    assert ours["map50_95"] == pytest.approx(map50_95, abs=0.005)
    assert ours["map50"] == pytest.approx(map50, abs=0.005)
    for k, name in enumerate(CLASSES):
        if np.isnan(per_class[k]):
            assert ours["per_class_ap50"][name] is None
        else:
            assert ours["per_class_ap50"][name] == pytest.approx(per_class[k], abs=0.005)
    # In practice the two agree to rounding error, not just to the 0.005 the report promises.
    assert abs(ours["map50_95"] - map50_95) < 1e-9
    assert ours["per_class_ap50"]["G"] is None  # class without ground truth
    assert ours["per_class_ap50"]["F"] == 0.0  # ground truth, no predictions


def test_coco_map_perfect_and_names() -> None:
    gt = {"a": [("A", (0, 0, 10, 10)), ("B", (20, 20, 40, 50))], "b": []}
    preds = {"a": [("A", 0.9, (0, 0, 10, 10)), (1, 0.8, (20, 20, 40, 50))]}
    got = coco_map(gt, preds, CLASSES)
    assert got["map50"] == pytest.approx(1.0)
    assert got["map50_95"] == pytest.approx(1.0)
    assert got["n_gt"]["A"] == 1
    assert np.isnan(coco_map({"a": []}, {}, CLASSES)["map50"])
    with pytest.raises(ValueError):
        coco_map({"a": [("Nope", (0, 0, 1, 1))]}, {}, CLASSES)


def test_map50_weights_equal_coco_map_on_the_resampled_images() -> None:
    """Counting an image k times gives coco_map's mAP50 on a set holding k copies of it."""
    from training.metrics import _per_image_detections, _weighted_map50

    gt, preds = _random_detection_problem(3)
    n_images, classes = _per_image_detections(gt, preds, CLASSES, 100)
    assert _weighted_map50(classes, np.ones(n_images)) == pytest.approx(
        coco_map(gt, preds, CLASSES)["map50"], abs=1e-12
    )
    ids = sorted(set(gt) | set(preds))
    counts = np.random.default_rng(5).integers(0, 4, n_images)
    copies = [(i, c) for i, k in zip(ids, counts, strict=True) for c in range(k)]
    copies_gt = {(i, c): gt.get(i, []) for i, c in copies}
    copies_pred = {(i, c): preds.get(i, []) for i, c in copies}
    assert _weighted_map50(classes, counts.astype(float)) == pytest.approx(
        coco_map(copies_gt, copies_pred, CLASSES)["map50"], abs=1e-12
    )


def test_map50_bootstrap_ci_known_cases() -> None:
    box = (0, 0, 10, 10)
    perfect = {"a": [("A", box)], "b": [("B", box)]}
    found = {"a": [("A", 0.9, box)], "b": [("B", 0.8, box)]}
    assert bootstrap_map50_ci(perfect, found, CLASSES, n=50) == pytest.approx((1.0, 1.0))
    # One of two boxes found: a resample holds it twice (AP 1), not at all (AP 0) or both
    # images (AP 0.505), with chances 1/4, 1/4 and 1/2: the 95% interval spans 0 to 1.
    half = {"a": [("A", box)], "b": [("A", box)]}
    low, high = bootstrap_map50_ci(half, {"a": [("A", 0.9, box)]}, CLASSES, n=400)
    assert (low, high) == pytest.approx((0.0, 1.0))
    point = coco_map(half, {"a": [("A", 0.9, box)]}, CLASSES)["map50"]
    assert point == pytest.approx(51 / 101)
    with pytest.raises(ValueError):
        bootstrap_map50_ci({"a": []}, {}, CLASSES)


def test_map50_bootstrap_ci_brackets_the_estimate() -> None:
    gt, preds = _random_detection_problem(4)
    point = coco_map(gt, preds, CLASSES)["map50"]
    low, high = bootstrap_map50_ci(gt, preds, CLASSES, n=300, seed=2)
    assert 0.0 < low < point < high < 1.0
    assert bootstrap_map50_ci(gt, preds, CLASSES, n=300, seed=2) == (low, high)


def test_detection_pr_curves_end_at_recall_and_ap() -> None:
    gt, preds = _random_detection_problem(11)
    curves = detection_pr_curves(gt, preds, CLASSES)
    assert "G" not in curves and "A" in curves
    recall, precision = curves["A"]
    assert np.all(np.diff(recall) >= 0) and np.all(np.diff(precision) <= 1e-12)
    with pytest.raises(ValueError):
        detection_pr_curves(gt, preds, CLASSES, iou=0.52)


def test_box_iou() -> None:
    iou = box_iou(
        [[0, 0, 10, 10]], [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 0, 0]]
    )
    np.testing.assert_allclose(iou, [[1.0, 1 / 3, 0.0, 0.0]])
    assert COCO_IOU_THRESHOLDS.size == 10
