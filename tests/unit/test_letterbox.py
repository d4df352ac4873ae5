"""The detector's minimal-rectangle letterbox is Ultralytics' own: same input shape and
placement as ``LetterBox(auto=True)``, and the served boxes match Ultralytics' ``predict``
on the same checkpoint and image within 1 px (the ONNX graph and the torch path), but
where two overlapping boxes score within Ultralytics' own preprocessing difference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.dicoms import radiograph_pixels
from detector_service.letterbox import letterbox_geometry, letterbox_shape
from detector_service.model import DetectorModel
from shared.bundle import load_manifest, resolve_checkpoint
from shared.paths import prepare_ultralytics_env
from shared.settings import ModelServerSettings

SHAPES = [(2400, 1600), (1024, 670), (670, 1024), (512, 342), (640, 640), (300, 1024), (1024, 17)]


def test_the_shape_rule() -> None:
    assert letterbox_shape(2400, 1600, 640, 32) == (640, 448)  # the example
    assert letterbox_shape(1024, 670, 640, 32) == (640, 448)  # our canonical portrait
    assert letterbox_shape(1024, 670, 640) == (640, 640)  # no stride: the fixed square
    with pytest.raises(ValueError):
        letterbox_shape(0, 10, 640, 32)


@pytest.mark.parametrize(("height", "width"), SHAPES)
@pytest.mark.parametrize("auto", [True, False])
def test_geometry_is_ultralytics_letterbox(height: int, width: int, auto: bool) -> None:
    prepare_ultralytics_env(ModelServerSettings())
    from ultralytics.data.augment import LetterBox

    theirs = LetterBox(640, auto=auto, stride=32)
    params = theirs.get_params({"img": np.zeros((height, width, 3), np.uint8)}) if hasattr(
        theirs, "get_params") else None
    out = theirs(image=np.zeros((height, width, 3), np.uint8))
    mine = letterbox_geometry(height, width, 640, 32 if auto else None)
    assert (mine.input_height, mine.input_width) == out.shape[:2]
    if params is not None:
        assert (mine.new_width, mine.new_height) == tuple(params["new_unpad"])
        assert (mine.top, mine.left) == (params["top"], params["left"])


@pytest.fixture(scope="module")
def radiograph() -> np.ndarray:
    pixels = radiograph_pixels(512, 342, seed=11).astype(np.float64)
    return ((pixels - pixels.min()) / np.ptp(pixels) * 255).astype(np.uint8)


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_boxes_match_ultralytics_predict(tiny_bundle: Path, tmp_path: Path, radiograph,
                                         backend: str) -> None:
    prepare_ultralytics_env(ModelServerSettings())
    from ultralytics import YOLO

    settings = ModelServerSettings(model_backend=backend, spine_cache_dir=tmp_path,
                                   ort_threads=1, detector_letterbox="rect")
    model = DetectorModel(tiny_bundle, "cpu", 1, settings=settings)
    model.load()
    assert model.backend == backend and model.stride == 32
    spec = load_manifest(tiny_bundle).detector
    yolo = YOLO(str(resolve_checkpoint(tiny_bundle, spec.checkpoint)))
    result = yolo.predict(np.stack([radiograph] * 3, axis=-1), imgsz=spec.image_size,
                          conf=spec.conf, iou=spec.iou, max_det=spec.max_det, device="cpu",
                          verbose=False)[0]
    theirs = result.boxes.xyxy.numpy()
    assert result.orig_shape == radiograph.shape and len(theirs) > 0
    mine = model.predict_batch([radiograph, radiograph])  # one rectangle: one batch
    their_scores = result.boxes.conf.numpy()
    for answer in mine:
        assert len(answer["scores"]) == len(theirs)
        free = np.ones(len(theirs), dtype=bool)
        flipped = []
        for box, score in zip(answer["boxes"], answer["scores"], strict=True):
            distance = np.where(free, np.abs(theirs - box).max(axis=1), np.inf)
            match = int(np.argmin(distance))
            if distance[match] > 1.0:
                flipped.append((box, score))
                continue
            assert score == pytest.approx(their_scores[match], abs=1e-3)
            free[match] = False
        # Ultralytics resizes the uint8 image with OpenCV (scores move by ~1e-3): where two
        # overlapping boxes score within that, its NMS may keep the other one, and the
        # knock-on changes which box comes last within max_det.
        assert len(flipped) <= 2, flipped
        if flipped:
            box, score = flipped[0]
            assert any(_iou(box, theirs[i]) > spec.iou and abs(their_scores[i] - score) < 2e-3
                       for i in np.flatnonzero(free)), (box, score, theirs[free])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0
