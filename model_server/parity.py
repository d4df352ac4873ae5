"""What an exported graph must prove before it is cached: the torch path's answers.

Every graph is run, at export, on fresh radiograph-like images of several shapes (drawn
anew each time, never fixed public inputs: a graph that imitates the model only on known
inputs fails) and compared with the torch path our services run on a GPU. Classifier:
member probabilities and scores within :data:`SCORE_ATOL`, decisions equal. Detector: the
same number of boxes per image, each matched to one of the same class with its score
within :data:`SCORE_ATOL` and its corners within :data:`BOX_ATOL_PX` (of boxes with tied
scores either may be kept: :func:`match_detections`). A graph that does
not match is an :class:`~model_server.onnx_runtime.OnnxBackendError`, never an artefact.
"""

from __future__ import annotations

import numpy as np

SCORE_ATOL = 1e-4
BOX_ATOL_PX = 0.5
# Scores this close are a tie for NMS's ordering and for the max_det cut: the two
# implementations' float rounding moves scores by ~1e-6 (1.8e-6 seen on YOLO11l).
TIE = 1e-5
MIN_SHIFT_PX = 2.0  # a tied twin is another anchor, not the same box moved a little
# (height, width) of the check images: portrait and landscape canonical radiographs, a
# square pair (one batched call of two), a small odd one. Each is shifted by a few random
# pixels per export.
CHECK_SHAPES = ((1024, 669), (669, 1024), (512, 512), (512, 512), (131, 97))


def parity_images(rng: np.random.Generator | None = None) -> list[np.ndarray]:
    """Grey uint8 images like canonical radiographs (a bright column on a gradient, with
    noise), of the :data:`CHECK_SHAPES` moved by up to 7 pixels (one draw per pair)."""
    rng = rng or np.random.default_rng()
    images, shift = [], (0, 0)
    for index, (height, width) in enumerate(CHECK_SHAPES):
        if index == 0 or CHECK_SHAPES[index - 1] != (height, width):
            shift = tuple(int(v) for v in rng.integers(0, 8, size=2))
        height, width = height + shift[0], width + shift[1]
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        centre = width * rng.uniform(0.35, 0.65)
        base = 50 + 110 * (y / height) + 80 * np.exp(-(((x - centre) / (width / 7)) ** 2))
        noisy = base + rng.normal(0, 10, (height, width))
        images.append(np.clip(noisy, 0, 255).astype(np.uint8))
    return images


def worst(values: list[float]) -> float:
    return float(max(values)) if values else 0.0


def match_detections(expected: np.ndarray, actual: np.ndarray) -> dict[str, float] | str:
    """Rows ``(x1, y1, x2, y2, score, class)`` of one image matched one to one (greedy,
    expected rows by descending score): the largest box and score differences and the
    number of tie-broken rows, or the reason they do not match.

    Of boxes whose scores are tied (within :data:`TIE`, the float rounding between the two
    implementations) a greedy NMS or the max_det cut may keep either: a row left
    unmatched counts as tie-broken when the other answer has a left-over box of its class
    and score elsewhere, and no more rows are tie-broken than matched.
    """
    if len(expected) != len(actual):
        return f"{len(actual)} boxes, the torch path {len(expected)}"
    free = np.ones(len(actual), dtype=bool)
    box_diffs, score_diffs, unmatched = [], [], []
    for row in expected[np.argsort(-expected[:, 4], kind="stable")]:
        candidates = np.flatnonzero(free & (actual[:, 5] == row[5]))
        if not len(candidates):
            unmatched.append(row)
            continue
        distance = np.abs(actual[candidates, :4] - row[:4]).max(axis=1)
        best = candidates[int(np.argmin(distance))]
        if distance.min() > BOX_ATOL_PX or abs(actual[best, 4] - row[4]) > SCORE_ATOL:
            unmatched.append(row)
            continue
        free[best] = False
        box_diffs.append(float(distance.min()))
        score_diffs.append(float(abs(actual[best, 4] - row[4])))
    theirs = list(np.flatnonzero(free))
    for row in unmatched:
        twins = [i for i in theirs if _twin(row, actual[i])]
        if not twins:
            return (f"no box within {BOX_ATOL_PX} px and {SCORE_ATOL} in score for "
                    f"{row[:4].round(1).tolist()} (score {row[4]:.5f}, class {int(row[5])})")
        theirs.remove(twins[0])
    if len(unmatched) > len(box_diffs):
        return f"{len(unmatched)} of {len(expected)} boxes differ (ties cannot explain so many)"
    return {"box": worst(box_diffs), "score": worst(score_diffs), "tie_broken": len(unmatched)}


def _twin(row: np.ndarray, other: np.ndarray) -> bool:
    """Whether ``other`` is the (nearly) tied candidate kept instead of ``row``, by NMS's
    order or at the max_det cut: the same class and score, another box (not the same box
    moved a little)."""
    shift = np.abs(row[:4] - other[:4]).max()
    return bool(other[5] == row[5] and abs(other[4] - row[4]) <= TIE and shift >= MIN_SHIFT_PX)
