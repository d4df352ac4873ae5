"""The classifier's training-only lesion map: right place, flipped with the image, never saved."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from classifier_service.checkpoints import build_model
from training.canonical import CanonicalEntry, labelled_images
from training.datasets import Box, ImageRecord
from training.train_classifier import LesionMapHead, augment, lesion_maps


def _entry(width: int = 200, height: int = 400) -> CanonicalEntry:
    # an original of 1000 x 2000 pixels, canonical at a fifth of it
    return CanonicalEntry("img", "unused.png", width, height, 1000, 2000, 0.2, 0.2)


def test_boxes_land_in_the_resized_square_frame() -> None:
    record = ImageRecord(
        "img", Path("img.dicom"), boxes=[Box("Osteophytes", 100, 200, 600, 1000, "rad1")]
    )
    images = labelled_images([record], {"img": _entry()})
    assert images.labels.tolist() == [1.0]
    np.testing.assert_allclose(images.boxes[0], [[20, 40, 120, 200]])  # canonical pixels
    maps = lesion_maps(images, 100)
    # canonical 200 x 400 -> square 100: x * 0.5, y * 0.25
    expected = torch.zeros(100, 100)
    expected[10:50, 10:60] = 1
    assert torch.equal(maps[0, 0], expected)


def test_normal_images_have_empty_maps() -> None:
    images = labelled_images([ImageRecord("img", Path("img.dicom"))], {"img": _entry()})
    assert images.labels.tolist() == [0.0]
    assert lesion_maps(images, 64).sum() == 0


def test_augment_flips_image_and_map_together() -> None:
    batch = torch.zeros(64, 1, 8, 8)
    batch[:, :, :, :2] = 1.0  # a bright stripe on the left
    maps = (batch > 0).float()
    out, out_maps = augment(batch, maps, torch.Generator().manual_seed(0))
    flipped = out_maps[:, 0, 0, -1] == 1
    assert 10 < int(flipped.sum()) < 54  # about half are flipped
    # wherever the map went, the stripe went too (brightest columns = the map's columns)
    brightest = out.mean(dim=(1, 2)).argmax(dim=-1)
    assert torch.equal(brightest >= 4, flipped)


@pytest.mark.parametrize("arch", ["resnet10t", "mobilenetv3_small_050"])
def test_lesion_head_fits_the_member_and_stays_out_of_the_model(arch: str) -> None:
    model = build_model(arch, 1)
    head = LesionMapHead(model, 64)
    features = model.forward_features(torch.zeros(2, 3, 64, 64))
    maps = torch.zeros(2, 1, 64, 64)
    maps[0, 0, :16, :16] = 1
    loss = head.loss(features, maps)
    loss.backward()
    assert torch.isfinite(loss) and head.conv.weight.grad is not None
    assert not any(key.startswith("conv.") for key in model.state_dict() if "head" in key)
    assert set(model.state_dict()) == set(build_model(arch, 1).state_dict())
