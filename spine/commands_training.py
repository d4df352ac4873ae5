"""`spine phantoms | samples | train | evaluate | demo-bundle`: data, training, evaluation."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shared.settings import CliSettings


def cmd_phantoms(args: argparse.Namespace, _settings: CliSettings) -> int:
    from training.phantoms import generate_phantoms

    out = generate_phantoms(Path(args.out), args.count, args.seed, args.split)
    print(f"wrote {args.count} phantoms to {out}")
    return 0


def cmd_samples(args: argparse.Namespace, _settings: CliSettings) -> int:
    from training.samples import SYNTHETIC_NOTE, write_samples

    out = Path(args.out)
    for sample in write_samples(out):
        kinds = ", ".join(sorted({f.lesion_type for f in sample.findings}))
        print(f"{out / sample.file}  {sample.label}" + (f" ({kinds})" if kinds else ""))
    print(f"truth: {out / 'truth.json'}. {SYNTHETIC_NOTE}")
    print(f"try one: curl -F \"file=@{out / sample.file}\" http://127.0.0.1:8000/upload")
    return 0


def cmd_train(args: argparse.Namespace, settings: CliSettings) -> int:
    from shared.bundle import load_manifest
    from shared.paths import prepare_ultralytics_env
    from training.canonical import canonical_images, labelled_images
    from training.datasets import load_vindr, split_train_val
    from training.train_classifier import ClassifierTrainConfig, train_classifier
    from training.train_detector import DetectorTrainConfig, train_detector, write_yolo_dataset

    bundle = Path(args.out)
    bundle.mkdir(parents=True, exist_ok=True)
    records = load_vindr(Path(args.data), "train")
    train, val = split_train_val(records, args.val_fraction, args.seed)
    entries = canonical_images(records, bundle / ".train" / "canonical")
    if args.what == "classifier":
        members = load_manifest(bundle).classifier.members if args.members_from_manifest else None
        if members is None:
            from training.demo_bundle import demo_members

            members = demo_members()

        config = ClassifierTrainConfig(
            epochs=args.epochs, batch_size=args.batch_size, seed=args.seed
        )
        train_classifier(
            members, bundle, labelled_images(train, entries), labelled_images(val, entries), config
        )
    else:
        prepare_ultralytics_env(settings)
        data_yaml = write_yolo_dataset(
            bundle / ".train" / "yolo", {"train": (train, entries), "val": (val, entries)}
        )
        config = DetectorTrainConfig(
            model_yaml=args.yolo,
            epochs=args.epochs,
            image_size=args.imgsz,
            batch_size=args.batch_size,
            seed=args.seed,
        )
        print(f"best.pt -> {train_detector(data_yaml, bundle, config)}")
    return 0


def cmd_evaluate(args: argparse.Namespace, _settings: CliSettings) -> int:
    from shared.paths import prepare_ultralytics_env
    from shared.settings import ModelServerSettings
    from spine.config import read_settings
    from training.evaluate import evaluate

    model_settings = None
    if args.model_dir:  # the models run in this process: configured as a model service
        model_settings = read_settings(ModelServerSettings)
        prepare_ultralytics_env(model_settings)
    report = evaluate(
        Path(args.data),
        Path(args.out),
        split=args.split,
        gateway=args.gateway,
        model_dir=Path(args.model_dir) if args.model_dir else None,
        model_settings=model_settings,
        concurrency=args.concurrency,
        dicom_out=Path(args.dicom_out) if args.dicom_out else None,
    )
    print(
        f"AUROC {report['auroc']:.4f}  mAP50 {report['map50']:.4f}  mAP50-95 "
        f"{report['map50_95']:.4f}  -> {args.out}/report.md"
    )
    return 0


def cmd_demo_bundle(args: argparse.Namespace, settings: CliSettings) -> int:
    from shared.paths import prepare_ultralytics_env
    from spine.bundles import ensure_demo_bundle

    progress_file = Path(args.progress_file) if args.progress_file else None
    if args.out:
        from training.demo_bundle import build_demo_bundle

        prepare_ultralytics_env(settings)
        build_demo_bundle(Path(args.out), progress_file=progress_file)
    else:
        print(ensure_demo_bundle(settings, progress_file=progress_file))
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this module's subcommands to the ``spine`` parser."""
    phantoms = sub.add_parser("phantoms", help="write synthetic spine radiographs + VinDr CSV")
    phantoms.add_argument("--out", required=True, help="dataset folder (VinDr-SpineXR layout)")
    phantoms.add_argument("--count", type=int, default=100, help="number of images")
    phantoms.add_argument("--seed", type=int, default=0,
                          help="output is a function of (seed, split, index)")
    phantoms.add_argument("--split", default="train", choices=["train", "test"],
                          help="writes <split>_images/ and annotations/<split>.csv")
    phantoms.set_defaults(func=cmd_phantoms)

    samples = sub.add_parser(
        "samples", help="write 4 synthetic sample DICOMs (2 normal, 2 abnormal) + truth.json"
    )
    samples.add_argument("--out", default="samples", help="folder (created)")
    samples.set_defaults(func=cmd_samples)

    train = sub.add_parser("train", help="train the classifier members or the detector")
    train.add_argument("what", choices=["classifier", "detector"], help="which models to train")
    train.add_argument("--data", required=True, help="VinDr-SpineXR layout (train split)")
    train.add_argument("--out", required=True, help="bundle folder (created/updated)")
    train.add_argument("--epochs", type=int, default=8, help="training epochs")
    train.add_argument("--batch-size", type=int, default=16, help="images per step")
    train.add_argument("--seed", type=int, default=0, help="seed of the split and the training")
    train.add_argument("--val-fraction", type=float, default=0.2,
                       help="share of studies held out to choose weights and threshold")
    train.add_argument(
        "--members-from-manifest",
        action="store_true",
        help="train the members the bundle's manifest names (default: demo archs)",
    )
    train.add_argument("--yolo", default="yolo11n.yaml", help="Ultralytics model yaml")
    train.add_argument("--imgsz", type=int, default=640, help="detector input size (pixels)")
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("evaluate", help="metrics of a bundle on a labelled set")
    evaluate.add_argument("--data", required=True, help="VinDr-SpineXR layout (real or phantoms)")
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--gateway", help="URL of a running gateway")
    source.add_argument("--model-dir", help="bundle folder, run in-process")
    evaluate.add_argument("--out", required=True, help="report folder (created)")
    evaluate.add_argument(
        "--split",
        help="annotations/<split>.csv to evaluate; without it: test if present, else the "
        "only split there is",
    )
    evaluate.add_argument("--concurrency", type=int, default=4,
                          help="uploads in flight (with --gateway)")
    evaluate.add_argument(
        "--dicom-out",
        help="also write each image's DICOM SR + presentation state here "
        "(<image_id>.sr.dcm, <image_id>.gsps.dcm; via /upload/dicom with --gateway)",
    )
    evaluate.set_defaults(func=cmd_evaluate)

    demo = sub.add_parser("demo-bundle", help="build (or find) the demo bundle")
    demo.add_argument("--out", help="build into this folder instead of the cache")
    demo.add_argument("--progress-file", help="write the build's progress (JSON: stage, "
                      "share done, time left) to this file every few seconds")
    demo.set_defaults(func=cmd_demo_bundle)


if __name__ == "__main__":
    sys.exit("use the `spine` command")
