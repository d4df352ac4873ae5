from __future__ import annotations

from pathlib import Path

import pytest

from shared.bundle import BundleError, BundleKind, load_manifest


def test_default_manifest_is_the_original_layout(tmp_path: Path) -> None:
    manifest = load_manifest(tmp_path)
    members = {m.name: m for m in manifest.classifier.members}
    assert [m.arch for m in manifest.classifier.members] == ["densenet121", "resnet50", "tf_efficientnetv2_s"]
    assert [m.weight for m in manifest.classifier.members] == [0.42, 0.26, 0.32]
    assert [m.input_size for m in manifest.classifier.members] == [384, 224, 384]
    assert members["densenet121"].checkpoint == "ensemble output/densenet121_balanced/model_best.pth"
    assert manifest.classifier.threshold == 0.449
    assert manifest.detector.checkpoint == "detection output/yolo11/weights/best.pt"
    assert (manifest.detector.conf, manifest.detector.iou, manifest.detector.max_det) == (0.25, 0.7, 300)
    assert manifest.kind is BundleKind.USER


def test_manifest_overrides_only_what_it_names(tmp_path: Path) -> None:
    (tmp_path / "manifest.yaml").write_text(
        "name: mine\nclassifier:\n  threshold: 0.6\ndetector:\n  conf: 0.1\n"
    )
    manifest = load_manifest(tmp_path)
    assert manifest.name == "mine"
    assert manifest.classifier.threshold == 0.6
    assert len(manifest.classifier.members) == 3
    assert manifest.detector.conf == 0.1 and manifest.detector.iou == 0.7


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("classifier: [1, 2", "not valid YAML"),
        ("- a list", "mapping"),
        ("classifier:\n  threshold: 3\n", "invalid manifest"),
        ("classifier:\n  members: []\n", "at least one member"),
    ],
)
def test_bad_manifests_are_clear_errors(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "manifest.yaml").write_text(text)
    with pytest.raises(BundleError, match=match):
        load_manifest(tmp_path)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        load_manifest(tmp_path / "nope")
