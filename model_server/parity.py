"""What an exported graph must prove before it is cached: the torch path's answers.

Every graph is run, at export, on fresh radiograph-like images of several shapes (drawn
anew each time, never fixed public inputs: a graph that imitates the model only on known
inputs fails) and compared with the torch path our services run on a GPU. Classifier:
member probabilities and scores within :data:`SCORE_ATOL`, decisions equal. Detector: the
same number of boxes per image, each matched to one of the same class with its score
within :data:`SCORE_ATOL` and its corners within :data:`BOX_ATOL_PX` (boxes of exactly
tied scores may be kept either way: :func:`match_detections`). A graph that does
not match is an :class:`~model_server.onnx_runtime.OnnxBackendError`, never an artefact.
"""

from __future__ import annotations

import numpy as np

SCORE_ATOL = 1e-4
BOX_ATOL_PX = 0.5
TIE = 1e-6  # scores this close are a tie for NMS's ordering
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


def _tied(rows: np.ndarray, scores: np.ndarray) -> bool:
    """Whether every row's score is shared with another row of its image (a tie)."""
    return all(np.sum(np.abs(scores - row[4]) <= TIE) >= 2 for row in rows)


def match_detections(expected: np.ndarray, actual: np.ndarray) -> dict[str, float] | str:
    """Rows ``(x1, y1, x2, y2, score, class)`` of one image matched one to one (greedy,
    expected rows by descending score): the largest box and score differences and the
    number of tie-broken rows, or the reason they do not match.

    Boxes whose scores are exactly tied can be kept either way by a greedy NMS (torch and
    ONNX Runtime order ties differently): rows left unmatched count as tie-broken when
    each is tied in its own answer and both sides' left-over scores agree.
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
    left, theirs = np.array(unmatched).reshape(-1, 6), actual[free]
    if len(left) and not (
        _tied(left, expected[:, 4]) and _tied(theirs, actual[:, 4])
        and np.allclose(np.sort(left[:, 4]), np.sort(theirs[:, 4]), rtol=0, atol=SCORE_ATOL)
    ):
        row = left[0]
        return (f"no box within {BOX_ATOL_PX} px and {SCORE_ATOL} in score for "
                f"{row[:4].round(1).tolist()} (score {row[4]:.5f}, class {int(row[5])})")
    return {"box": worst(box_diffs), "score": worst(score_diffs), "tie_broken": len(left)}
