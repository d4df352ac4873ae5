"""A bundle of randomly initialised models, for a stack that must come up with no weights.

It exists so ``spine serve`` works on a fresh machine before the trained demo bundle is
built: same archs, layout and checkpoint format as the original system, deterministic
seed, and ``kind: untrained`` in its manifest so every response says it means nothing.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
import yaml

from shared.bundle import DEFAULT_MANIFEST, BundleKind
from shared.paths import keep_ultralytics_offline
from training.datasets import CLASS_NAMES as VINDR_CLASSES


def save_classifier_checkpoint(model: torch.nn.Module, path: Path, epoch: int = 0) -> None:
    """The original training script's format: ``{'epoch', 'model_state_dict', ...}``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    torch.save(
        {
            "epoch": epoch,
            "model_state_dict": model.state_dict(),
            "optimizer_state_dict": optimizer.state_dict(),
        },
        path,
    )


def save_yolo_checkpoint(yaml_name: str, path: Path, class_names: tuple[str, ...]) -> None:
    """An Ultralytics ``best.pt`` built from a model yaml (no download), with class names."""
    keep_ultralytics_offline()
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel

    yolo = YOLO(yaml_name)
    yolo.model = DetectionModel(cfg=yolo.model.yaml, nc=len(class_names), verbose=False)
    yolo.model.names = dict(enumerate(class_names))
    path.parent.mkdir(parents=True, exist_ok=True)
    yolo.save(str(path))


def build_untrained_bundle(out_dir: Path, seed: int = 0, yolo_yaml: str = "yolo11n.yaml") -> Path:
    """Write the bundle atomically (a temp folder renamed into place) and return it."""
    import timm

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=out_dir.parent))
    try:
        torch.manual_seed(seed)
        members = DEFAULT_MANIFEST["classifier"]["members"]
        for member in members:
            model = timm.create_model(member["arch"], pretrained=False, num_classes=1)
            save_classifier_checkpoint(model, staging / member["checkpoint"])
        torch.manual_seed(seed)
        detector_path = staging / DEFAULT_MANIFEST["detector"]["checkpoint"]
        save_yolo_checkpoint(yolo_yaml, detector_path, VINDR_CLASSES)
        manifest = {
            "name": f"untrained-seed{seed}",
            "kind": BundleKind.UNTRAINED.value,
            "description": "Random weights (deterministic seed): proves the plumbing only.",
        }
        (staging / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out_dir
