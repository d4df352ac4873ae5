"""The demo bundle: phantoms -> trained ensemble + detector, reproducible from a seed.

``spine serve`` without ``--model-dir`` serves this bundle (built on first use into the
cache, or by ``spine demo-bundle``). It proves the pipeline end to end on synthetic
spines; its manifest says ``kind: demo`` so every response and page labels it as not a
medical model. Small archs keep the build within about 15 minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import torch
import yaml

from shared.bundle import BundleKind, MemberSpec
from training.build_meter import BuildMeter, TrainingCounter, files_counter
from training.canonical import canonical_images, labelled_images
from training.datasets import load_vindr, split_train_val
from training.detector_sweep import CONF_GRID, IOU_GRID, choose_point, sweep_detector, sweep_record
from training.phantoms import generate_phantoms
from training.train_classifier import (
    ClassifierTrainConfig,
    train_classifier,
    write_manifest_section,
)
from training.train_detector import (
    DEFAULT_CHECKPOINT,
    DetectorTrainConfig,
    epochs_done,
    train_detector,
    write_yolo_dataset,
)

DEMO_SEED = 20261128
#: Bump when the recipe below changes, so a cached bundle built by an older one is rebuilt.
DEMO_RECIPE = 5
#: The file in the bundle that records the seeds and the choices made on validation.
RECIPE_FILE = "recipe.json"


def demo_members() -> list[MemberSpec]:
    """Two ResNet-10t members at different input sizes.

    Small enough to train from scratch on one CPU core while the detector uses the other;
    the sizes differ so the two see lesions at different scales (and disagree usefully).
    Measured on this project's 2-core machine, the mobile archs tried (LCNet,
    MobileNetV3, EfficientNet-B0, RegNetX) learned far slower from scratch in this budget.
    """
    return [
        MemberSpec(
            name=f"resnet10t_{size}",
            arch="resnet10t",
            weight=0.5,
            input_size=size,
            checkpoint=f"ensemble output/resnet10t_{size}/model_best.pth",
        )
        for size in (192, 160)
    ]


def demo_detector_config() -> DetectorTrainConfig:
    """YOLO11n at 320 px, tuned to learn from scratch in ~10 CPU minutes.

    320 px (not 640) quarters the cost per image and keeps the smallest lesions at about
    20 pixels; AdamW at 3e-3 with one warm-up epoch converges far faster than
    Ultralytics' cautious defaults for short runs; images are cached in RAM, and
    validation runs once, at the end.
    """
    return DetectorTrainConfig(
        model_yaml="yolo11n.yaml",
        epochs=12,
        image_size=320,
        batch_size=16,
        workers=1,
        threads=max(1, (os.cpu_count() or 2) // 2),  # the classifier gets the other half
        validate_each_epoch=False,
        hyperparameters={
            "optimizer": "AdamW",
            "lr0": 0.003,
            "warmup_epochs": 1,
            "close_mosaic": 3,
            "cache": "ram",
        },
    )


@dataclass(frozen=True)
class DemoConfig:
    seed: int = DEMO_SEED
    train_count: int = 600  # 480 train + 120 validation
    val_fraction: float = 0.2
    #: Explicit VR and RLE only: the same pixels as JPEG 2000 (all lossless) at a fraction
    #: of the encode/decode time, which goes to training instead. Test sets keep all three.
    train_encodings: tuple[str, ...] = ("explicit", "rle")
    classifier: ClassifierTrainConfig = field(
        default_factory=lambda: ClassifierTrainConfig(epochs=10)
    )
    detector: DetectorTrainConfig = field(default_factory=demo_detector_config)
    #: The detector's serving conf and NMS IoU are not fixed here: after training, the
    #: build scores this grid on the validation split and keeps the best point
    #: (``training.detector_sweep``; the grid and its scores go to ``recipe.json``).
    detector_conf_grid: tuple[float, ...] = CONF_GRID
    detector_iou_grid: tuple[float, ...] = IOU_GRID
    members: tuple[MemberSpec, ...] = field(default_factory=lambda: tuple(demo_members()))


def _detector_child(
    data_yaml: str, bundle_dir: str, config: DetectorTrainConfig, log_path: str
) -> None:
    """Child process: Ultralytics' output goes to a log so it cannot garble the bars."""
    with open(log_path, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        train_detector(Path(data_yaml), Path(bundle_dir), config)


class DetectorJob:
    """The detector trains in a process of its own while the classifier trains here.

    Ultralytics would train with cores - 1 threads (one on two cores) and leave the rest
    idle; side by side, each job gets its share of the cores and neither waits.
    """

    def __init__(self, data_yaml: Path, bundle_dir: Path, config: DetectorTrainConfig) -> None:
        self.bundle_dir = bundle_dir
        self.epochs = config.epochs
        self.log_path = bundle_dir / ".train" / "detector.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.process = get_context("spawn").Process(
            target=_detector_child,
            args=(str(data_yaml), str(bundle_dir), config, str(self.log_path)),
            name="demo-detector",
            daemon=True,
        )

    def start(self) -> None:
        self.process.start()

    def status(self) -> str:
        return f"detector epoch {epochs_done(self.bundle_dir)}/{self.epochs}"

    def wait(self, progress: bool) -> None:
        from tqdm import tqdm

        bar = tqdm(
            total=self.epochs,
            initial=epochs_done(self.bundle_dir),
            desc="detector",
            unit="epoch",
            disable=not progress,
        )
        while self.process.is_alive():
            self.process.join(timeout=2.0)
            bar.update(epochs_done(self.bundle_dir) - bar.n)
        bar.close()
        if self.process.exitcode != 0:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(
                f"detector training failed (exit {self.process.exitcode}); "
                f"log {self.log_path}:\n{tail}"
            )


