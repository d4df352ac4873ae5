"""The issue's acceptance case: an original-layout folder (real archs, no manifest)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from pydicom.uid import JPEG2000Lossless

from shared.settings import ModelServerSettings
from tests.factories import make_dicom, radiograph_pixels
from tests.integration.stack import Stack, start_stack
from tests.integration.test_upload import _direct_member_probability, preview

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def original_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """densenet121 / resnet50 / tf_efficientnetv2_s in the original checkpoint format."""
    from training.untrained_bundle import build_untrained_bundle

    root = build_untrained_bundle(tmp_path_factory.mktemp("orig") / "bundle", seed=7)
    (root / "manifest.yaml").unlink()  # a user's folder has no manifest: defaults apply
    # Some users' checkpoints were saved from DataParallel: prefix one member's keys.
    path = root / "ensemble output/resnet50_optimized/model_best.pth"
    checkpoint = torch.load(path, map_location="cpu")
    checkpoint["model_state_dict"] = {
        f"module.{k}": v for k, v in checkpoint["model_state_dict"].items()
    }
    torch.save(checkpoint, path)
    return root


@pytest.fixture(scope="module")
def original_stack(original_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(original_folder, tmp_path_factory.mktemp("orig-stack"))
    yield running
    running.stop()


def test_mono1_j2k_dx_on_an_original_layout_folder(original_stack: Stack, original_folder: Path) -> None:
    pixels = radiograph_pixels(1600, 2400, bits=12, seed=11)
    data = make_dicom(4095 - pixels, photometric="MONOCHROME1", transfer_syntax=JPEG2000Lossless)
    response = httpx.post(
        f"{original_stack.gateway}/upload", files={"file": ("dx.dcm", data)}, timeout=300
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_bundle"]["name"] == "original-layout"
    assert body["threshold"] == pytest.approx(0.449)
    assert body["ensemble_weights"] == {"densenet121": 0.42, "resnet50": 0.26, "efficientnetv2": 0.32}
    assert body["image"]["canonical_width"] == 1024 and body["image"]["original_width"] == 2400

    canonical, _ = preview(original_stack.gateway, data)
    members = {
        "densenet121": ("densenet121", "ensemble output/densenet121_balanced/model_best.pth", 384),
        "efficientnetv2": (
            "tf_efficientnetv2_s", "ensemble output/tf_efficientnetv2_s_optimized/model_best.pth", 384,
        ),
    }
    for name, (arch, checkpoint, size) in members.items():
        direct = _direct_member_probability(original_folder / checkpoint, arch, size, canonical)
        assert body["ensemble_prediction"][name] == pytest.approx(direct, abs=1e-4)


def test_a_checkpoint_that_does_not_fit_is_a_clear_startup_error(
    original_folder: Path, tmp_path: Path
) -> None:
    from classifier_service.model import ClassifierModel

    broken = tmp_path / "broken"
    shutil.copytree(original_folder, broken)
    shutil.copy(
        broken / "ensemble output/resnet50_optimized/model_best.pth",
        broken / "ensemble output/densenet121_balanced/model_best.pth",
    )
    model = ClassifierModel(broken, "cpu", settings=ModelServerSettings())
    with pytest.raises(RuntimeError, match="densenet121_balanced/model_best.pth.*densenet121"):
        model.load()
