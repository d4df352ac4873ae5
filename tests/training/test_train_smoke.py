"""A 1-epoch training run writes a bundle the services load; evaluation reports on it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from shared.bundle import BundleKind, MemberSpec, load_manifest
from shared.settings import ModelServerSettings
from training.demo_bundle import DemoConfig, build_demo_bundle
from training.detector_sweep import CONF_GRID, IOU_GRID
from training.train_classifier import ClassifierTrainConfig, choose_weights
from training.train_detector import DetectorTrainConfig

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def smoke_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    members = (
        MemberSpec(name="a", arch="resnet10t", checkpoint="ensemble output/a/model_best.pth",
                   weight=1, input_size=64),
        MemberSpec(name="b", arch="mobilenetv3_small_050", checkpoint="ensemble output/b/model_best.pth",
                   weight=1, input_size=64),
    )
    config = DemoConfig(
        train_count=16,
        classifier=ClassifierTrainConfig(epochs=1, batch_size=8, progress=False),
        detector=DetectorTrainConfig(epochs=1, image_size=160, batch_size=8, workers=0, progress=False),
        members=members,
    )
    return build_demo_bundle(tmp_path_factory.mktemp("smoke") / "bundle", config, progress=False)


def test_the_bundle_is_labelled_demo_and_loads(smoke_bundle: Path) -> None:
    from classifier_service.model import ClassifierModel
    from detector_service.model import DetectorModel

    manifest = load_manifest(smoke_bundle)
    assert manifest.kind is BundleKind.DEMO
    assert [m.name for m in manifest.classifier.members] == ["a", "b"]
    assert abs(sum(m.weight for m in manifest.classifier.members) - 1) < 1e-3
    assert 0 <= manifest.classifier.threshold <= 1
    assert manifest.detector.image_size == 160
    assert not (smoke_bundle / ".train").exists()
    # The serving conf / NMS IoU were chosen by the validation sweep and recorded with it.
    recipe = json.loads((smoke_bundle / "recipe.json").read_text())
    chosen = recipe["detector"]["chosen"]
    assert recipe["detector"]["split"] == "validation"
    assert (manifest.detector.conf, manifest.detector.iou) == (chosen["conf"], chosen["iou"])
    assert len(recipe["detector"]["grid"]) == len(CONF_GRID) * len(IOU_GRID)
    assert recipe["seeds"]["validation_images"] > 0

    classifier = ClassifierModel(smoke_bundle, "cpu", settings=ModelServerSettings())
    classifier.load()
    detector = DetectorModel(smoke_bundle, "cpu", settings=ModelServerSettings())
    detector.load()
    image = np.random.default_rng(0).integers(0, 255, (400, 300), dtype=np.uint8)
    assert 0 <= classifier.predict_batch([image])[0]["abnormal_probability"][0] <= 1
    assert detector.class_names[0] == "Osteophytes" and len(detector.class_names) == 7
    detector.predict_batch([image])


def test_checkpoints_are_in_the_original_format(smoke_bundle: Path) -> None:
    import torch

    checkpoint = torch.load(smoke_bundle / "ensemble output/a/model_best.pth", map_location="cpu")
    assert {"epoch", "model_state_dict", "optimizer_state_dict"} <= set(checkpoint)


def test_evaluation_report_agrees_with_sklearn(smoke_bundle: Path, tmp_path: Path) -> None:
    from training.evaluate import evaluate
    from training.phantoms import generate_phantoms

    data = generate_phantoms(tmp_path / "test", 12, seed=99, split="test", progress=False)
    report = evaluate(data, tmp_path / "out", split="test", model_dir=smoke_bundle,
                      model_settings=ModelServerSettings(), progress=False)
    with (tmp_path / "out" / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    from training.datasets import load_vindr

    labels = {r.image_id: r.is_abnormal for r in load_vindr(data, "test")}
    y = [labels[row["image_id"]] for row in rows]
    scores = [float(row["abnormal_probability"]) for row in rows]
    if 0 < sum(y) < len(y):
        assert report["auroc"] == pytest.approx(roc_auc_score(y, scores), abs=0.005)
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    for key in ("auroc", "auroc_ci95", "at_bundle_threshold", "at_youden_threshold",
                "member_auroc", "map50", "map50_ci95", "map50_95", "per_class_ap50"):
        assert key in saved
    for name in ("roc.png", "pr.png", "detection_pr.png", "report.md", "detections.csv"):
        assert (tmp_path / "out" / name).is_file()


def test_weights_are_chosen_by_validation_auroc() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200).astype(bool)
    good = labels + rng.normal(0, 0.3, 200)
    noise = rng.normal(0, 1, 200)
    weights = choose_weights(np.stack([good, noise], axis=1), labels)
    assert weights[0] > weights[1] > 0
    assert weights.sum() == pytest.approx(1)


def test_a_failed_detector_run_stops_the_build_with_its_log(tmp_path: Path) -> None:
    from training.demo_bundle import DetectorJob

    data_yaml = tmp_path / "data.yaml"
    data_yaml.write_text("path: .\ntrain: images\nval: images\nnames: {0: a}\n")
    job = DetectorJob(data_yaml, tmp_path, DetectorTrainConfig(model_yaml="no-such-arch.yaml"))
    job.start()
    with pytest.raises(RuntimeError, match="detector training failed") as failure:
        job.wait(progress=False)
    assert "no-such-arch" in str(failure.value)  # the child's own error, from its log
    assert job.status() == "detector epoch 0/30"
