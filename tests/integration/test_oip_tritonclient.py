"""Triton's own HTTP client (code this project did not write) against our model services."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as triton

pytestmark = pytest.mark.timeout(120)


def _client(url: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=url.removeprefix("http://"))


def _image(height: int = 300, width: int = 200) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(2, 1, height, width), dtype=np.uint8)


def test_classifier_speaks_oip_with_binary_tensors(stack) -> None:
    client = _client(stack.classifier)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("spine-classifier")
    metadata = client.get_model_metadata("spine-classifier")
    assert metadata["inputs"][0]["name"] == "IMAGE"
    assert {o["name"] for o in metadata["outputs"]} == {
        "abnormal_probability", "member_probabilities", "abnormal",
    }
    image = triton.InferInput("IMAGE", [2, 1, 300, 200], "UINT8")
    image.set_data_from_numpy(_image(), binary_data=True)
    outputs = [
        triton.InferRequestedOutput("abnormal_probability", binary_data=True),
        triton.InferRequestedOutput("member_probabilities", binary_data=False),
    ]
    result = client.infer("spine-classifier", [image], outputs=outputs, request_id="tc-1")
    probability = result.as_numpy("abnormal_probability")
    members = result.as_numpy("member_probabilities")
    assert probability.shape == (2, 1) and probability.dtype == np.float32
    assert members.shape == (2, 3)
    assert np.all((probability >= 0) & (probability <= 1))
    assert result.get_response()["id"] == "tc-1"


def test_detector_speaks_oip_with_binary_tensors(stack) -> None:
    client = _client(stack.detector)
    assert client.is_model_ready("spine-detector")
    image = triton.InferInput("IMAGE", [2, 1, 300, 200], "UINT8")
    image.set_data_from_numpy(_image(), binary_data=True)
    result = client.infer("spine-detector", [image])
    count = result.as_numpy("num_detections")
    boxes = result.as_numpy("detection_boxes")
    assert count.shape == (2, 1)
    assert boxes.shape[0] == 2 and boxes.shape[2] == 4
    valid = boxes[0, : count[0, 0]]
    assert np.all(valid[:, [0, 2]] <= 200) and np.all(valid[:, [1, 3]] <= 300)


def test_unknown_model_and_bad_tensor_are_client_errors(stack) -> None:
    client = _client(stack.classifier)
    with pytest.raises(triton.InferenceServerException):
        client.get_model_metadata("no-such-model")
    bad = triton.InferInput("IMAGE", [1, 3], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3), np.float32))
    with pytest.raises(triton.InferenceServerException, match="UINT8"):
        client.infer("spine-classifier", [bad])
