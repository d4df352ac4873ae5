"""The numpy runtime of the exported Triton models against the torch code it copies.

``spine/triton/spine_runtime.py`` runs inside tritonserver without torch; here, with
torch at hand, each of its steps is compared with our services' own: the antialiased
resize of the classifier, the letterbox of the detector, Ultralytics' NMS. Also the
exported ``config.pbtxt`` text (tensor shapes, batching, facts as parameters).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from classifier_service.ensemble import resize_square, to_device_batch
from detector_service.yolo import group_by_input_shape, letterbox_batch, postprocess
from shared import contract
from shared.bundle import BundleKind
from spine.triton import spine_runtime as rt
from spine.triton.export import ExportOptions, config_pbtxt

SHAPES = [(200, 136), (150, 210), (1024, 683), (64, 48), (33, 97), (96, 96)]


@pytest.mark.parametrize("size", [37, 64, 96, 224, 640])
def test_antialiased_resize_is_torchs(size: int) -> None:
    rng = np.random.default_rng(size)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in SHAPES]
    expected = resize_square(to_device_batch(images, torch.device("cpu")), size)[:, 0].numpy()
    for index, image in enumerate(images):
        actual = rt.resize(rt.to_unit(image), size, size, antialias=True)
        np.testing.assert_allclose(actual, expected[index], rtol=0, atol=2e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_bilinear_resize_is_torchs(shape: tuple[int, int]) -> None:
    image = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    tensor = torch.from_numpy(image).float().div_(255.0)[None, None]
    for height, width in ((640, 427), (97, 131), shape):
        expected = F.interpolate(tensor, size=(height, width), mode="bilinear",
                                 align_corners=False)[0, 0].numpy()
        actual = rt.resize(rt.to_unit(image), height, width, antialias=False)
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("stride", [None, 32])
def test_letterbox_is_the_detectors(stride: int | None) -> None:
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in SHAPES]
    runner = rt.DetectorRunner.__new__(rt.DetectorRunner)
    runner.size, runner.stride = 320, stride
    assert runner.groups(images) == group_by_input_shape(images, 320, stride)
    for group in runner.groups(images):
        members = [images[index] for index in group]
        expected, geometries = letterbox_batch(members, 320, torch.device("cpu"), stride)
        actual, mine = runner.letterbox(members)
        np.testing.assert_allclose(actual[:, 0], expected[:, 0].numpy(), rtol=0, atol=1e-6)
        for geometry, ours in zip(geometries, mine, strict=True):
            assert ours == (geometry.gain, geometry.left, geometry.top, geometry.new_width,
                            geometry.new_height, geometry.input_height, geometry.input_width)


def test_nms_is_ultralytics() -> None:
    """Distinct scores (ties are ordered by torch's unstable argsort, by index here)."""
    rng = np.random.default_rng(3)
    anchors, classes = 2000, 7
    centre = rng.uniform(0, 640, (2, anchors))
    size = rng.uniform(5, 120, (2, anchors))
    scores = rng.uniform(0, 0.6, (classes, anchors)) ** 2 * 2
    raw = np.concatenate([centre, size, scores])[None].astype(np.float32)
    for conf, iou, max_det in ((0.25, 0.7, 300), (0.1, 0.5, 20), (0.5, 0.3, 5)):
        expected = postprocess(torch.from_numpy(raw), conf=conf, iou=iou, max_det=max_det,
                               end2end=False)[0].numpy()
        actual = rt.non_max_suppression(raw, conf=conf, iou=iou, max_det=max_det,
                                        end2end=False)[0]
        assert actual.shape == expected.shape and len(actual)
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5)


def test_requests_with_bad_images_get_their_own_error() -> None:
    class Echo(rt.Runner):
        def run(self, images):  # type: ignore[no-untyped-def]
            return [{"rows": np.array([image.shape[0]], dtype=np.int32)} for image in images]

    answers = Echo().run_requests([
        np.zeros((2, 1, 20, 30), np.uint8), np.zeros((1, 1, 4, 4), np.uint8),
        np.zeros((1, 1, 10, 10), np.float32), np.zeros((1, 12, 12), np.uint8),
    ])
    assert answers[0]["rows"].tolist() == [[20], [20]]
    assert "too small" in answers[1] and "UINT8" in answers[2]
    assert answers[3]["rows"].tolist() == [[12]]


def test_config_pbtxt_has_our_tensors_batching_and_facts() -> None:
    facts = contract.DetectorFacts(
        name='quoted "bundle"', kind=BundleKind.USER, checkpoints={"best.pt": "ab" * 32},
        device="cpu", class_names={0: "Osteophytes"}, conf=0.25, iou=0.5, max_det=20,
        image_size=640, backend="onnx",
    )
    options = ExportOptions(max_batch_size=4, max_delay_ms=2.5, max_queue_size=16,
                            instance_kind="gpu", instances=2)
    text = config_pbtxt(contract.DETECTOR_MODEL, ["  { name: \"x\" }"],
                        facts.to_config_parameters(), options)
    assert 'name: "spine-detector"' in text and 'backend: "python"' in text
    assert "max_batch_size: 4" in text and "max_queue_delay_microseconds: 2500" in text
    assert "max_queue_size: 16" in text and "{ count: 2 kind: KIND_GPU }" in text
    assert 'dims: [ 1, -1, -1 ]' in text and "allow_ragged_batch: true" in text
    assert 'key: "bundle"\n  value: { string_value: "quoted \\"bundle\\"" }' in text
    assert 'key: "class_names"' in text and 'key: "max_det"' in text
