"""Hostile bundles: checkpoints load as data (weights_only + allow-list), never as code."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import torch

from classifier_service.checkpoints import load_classifier
from model_server.safe_load import (
    BENIGN_GLOBALS,
    CLASSIFIER,
    ULTRALYTICS,
    UnsafeCheckpointError,
    allowed_entries,
    safe_load,
)
from shared.bundle import CheckpointPins, check_pins, sha256_file
from tests.factories import TINY_TIMM_ARCH, TouchMarker, same_output, tiny_timm_classifier

ARCH = TINY_TIMM_ARCH
REPO = Path(__file__).resolve().parents[2]


class ExecMarker:
    """The same through ``builtins.exec`` (a different global: ``builtins``, not ``posix``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@dataclasses.dataclass
class TrainingConfig:
    """A benign class a training script might pickle, but not on the allow-list."""

    lr: float = 1e-4
    arch: str = ARCH


@pytest.fixture(scope="module")
def reference() -> torch.nn.Module:
    return tiny_timm_classifier()


def original_style(model: torch.nn.Module, **extra: object) -> dict[str, object]:
    """Like the original training script's checkpoint, with what real scripts add."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    return {
        "epoch": 17,
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        "best_auc": np.float64(0.9132),
        "best_epoch": np.int64(12),
        "val_history": np.array([0.7, 0.8, 0.91], dtype=np.float32),
        "dtype": np.dtype("float32"),
        "args": argparse.Namespace(
            arch=ARCH, lr=1e-4, batch_size=np.int64(32), output=Path("ensemble output/x"),
        ),
        **extra,
    }


def test_original_checkpoint_with_numpy_and_namespace_loads(reference, tmp_path: Path) -> None:
    path = tmp_path / "model_best.pth"
    torch.save(original_style(reference), path)
    assert same_output(load_classifier(path, ARCH, 1), reference)
    loaded = safe_load(path, CLASSIFIER)
    assert float(loaded["best_auc"]) == pytest.approx(0.9132)
    assert loaded["args"].output == PurePosixPath("ensemble output/x")  # pure: no file methods


@pytest.mark.parametrize(
    ("payload", "zipfile"), [(TouchMarker, True), (ExecMarker, True), (TouchMarker, False)]
)
def test_hostile_pth_is_refused_and_runs_nothing(
    payload, zipfile: bool, reference, tmp_path: Path
) -> None:
    marker = tmp_path / "MARKER"
    path = tmp_path / "model_best.pth"
    torch.save({"model_state_dict": reference.state_dict(), "x": payload(marker)}, path,
               _use_new_zipfile_serialization=zipfile)  # False: the legacy format
    with pytest.raises(UnsafeCheckpointError) as caught:
        load_classifier(path, ARCH, 1)
    message = str(caught.value)
    assert str(path) in message
    assert re.search(r"posix\.system|builtins\.exec", message)
    assert "spine convert-checkpoint" in message and "allow_unsafe_pickle_sha256" in message
    assert not marker.exists()


def _yolo_checkpoint(path: Path) -> Path:
    from training.datasets import CLASS_NAMES
    from training.untrained_bundle import save_yolo_checkpoint

    save_yolo_checkpoint("yolo11n.yaml", path, CLASS_NAMES)
    return path


@pytest.fixture(scope="module")
def yolo_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _yolo_checkpoint(tmp_path_factory.mktemp("yolo") / "best.pt")


def test_real_yolo11_checkpoint_loads_with_the_allow_list(yolo_pt: Path) -> None:
    from detector_service.yolo import load_yolo

    names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(yolo_pt)))
    entries, refused = allowed_entries(names, ULTRALYTICS)
    assert refused == [] and len(entries) == len(names)
    assert all(n.startswith(("torch.nn.modules.", "ultralytics.nn.")) for n in names)
    network, classes = load_yolo(yolo_pt)
    assert len(classes) == 7 and classes[2] == "Disc space narrowing"
    assert type(network).__name__ == "DetectionModel"


def test_hostile_ultralytics_pt_is_refused_and_runs_nothing(yolo_pt: Path, tmp_path: Path) -> None:
    from detector_service.yolo import load_yolo

    marker = tmp_path / "MARKER"
    checkpoint = safe_load(yolo_pt, ULTRALYTICS)
    checkpoint["date"] = TouchMarker(marker)
    path = tmp_path / "best.pt"
    torch.save(checkpoint, path)
    with pytest.raises(UnsafeCheckpointError, match=r"best\.pt.*posix\.system"):
        load_yolo(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "name",
    [
        "builtins.eval", "builtins.exec", "builtins.getattr", "os.system", "posix.system",
        "subprocess.Popen", "nt.system", "shutil.rmtree", "importlib.import_module",
        "ultralytics.nn.tasks.torch_safe_load",  # a function in an allowed module
        "ultralytics.nn.tasks.Path",  # a re-exported class
        "ultralytics.nn.autobackend.AutoBackend",  # loads other files in full
        "ultralytics.nn.tasks.WorldModel",  # downloads CLIP
        "torch.nn.modules.module.os", "timm.models.resnet.torch",  # modules, not classes
        "torch.load", "torch.hub.load",
    ],
)
def test_code_globals_are_never_admitted(name: str) -> None:
    for policy in (CLASSIFIER, ULTRALYTICS):
        entries, refused = allowed_entries([name], policy)
        assert refused == [name] and entries == []


def test_benign_table_holds_no_callable_beyond_value_constructors() -> None:
    for name in BENIGN_GLOBALS:
        assert name.split(".")[0] in {"numpy", "argparse", "types", "collections", "datetime",
                                      "builtins", "pathlib"}, name
    assert "builtins.eval" not in BENIGN_GLOBALS and "builtins.getattr" not in BENIGN_GLOBALS


def test_unlisted_benign_global_needs_conversion_or_trust(reference, tmp_path: Path) -> None:
    path = tmp_path / "model_best.pth"
    torch.save(original_style(reference, config=TrainingConfig()), path)
    with pytest.raises(UnsafeCheckpointError, match="TrainingConfig"):
        load_classifier(path, ARCH, 1)
    _, trusted = check_pins(path, CheckpointPins(allow_unsafe_pickle_sha256=sha256_file(path)))
    assert trusted and same_output(load_classifier(path, ARCH, 1, trusted=True), reference)


def test_convert_checkpoint_makes_an_unlisted_global_loadable(reference, tmp_path: Path) -> None:
    source = tmp_path / "model_best.pth"
    torch.save(original_style(reference, config=TrainingConfig()), source)
    target = tmp_path / "converted" / "model_best.pth"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "spine.cli", "convert-checkpoint", str(source), str(target)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "IN FULL" not in done.stderr  # read inertly: nothing to warn about
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(target)) == []
    assert same_output(load_classifier(target, ARCH, 1), reference)
    converted = torch.load(target, weights_only=True)
    assert converted["metadata"]["epoch"] == 17
    assert converted["metadata"]["best_auc"] == pytest.approx(0.9132)
    assert converted["metadata"]["args"]["batch_size"] == 32
    assert converted["converted_from"]["sha256"] == sha256_file(source)


def test_convert_checkpoint_of_an_ultralytics_pt_keeps_the_network(
    yolo_pt: Path, tmp_path: Path
) -> None:
    from detector_service.yolo import load_yolo
    from model_server.convert import convert_checkpoint

    target = tmp_path / "best-safe.pt"
    convert_checkpoint(yolo_pt, target)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(target)) == []
    original, names = load_yolo(yolo_pt)
    converted, converted_names = load_yolo(target)
    assert converted_names == names
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(original(x)[0], converted(x)[0], atol=1e-4)


@pytest.mark.parametrize(
    ("payload", "zipfile"), [(TouchMarker, True), (ExecMarker, True), (TouchMarker, False)]
)
def test_converting_or_trusting_a_hostile_checkpoint_runs_nothing(
    payload, zipfile: bool, reference, tmp_path: Path
) -> None:
    """The converter and the sha256 trust read weights inertly: the pickle's code never runs."""
    from model_server.convert import convert_checkpoint

    marker = tmp_path / "MARKER"
    source = tmp_path / "model_best.pth"
    torch.save({"model_state_dict": reference.state_dict(), "x": payload(marker)}, source,
               _use_new_zipfile_serialization=zipfile)
    target = tmp_path / "safe.pth"
    convert_checkpoint(source, target)
    assert not marker.exists()
    assert same_output(load_classifier(target, ARCH, 1), reference)
    _, trusted = check_pins(source, CheckpointPins(allow_unsafe_pickle_sha256=sha256_file(source)))
    assert trusted and same_output(load_classifier(source, ARCH, 1, trusted=True), reference)
    assert not marker.exists()


def test_product_code_never_unpickles_in_full() -> None:
    """``weights_only=False`` exists only in the convert-checkpoint module."""
    found = []
    for folder in ("classifier_service", "detector_service", "model_server", "shared", "gateway",
                   "spine"):
        for path in (REPO / folder).rglob("*.py"):
            if "weights_only=False" in path.read_text():
                found.append(str(path.relative_to(REPO)))
    assert found == ["model_server/convert.py"]


def test_an_allowed_class_called_as_a_function_is_refused(tmp_path: Path) -> None:
    """Allowing ``DetectionModel`` must not let a pickle call its constructor, whose cfg
    ``activation`` string Ultralytics evaluates: REDUCE on a policy class is refused."""
    from shared.paths import prepare_ultralytics_env
    from shared.settings import CommonSettings

    prepare_ultralytics_env(CommonSettings())
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load

    from detector_service.yolo import load_yolo

    marker = tmp_path / "MARKER"
    cfg = yaml_model_load("yolo11n.yaml")
    cfg["activation"] = f"__import__('os').system('touch {marker}') or __import__('torch').nn.SiLU()"

    class CallsTheConstructor:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (DetectionModel, (cfg,))

    path = tmp_path / "best.pt"
    torch.save({"model": CallsTheConstructor()}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"DetectionModel \(called with arguments"):
        load_yolo(path)
    assert not marker.exists()
