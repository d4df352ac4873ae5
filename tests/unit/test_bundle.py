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


@pytest.mark.parametrize(
    ("detector_path", "match"),
    [
        ("../x.pt", r"detector\.checkpoint[\s\S]*must not contain '\.\.'"),
        ("weights/../../x.pt", r"detector\.checkpoint[\s\S]*must not contain '\.\.'"),
        ("/etc/passwd", r"detector\.checkpoint[\s\S]*relative to the bundle folder"),
    ],
)
def test_checkpoint_paths_stay_inside_the_bundle(tmp_path: Path, detector_path: str, match: str) -> None:
    (tmp_path / "manifest.yaml").write_text(f"detector:\n  checkpoint: {detector_path!r}\n")
    with pytest.raises(BundleError, match=match):
        load_manifest(tmp_path)


@pytest.mark.parametrize("link", ["file", "folder"])
def test_a_symlink_out_of_the_bundle_is_refused(tmp_path: Path, link: str) -> None:
    from shared.bundle import resolve_checkpoint

    bundle, outside = tmp_path / "bundle", tmp_path / "outside"
    (outside / "w").mkdir(parents=True)
    (outside / "w" / "best.pt").write_bytes(b"x")
    (bundle / "d").mkdir(parents=True)
    if link == "file":
        (bundle / "d" / "best.pt").symlink_to(outside / "w" / "best.pt")
        relative = "d/best.pt"
    else:
        (bundle / "d" / "w").symlink_to(outside / "w")
        relative = "d/w/best.pt"
    (bundle / "manifest.yaml").write_text(f"detector:\n  checkpoint: {relative}\n")
    with pytest.raises(BundleError, match=r"detector\.checkpoint.*outside the bundle folder"):
        load_manifest(bundle)
    with pytest.raises(BundleError, match=r"member.*outside the bundle folder"):
        resolve_checkpoint(bundle, relative, "member")


def test_a_symlink_inside_the_bundle_is_fine(tmp_path: Path) -> None:
    from shared.bundle import resolve_checkpoint

    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "best.pt").write_bytes(b"x")
    (tmp_path / "link.pt").symlink_to(tmp_path / "real" / "best.pt")
    assert resolve_checkpoint(tmp_path, "link.pt") == (tmp_path / "real" / "best.pt").resolve()


def test_a_wrong_sha256_is_refused_naming_both_hashes(tmp_path: Path) -> None:
    from shared.bundle import CheckpointPins, check_pins, sha256_file

    path = tmp_path / "best.pt"
    path.write_bytes(b"weights")
    actual = sha256_file(path)
    assert check_pins(path, CheckpointPins(sha256=actual.upper())) == (actual, False)
    wrong = "0" * 64
    with pytest.raises(BundleError, match=rf"best\.pt.*detector\.checkpoint.*{wrong}.*{actual}"):
        check_pins(path, CheckpointPins(sha256=wrong), "detector.checkpoint")
    with pytest.raises(BundleError, match="trust was given to another file"):
        check_pins(path, CheckpointPins(allow_unsafe_pickle_sha256=wrong))


def test_sha256_pins_must_look_like_sha256(tmp_path: Path) -> None:
    (tmp_path / "manifest.yaml").write_text("detector:\n  sha256: abc\n")
    with pytest.raises(BundleError, match=r"detector\.sha256"):
        load_manifest(tmp_path)
