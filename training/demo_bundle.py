"""The demo bundle: phantoms -> trained ensemble + detector, reproducible from a seed.

``spine serve`` without ``--model-dir`` serves this bundle (built on first use into the
cache, or by ``spine demo-bundle``). It proves the pipeline end to end on synthetic
spines; its manifest says ``kind: demo`` so every response and page labels it as not a
medical model. Small archs keep the build within about 15 minutes on 2 CPU cores.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from shared.bundle import BundleKind, MemberSpec
from training.canonical import canonical_images
from training.datasets import load_vindr, split_train_val
from training.phantoms import generate_phantoms
from training.train_classifier import ClassifierTrainConfig, train_classifier
from training.train_detector import (
    DEFAULT_CHECKPOINT,
    DetectorTrainConfig,
    train_detector,
    write_yolo_dataset,
)

DEMO_SEED = 20261128


def demo_members() -> list[MemberSpec]:
    """Three small, different archs (diversity is what an ensemble is for)."""
    return [
        MemberSpec(
            name="resnet10t",
            arch="resnet10t",
            weight=1.0,
            input_size=256,
            checkpoint="ensemble output/resnet10t/model_best.pth",
        ),
        MemberSpec(
            name="mobilenetv3",
            arch="mobilenetv3_small_100",
            weight=1.0,
            input_size=256,
            checkpoint="ensemble output/mobilenetv3_small_100/model_best.pth",
        ),
        MemberSpec(
            name="mobilenetv3_050",
            arch="mobilenetv3_small_050",
            weight=1.0,
            input_size=320,
            checkpoint="ensemble output/mobilenetv3_small_050/model_best.pth",
        ),
    ]


@dataclass(frozen=True)
class DemoConfig:
    seed: int = DEMO_SEED
    train_count: int = 320
    val_fraction: float = 0.2
    classifier: ClassifierTrainConfig = field(default_factory=ClassifierTrainConfig)
    detector: DetectorTrainConfig = field(default_factory=DetectorTrainConfig)
    members: tuple[MemberSpec, ...] = field(default_factory=lambda: tuple(demo_members()))


def build_demo_bundle(
    out_dir: Path, config: DemoConfig | None = None, progress: bool = True
) -> Path:
    """Build into ``out_dir.partial`` (resumable), then rename into place."""
    config = config or DemoConfig()
    started = time.perf_counter()
    work = out_dir.with_name(out_dir.name + ".partial")
    work.mkdir(parents=True, exist_ok=True)
    data = work / ".train" / "phantoms"

    def stage(text: str) -> None:
        if progress:
            print(f"[demo-bundle {time.perf_counter() - started:6.0f} s] {text}", flush=True)

    if not (data / "annotations" / "train.csv").is_file():
        stage(f"generating {config.train_count} phantoms (seed {config.seed})")
        generate_phantoms(data, config.train_count, config.seed, "train", progress=progress)
    records = load_vindr(data, "train")
    train_records, val_records = split_train_val(records, config.val_fraction, config.seed)
    stage("decoding canonical images with the gateway's decoder")
    entries = canonical_images(records, work / ".train" / "canonical", progress=progress)

    def arrays(subset: list) -> tuple[list, np.ndarray]:
        return [entries[r.image_id] for r in subset], np.array(
            [r.is_abnormal for r in subset], dtype=np.float64
        )

    manifest = {
        "name": f"demo-phantoms-seed{config.seed}",
        "kind": BundleKind.DEMO.value,
        "description": (
            "Trained by `spine demo-bundle` on synthetic spine phantoms. Proves the pipeline; "
            "NOT a medical model."
        ),
    }
    manifest_file = work / "manifest.yaml"
    existing = yaml.safe_load(manifest_file.read_text()) if manifest_file.is_file() else {}
    manifest_file.write_text(yaml.safe_dump({**(existing or {}), **manifest}, sort_keys=False))

    if "classifier" not in (existing or {}):
        stage("training the classifier ensemble")
        train_classifier(
            list(config.members),
            work,
            arrays(train_records),
            arrays(val_records),
            config.classifier,
        )
    if not (work / DEFAULT_CHECKPOINT).is_file():
        stage("training the detector")
        data_yaml = write_yolo_dataset(
            work / ".train" / "yolo",
            {"train": (train_records, entries), "val": (val_records, entries)},
        )
        train_detector(data_yaml, work, config.detector)
        from training.train_classifier import write_manifest_section

        write_manifest_section(
            work,
            "detector",
            {
                "checkpoint": DEFAULT_CHECKPOINT,
                "image_size": config.detector.image_size,
                "conf": 0.25,
                "iou": 0.7,
                "max_det": 300,
            },
        )
    shutil.rmtree(work / ".train", ignore_errors=True)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    work.rename(out_dir)
    stage(f"demo bundle ready in {out_dir}")
    return out_dir
