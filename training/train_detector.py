"""Train the YOLO detector with Ultralytics on canonical images (no downloads, no plots).

The detector service sees the canonical image (the gateway's decoder output), so the
YOLO dataset is written from the same canonical PNGs with boxes scaled into them.
Ultralytics' own trainer does the rest; ``best.pt`` carries the seven class names.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from shared.paths import keep_ultralytics_offline
from training.canonical import CanonicalEntry
from training.datasets import CLASS_NAMES, ImageRecord

DEFAULT_CHECKPOINT = "detection output/yolo11/weights/best.pt"


@dataclass(frozen=True)
class DetectorTrainConfig:
    model_yaml: str = "yolo11n.yaml"
    epochs: int = 30
    image_size: int = 640
    batch_size: int = 16
    seed: int = 0
    workers: int = 2
    progress: bool = True
    threads: int | None = None  # torch threads; None: Ultralytics' choice (cores - 1)
    validate_each_epoch: bool = True  # False: validate after the last epoch only
    #: Extra ``YOLO.train`` arguments (optimizer, lr0, mosaic, cache, ...); empty keeps
    #: Ultralytics' defaults, which suit real data on a GPU.
    hyperparameters: dict[str, Any] = field(default_factory=dict)


def yolo_label_lines(record: ImageRecord, entry: CanonicalEntry) -> list[str]:
    """``class cx cy w h`` normalised to the canonical image, one line per known box."""
    lines = []
    for box in record.boxes:
        if box.lesion_type not in CLASS_NAMES:
            continue
        x1, x2 = box.xmin * entry.scale_x, box.xmax * entry.scale_x
        y1, y2 = box.ymin * entry.scale_y, box.ymax * entry.scale_y
        cx, cy = (x1 + x2) / 2 / entry.width, (y1 + y2) / 2 / entry.height
        w, h = (x2 - x1) / entry.width, (y2 - y1) / entry.height
        if w > 0 and h > 0:
            lines.append(f"{box.class_id} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
    return lines


def write_yolo_dataset(
    root: Path,
    splits: dict[str, tuple[list[ImageRecord], dict[str, CanonicalEntry]]],
) -> Path:
    """Ultralytics' layout (images/<split>, labels/<split>) + data.yaml; returns the yaml."""
    for split, (records, entries) in splits.items():
        images = root / "images" / split
        labels = root / "labels" / split
        for folder in (images, labels):
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        for record in records:
            entry = entries[record.image_id]
            (images / f"{record.image_id}.png").symlink_to(Path(entry.png).resolve())
            (labels / f"{record.image_id}.txt").write_text(
                "\n".join(yolo_label_lines(record, entry))
            )
    data = {
        "path": str(root.resolve()),
        "train": "images/train",
        "val": "images/val",
        "names": dict(enumerate(CLASS_NAMES)),
    }
    data_yaml = root / "data.yaml"
    data_yaml.write_text(yaml.safe_dump(data, sort_keys=False))
    return data_yaml


def _set_threads(count: int) -> None:
    import torch

    torch.set_num_threads(count)


def epochs_done(bundle_dir: Path) -> int:
    """Epochs finished so far by a (possibly running) ``train_detector`` into this bundle."""
    results = bundle_dir / ".train" / "detector" / "train" / "results.csv"
    if not results.is_file():
        return 0
    return max(0, len(results.read_text().strip().splitlines()) - 1)


def train_detector(data_yaml: Path, bundle_dir: Path, config: DetectorTrainConfig) -> Path:
    """Train (or resume) and copy ``best.pt`` into the bundle; returns its path."""
    keep_ultralytics_offline()
    from ultralytics import YOLO

    run_root = bundle_dir / ".train" / "detector"
    last = run_root / "train" / "weights" / "last.pt"
    common = {"plots": False, "verbose": config.progress}
    model = YOLO(str(last) if last.is_file() else config.model_yaml)
    if config.threads:
        # Ultralytics resets torch's thread count when it picks the device; set ours after
        threads = config.threads
        model.add_callback("on_train_start", lambda _trainer: _set_threads(threads))
    if last.is_file():
        results = model.train(resume=True, **common)
    else:
        results = model.train(
            data=str(data_yaml),
            epochs=config.epochs,
            imgsz=config.image_size,
            batch=config.batch_size,
            workers=config.workers,
            device="cpu",
            seed=config.seed,
            deterministic=True,
            pretrained=False,
            amp=False,
            project=str(run_root),
            name="train",
            exist_ok=True,
            patience=1000,
            val=config.validate_each_epoch,
            **config.hyperparameters,
            **common,
        )
    best = run_root / "train" / "weights" / "best.pt"
    if not best.is_file():
        raise RuntimeError(f"detector training produced no best.pt ({results})")
    target = bundle_dir / DEFAULT_CHECKPOINT
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(best, target)
    return target
