"""Triton's own HTTP client (code this project did not write) against our model services."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as triton

from shared.contract import (
    CLASSIFIER_OUTPUTS,
    DETECTOR_OUTPUTS,
    ClassifierFacts,
    DetectorFacts,
    ServedFacts,
    TensorSpec,
    facts_from_config,
)

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


@pytest.mark.parametrize(
    ("service", "model", "facts_type", "outputs"),
    [
        ("classifier", "spine-classifier", ClassifierFacts, CLASSIFIER_OUTPUTS),
        ("detector", "spine-detector", DetectorFacts, DETECTOR_OUTPUTS),
    ],
)
def test_model_configuration_carries_the_bundle_facts(
    stack, service: str, model: str, facts_type: type[ServedFacts],
    outputs: tuple[TensorSpec, ...],
) -> None:
    client = _client(getattr(stack, service))
    config = client.get_model_config(model)  # Triton's model-configuration extension
    assert config["name"] == model and config["max_batch_size"] >= 1
    assert config["input"] == [{"name": "IMAGE", "data_type": "TYPE_UINT8", "dims": [1, -1, -1]}]
    assert [o["name"] for o in config["output"]] == [spec.name for spec in outputs]
    assert "max_queue_delay_microseconds" in config["dynamic_batching"]
    facts = facts_from_config(config, facts_type, model=model, outputs=outputs)
    assert facts == facts_type.from_parameters(client.get_model_metadata(model)["parameters"])
    if isinstance(facts, ClassifierFacts):
        members = next(o for o in config["output"] if o["name"] == "member_probabilities")
        assert members["dims"] == [len(facts.members)]
        assert 0 < facts.threshold < 1
    assert "model_configuration" in client.get_server_metadata()["extensions"]
    with pytest.raises(triton.InferenceServerException):
        client.get_model_config("no-such-model")


def test_unknown_model_and_bad_tensor_are_client_errors(stack) -> None:
    client = _client(stack.classifier)
    with pytest.raises(triton.InferenceServerException):
        client.get_model_metadata("no-such-model")
    bad = triton.InferInput("IMAGE", [1, 3], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3), np.float32))
    with pytest.raises(triton.InferenceServerException, match="UINT8"):
        client.infer("spine-classifier", [bad])
