"""Letterbox and canonical-to-original mapping: the coordinates a radiologist sees."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from classifier_service.ensemble import decide
from detector_service.yolo import letterbox_batch, letterbox_geometry, unletterbox_boxes
from gateway.pipeline.fusion import Box, apply_fusion, diagnose, to_original
from shared.geometry import canonical_to_original
from shared.settings import FusionMode


@pytest.mark.parametrize(("height", "width"), [(1024, 683), (683, 1024), (640, 640), (300, 1024), (1024, 17)])
def test_letterbox_round_trip(height: int, width: int) -> None:
    geometry = letterbox_geometry(height, width, 640)
    boxes = np.array([[0, 0, width, height], [width * 0.2, height * 0.3, width * 0.6, height * 0.9]])
    forward = boxes.copy()
    forward[:, [0, 2]] = forward[:, [0, 2]] * geometry.gain + geometry.left
    forward[:, [1, 3]] = forward[:, [1, 3]] * geometry.gain + geometry.top
    assert forward.max() <= 640 + 1e-6
    back = unletterbox_boxes(forward, geometry, height, width)
    np.testing.assert_allclose(back, boxes, atol=1e-6)


def test_letterbox_places_the_image_in_the_centre() -> None:
    image = np.full((1024, 512), 255, dtype=np.uint8)
    batch, (geometry,) = letterbox_batch([image], 640, torch.device("cpu"))
    assert batch.shape == (1, 3, 640, 640)
    assert (geometry.new_width, geometry.new_height, geometry.left, geometry.top) == (320, 640, 160, 0)
    assert batch[0, 0, 320, 320].item() == pytest.approx(1.0)
    assert batch[0, 0, 320, 10].item() == pytest.approx(114 / 255)


def test_canonical_boxes_map_to_original_pixels() -> None:
    box = Box(0, "x", 0.9, x1=68.3, y1=102.4, x2=683.0, y2=1024.0)
    mapped = to_original(box, scale_x=683 / 1000, scale_y=1024 / 1500, width=1000, height=1500)
    assert (mapped.x1, mapped.y1, mapped.x2, mapped.y2) == pytest.approx((100, 150, 1000, 1500))


def test_mapping_to_original_pixels_clips_to_the_image() -> None:
    mapped = canonical_to_original((-5.0, 10.0, 700.0, 1100.0), 683 / 1000, 1024 / 1500, 1000, 1500)
    assert mapped == pytest.approx((0.0, 10 * 1500 / 1024, 1000.0, 1500.0))


def test_diagnosis_threshold_is_strict() -> None:
    # The classifier service decides; the gateway only words its call.
    assert decide(np.array([0.449, 0.45]), 0.449).tolist() == [False, True]
    assert diagnose(False, 0.449) == ("Normal", pytest.approx(0.551))
    assert diagnose(True, 0.45) == ("Abnormal", 0.45)


def test_fusion_rules() -> None:
    boxes = [Box(0, "a", 0.3, 0, 0, 1, 1), Box(1, "b", 0.7, 0, 0, 1, 1)]
    assert apply_fusion(boxes, "Abnormal", FusionMode.PAPER, 0.5) == ([boxes[1], boxes[0]], 0)
    assert apply_fusion(boxes, "Normal", FusionMode.PAPER, 0.5) == ([boxes[1]], 1)
    assert apply_fusion(boxes, "Normal", FusionMode.SEED, 0.5) == ([], 2)
