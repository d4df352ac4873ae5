"""ROC and precision-recall figures for the evaluation report (PNG, headless matplotlib)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from numpy.typing import ArrayLike, NDArray  # noqa: E402

from training.metrics import average_precision, pr_curve, roc_auc, roc_curve  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def save_roc_png(
    path: Path,
    y_true: ArrayLike,
    scores: Mapping[str, ArrayLike],
    thresholds: Mapping[str, float] | None = None,
    title: str = "ROC",
) -> Path:
    """One ROC curve per score set (e.g. ensemble and members), AUROC in the legend.

    thresholds marks operating points ("bundle 0.449", "Youden ...") on the
    first curve, using the service's rule score > threshold.
    """
    fig, ax = plt.subplots(figsize=(5.5, 5))
    first: NDArray[np.float64] | None = None
    for name, s in scores.items():
        fpr, tpr, _ = roc_curve(y_true, s)
        ax.plot(
            fpr,
            tpr,
            lw=2 if first is None else 1.2,
            label=f"{name} (AUROC {roc_auc(y_true, s):.3f})",
        )
        if first is None:
            first = np.asarray(s, dtype=np.float64)
    y = np.asarray(y_true).astype(bool)
    for label, t in (thresholds or {}).items():
        if first is None:
            break
        pred = first > t
        tpr_t = (pred & y).sum() / max(y.sum(), 1)
        fpr_t = (pred & ~y).sum() / max((~y).sum(), 1)
        ax.plot([fpr_t], [tpr_t], "o", ms=7, label=f"{label} = {t:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set(
        xlabel="1 - specificity (FPR)",
        ylabel="sensitivity (TPR)",
        title=title,
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def save_pr_png(
    path: Path,
    y_true: ArrayLike,
    scores: Mapping[str, ArrayLike],
    title: str = "Precision-recall (Abnormal)",
) -> Path:
    """Image-level PR curves per score set, average precision in the legend, prevalence line."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, s in scores.items():
        precision, recall, _ = pr_curve(y_true, s)
        ax.step(
            recall, precision, where="post", label=f"{name} (AP {average_precision(y_true, s):.3f})"
        )
    prevalence = float(np.mean(np.asarray(y_true).astype(bool)))
    ax.axhline(prevalence, ls="--", c="grey", lw=0.8, label=f"prevalence {prevalence:.2f}")
    ax.set(xlabel="recall", ylabel="precision", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def save_detection_pr_png(
    path: Path,
    curves: Mapping[str, tuple[ArrayLike, ArrayLike]],
    ap50: Mapping[str, float | None] | None = None,
    title: str = "Detection precision-recall, IoU 0.5",
) -> Path:
    """Per-class detection PR curves, e.g. from metrics.detection_pr_curves, AP50 in the legend."""
    fig, ax = plt.subplots(figsize=(6, 5))
    for name, (recall, precision) in curves.items():
        ap = (ap50 or {}).get(name)
        label = f"{name} (AP50 {ap:.3f})" if ap is not None else name
        recall, precision = np.asarray(recall, float), np.asarray(precision, float)
        if precision.size == 0:  # ground truth but no detections: AP 0
            recall, precision = np.zeros(1), np.zeros(1)
        r = np.r_[0.0, recall]
        p = np.r_[precision[:1], precision]
        ax.step(r, p, where="pre", label=label)
    ax.set(xlabel="recall", ylabel="precision", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower left", fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)