def build_demo_bundle(
    out_dir: Path, config: DemoConfig | None = None, progress: bool = True,
    progress_file: Path | None = None,
) -> Path:
    """Build into ``out_dir.partial`` (resumable), then rename into place; with
    ``progress_file``, its progress goes there every few seconds (``spine serve``)."""
    with BuildMeter(progress_file) as meter:
        return _build(out_dir, config or DemoConfig(), progress, meter)


def _build(out_dir: Path, config: DemoConfig, progress: bool, meter: BuildMeter) -> Path:
    started = time.perf_counter()
    work = out_dir.with_name(out_dir.name + ".partial")
    work.mkdir(parents=True, exist_ok=True)
    data = work / ".train" / "phantoms"

    def stage(text: str) -> None:
        if progress:
            print(f"[demo-bundle {time.perf_counter() - started:6.0f} s] {text}", flush=True)

    meter.enter("generating phantoms",
                files_counter(data / "train_images", "*.dicom", config.train_count))
    if not (data / "annotations" / "train.csv").is_file():
        stage(f"generating {config.train_count} phantoms (seed {config.seed})")
        generate_phantoms(
            data,
            config.train_count,
            config.seed,
            "train",
            progress=progress,
            encodings=config.train_encodings,
        )
    records = load_vindr(data, "train")
    train_records, val_records = split_train_val(records, config.val_fraction, config.seed)
    stage("decoding canonical images with the gateway's decoder")
    meter.enter("decoding canonical images",
                files_counter(work / ".train" / "canonical", "*.png", len(records)))
    entries = canonical_images(records, work / ".train" / "canonical", progress=progress)

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

    training = TrainingCounter(
        config.classifier.epochs * len(config.members), config.detector.epochs,
        lambda: epochs_done(work), classifier_trained="classifier" in (existing or {}),
        detector_trained=(work / DEFAULT_CHECKPOINT).is_file(),
    )
    meter.enter("training the models", training, training.describe)
    detector_job = None
    if not (work / DEFAULT_CHECKPOINT).is_file():
        data_yaml = write_yolo_dataset(
            work / ".train" / "yolo",
            {"train": (train_records, entries), "val": (val_records, entries)},
        )
        detector_job = DetectorJob(data_yaml, work, config.detector)
        stage(f"training the detector in the background (log: {detector_job.log_path})")
        detector_job.start()
    try:
        if "classifier" not in (existing or {}):
            stage("training the classifier ensemble")
            cores = os.cpu_count() or 2
            torch.set_num_threads(max(1, cores - (config.detector.threads or 1)))

            def share_cores() -> None:  # the detector's core is free once it is done
                training.epoch_started()
                if detector_job is None or not detector_job.process.is_alive():
                    torch.set_num_threads(cores)

            train_classifier(
                list(config.members),
                work,
                labelled_images(train_records, entries),
                labelled_images(val_records, entries),
                config.classifier,
                on_epoch_start=share_cores,
            )
            training.classifier_done()
        if detector_job is not None:
            stage(f"waiting for the detector ({detector_job.status()})")
            detector_job.wait(progress)
    finally:
        if detector_job is not None and detector_job.process.is_alive():
            detector_job.process.terminate()
    meter.enter("choosing the detector's operating point")
    if not (work / RECIPE_FILE).is_file():
        stage(f"choosing the detector's conf and NMS IoU on {len(val_records)} validation images")
        detector_section = {
            "checkpoint": DEFAULT_CHECKPOINT,
            "image_size": config.detector.image_size,
            "conf": min(config.detector_conf_grid),
            "iou": max(config.detector_iou_grid),
            "max_det": 300,
        }
        write_manifest_section(work, "detector", detector_section)
        sweep = sweep_detector(
            work, val_records, entries, config.detector_conf_grid, config.detector_iou_grid
        )
        chosen = choose_point(sweep.points)
        write_manifest_section(
            work, "detector", {**detector_section, "conf": chosen.conf, "iou": chosen.iou}
        )
        record = {
            "seeds": {
                "phantoms": config.seed,
                "train_images": len(train_records),
                "validation_images": len(val_records),
                "split": f"split_train_val(val_fraction={config.val_fraction}, "
                f"seed={config.seed}), grouped by study",
            },
            "classifier": {
                "chosen_on": "validation",
                "rule": "each member's best epoch and the ensemble weights (0.05 simplex grid) "
                "by validation AUROC; the threshold is Youden's J on validation",
                "threshold": sweep.classifier_threshold,
                "validation_auroc": sweep.classifier_auroc,
            },
            "detector": sweep_record(sweep, chosen, len(val_records)),
        }
        (work / RECIPE_FILE).write_text(json.dumps(record, indent=2) + "\n")
        stage(
            f"detector conf {chosen.conf}, NMS IoU {chosen.iou}: "
            f"validation mAP50 {chosen.map50:.3f}"
        )
    shutil.rmtree(work / ".train", ignore_errors=True)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    work.rename(out_dir)
    stage(f"demo bundle ready in {out_dir}")
    return out_dir
