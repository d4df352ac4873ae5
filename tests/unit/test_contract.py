"""The wire contract: facts survive encode -> decode, and a broken answer is named."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shared.bundle import BundleKind
from shared.contract import (
    ABNORMAL,
    ABNORMAL_PROBABILITY,
    CLASSIFIER_OUTPUTS,
    DETECTION_BOXES,
    IMAGE,
    MEMBER_PROBABILITIES,
    ClassifierFacts,
    ContractError,
    DetectorFacts,
    ServedFacts,
    check_classifier_outputs,
    check_detector_outputs,
    demo_warning,
    facts_from_config,
    model_configuration,
)


def _classifier() -> ClassifierFacts:
    return ClassifierFacts(
        name="tiny", kind=BundleKind.DEMO, threshold=0.449,
        members=["densenet121", "resnet50"], weights=[0.6, 0.4],
        checkpoints={"a/model_best.pth": "ab" * 32, "b/model_best.pth": "cd" * 32},
        device="cpu", backends={"densenet121": "onnx", "resnet50": "torch"},
    )


def _detector() -> DetectorFacts:
    return DetectorFacts(
        name="tiny", kind=BundleKind.USER, class_names={0: "Osteophytes", 2: "Disc space"},
        conf=0.25, iou=0.5, max_det=20, image_size=640, backend="torch",
        checkpoints={"best.pt": "ef" * 32}, device="cuda:0",
    )


@pytest.mark.parametrize("facts", [_classifier(), _detector()], ids=["classifier", "detector"])
def test_facts_survive_the_wire(facts: ServedFacts) -> None:
    parameters = facts.to_parameters()
    # OIP parameter values are scalars: structured facts travel as JSON text.
    assert all(isinstance(value, str | int | float | bool) for value in parameters.values())
    wire = json.loads(json.dumps({**parameters, "server_ms": 1.5}))  # extras are ignored
    assert type(facts).from_parameters(wire) == facts


@pytest.mark.parametrize("facts", [_classifier(), _detector()], ids=["classifier", "detector"])
def test_facts_decode_from_string_values_as_triton_writes_them(facts: ServedFacts) -> None:
    strings = {
        key: value if isinstance(value, str) else json.dumps(value)
        for key, value in facts.to_parameters().items()
    }
    assert type(facts).from_parameters(strings) == facts


def test_wire_keys_and_demo_flag() -> None:
    parameters = _classifier().to_parameters()
    assert parameters["bundle"] == "tiny" and parameters["bundle_kind"] == "demo"
    assert parameters["demo"] is True and parameters["threshold"] == 0.449
    assert json.loads(str(parameters["members"])) == ["densenet121", "resnet50"]
    assert _detector().to_parameters()["demo"] is False


def test_a_missing_threshold_is_an_error_not_a_default() -> None:
    parameters = _classifier().to_parameters()
    del parameters["threshold"]
    with pytest.raises(ContractError, match="threshold"):
        ClassifierFacts.from_parameters(parameters)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("threshold", "high", "threshold"),
        ("threshold", 1.5, "threshold"),
        ("members", "[densenet121", "not JSON"),
        ("weights", json.dumps([1.0]), "1 weights for 2 members"),
        ("bundle_kind", "vendor", "bundle_kind"),
    ],
)
def test_ill_typed_classifier_facts_are_named(key: str, value: object, match: str) -> None:
    parameters = {**_classifier().to_parameters(), key: value}
    with pytest.raises(ContractError, match=match):
        ClassifierFacts.from_parameters(parameters)


def test_ill_typed_detector_facts_are_named() -> None:
    parameters = {**_detector().to_parameters(), "class_names": json.dumps({"x": "y"})}
    with pytest.raises(ContractError, match="class_names"):
        DetectorFacts.from_parameters(parameters)
    del parameters["conf"]
    with pytest.raises(ContractError, match="conf"):
        DetectorFacts.from_parameters(parameters)


def test_one_demo_warning_per_kind() -> None:
    assert demo_warning(BundleKind.USER) is None
    assert demo_warning("untrained") == (
        "UNTRAINED model bundle (random weights): these results are meaningless."
    )
    assert _classifier().demo_warning == demo_warning(BundleKind.DEMO)


def _classifier_outputs() -> dict[str, np.ndarray]:
    return {
        "abnormal_probability": np.array([[0.7]], np.float32),
        "member_probabilities": np.array([[0.6, 0.8]], np.float32),
        "abnormal": np.array([[True]]),
    }


def _detector_outputs() -> dict[str, np.ndarray]:
    boxes = np.zeros((1, 3, 4), np.float32)
    boxes[0, 0] = [10, 20, 50, 60]
    return {
        "num_detections": np.array([[1]], np.int32),
        "detection_boxes": boxes,
        "detection_scores": np.array([[0.9, 0, 0]], np.float32),
        "detection_classes": np.array([[2, -1, -1]], np.int32),
    }


def test_valid_answers_pass_the_checks() -> None:
    check_classifier_outputs(_classifier_outputs(), _classifier(), images=1)
    check_detector_outputs(_detector_outputs(), _detector(), images=1, height=100, width=80)


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("abnormal_probability", np.array([[np.nan]], np.float32), "not finite"),
        ("abnormal_probability", np.array([[1.5]], np.float32), r"outside \[0, 1\]"),
        ("abnormal_probability", np.array([[0.5, 0.5]], np.float32), "shape"),
        ("abnormal_probability", np.array([[0.5]], np.float64), "datatype FP64"),
        ("member_probabilities", np.array([[0.5]], np.float32), "shape"),
        ("abnormal", np.array([[1.0]], np.float32), "datatype"),
        ("abnormal", None, "missing"),
    ],
)
def test_classifier_garbage_is_named(name: str, value: np.ndarray | None, match: str) -> None:
    outputs = _classifier_outputs()
    if value is None:
        del outputs[name]
    else:
        outputs[name] = value
    with pytest.raises(ContractError, match=match):
        check_classifier_outputs(outputs, _classifier(), images=1)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda o: o["detection_boxes"].__setitem__((0, 0, 2), np.inf), "not finite"),
        (lambda o: o["detection_boxes"].__setitem__((0, 0, 0), 70), "x1 > x2"),
        (lambda o: o["detection_boxes"].__setitem__((0, 0, 3), 500), "outside"),
        (lambda o: o["detection_scores"].__setitem__((0, 0), 1.01), r"outside \[0, 1\]"),
        (lambda o: o["detection_classes"].__setitem__((0, 0), 5), "unknown class"),
        (lambda o: o["num_detections"].__setitem__((0, 0), 4), "boxes"),
        (lambda o: o.__setitem__("detection_boxes", np.zeros((1, 3, 3), np.float32)), "shape"),
    ],
)
def test_detector_garbage_is_named(change: object, match: str) -> None:
    outputs = _detector_outputs()
    change(outputs)  # type: ignore[operator]
    with pytest.raises(ContractError, match=match):
        check_detector_outputs(outputs, _detector(), images=1, height=100, width=80)


def test_padding_rows_are_not_checked() -> None:
    outputs = _detector_outputs()
    outputs["detection_boxes"][0, 2] = np.nan  # past num_detections: padding
    check_detector_outputs(outputs, _detector(), images=1, height=100, width=80)


def test_a_missing_threshold_is_never_defaulted() -> None:
    parameters = _classifier().to_parameters()
    del parameters["threshold"]
    with pytest.raises(ContractError, match="threshold"):
        ClassifierFacts.from_parameters(parameters)


# --- facts as Triton model configuration -------------------------------------------------


@pytest.mark.parametrize("facts", [_classifier(), _detector()], ids=["classifier", "detector"])
def test_facts_survive_the_model_configuration(facts: ServedFacts) -> None:
    parameters = facts.to_config_parameters()
    assert set(parameters) == set(facts.to_parameters())  # the same keys as the OIP form
    assert all(list(value) == ["string_value"] for value in parameters.values())
    assert all(isinstance(value["string_value"], str) for value in parameters.values())
    wire = json.loads(json.dumps(parameters))
    assert type(facts).from_config_parameters(wire) == facts


def test_config_values_are_plain_text_or_json() -> None:
    parameters = _classifier().to_config_parameters()
    assert parameters["bundle"] == {"string_value": "tiny"}  # a string is not JSON-quoted
    assert parameters["threshold"] == {"string_value": "0.449"}
    assert parameters["demo"] == {"string_value": "true"}
    assert json.loads(parameters["members"]["string_value"]) == ["densenet121", "resnet50"]
    assert json.loads(_detector().to_config_parameters()["class_names"]["string_value"]) == {
        "0": "Osteophytes", "2": "Disc space",
    }


def test_a_missing_config_threshold_raises_and_is_never_defaulted() -> None:
    parameters = _classifier().to_config_parameters()
    del parameters["threshold"]
    with pytest.raises(ContractError, match="threshold"):
        ClassifierFacts.from_config_parameters(parameters)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (0.449, "string_value"),  # an OIP scalar where Triton writes a string_value
        ({"int64_value": 1}, "string_value"),
        ({"string_value": 0.449}, "string_value"),
        ({"string_value": "high"}, "threshold"),
        ({"string_value": "1.5"}, "threshold"),
    ],
)
def test_ill_typed_config_parameters_are_named(value: object, match: str) -> None:
    parameters: dict[str, object] = {**_classifier().to_config_parameters(), "threshold": value}
    with pytest.raises(ContractError, match=match):
        ClassifierFacts.from_config_parameters(parameters)


def test_foreign_config_parameters_are_left_alone() -> None:
    parameters: dict[str, object] = {
        **_detector().to_config_parameters(),
        "EXECUTION_ENV_PATH": {"string_value": "$$TRITON_MODEL_DIRECTORY/env"},
        "something_else": 3,
    }
    assert DetectorFacts.from_config_parameters(parameters) == _detector()
    with pytest.raises(ContractError, match="parameters"):
        DetectorFacts.from_config_parameters(None)  # type: ignore[arg-type]


def _classifier_config() -> dict[str, object]:
    outputs = [
        ABNORMAL_PROBABILITY.metadata(), MEMBER_PROBABILITIES.metadata(columns=2),
        ABNORMAL.metadata(),
    ]
    return model_configuration(
        "spine-classifier", inputs=[IMAGE.metadata()], outputs=outputs,
        parameters=_classifier().to_config_parameters(), max_batch_size=8,
        max_queue_delay_us=5000,
    )


def test_model_configuration_is_tritons_json_form() -> None:
    config = _classifier_config()
    assert config["max_batch_size"] == 8
    assert config["input"] == [{"name": "IMAGE", "data_type": "TYPE_UINT8", "dims": [1, -1, -1]}]
    assert config["output"] == [
        {"name": "abnormal_probability", "data_type": "TYPE_FP32", "dims": [1]},
        {"name": "member_probabilities", "data_type": "TYPE_FP32", "dims": [2]},
        {"name": "abnormal", "data_type": "TYPE_BOOL", "dims": [1]},
    ]
    assert config["dynamic_batching"] == {"max_queue_delay_microseconds": 5000}
    assert DETECTION_BOXES.config() == {
        "name": "detection_boxes", "data_type": "TYPE_FP32", "dims": [-1, 4],
    }
    facts = facts_from_config(
        config, ClassifierFacts, model="spine-classifier", outputs=CLASSIFIER_OUTPUTS
    )
    assert facts == _classifier()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda c: c.__setitem__("name", "other"), "'other', not 'spine-classifier'"),
        (lambda c: c["output"].pop(2), "no 'abnormal'"),
        (lambda c: c["output"][2].__setitem__("data_type", "TYPE_FP32"), "TYPE_FP32, not TYPE_BOOL"),
        (lambda c: c["input"][0].__setitem__("data_type", "TYPE_FP32"), "IMAGE"),
        (lambda c: c.pop("parameters"), "no parameters map"),
        (lambda c: c["parameters"].pop("members"), "members"),
    ],
)
def test_a_config_off_the_contract_is_named(change: object, match: str) -> None:
    config = _classifier_config()
    change(config)  # type: ignore[operator]
    with pytest.raises(ContractError, match=match):
        facts_from_config(
            config, ClassifierFacts, model="spine-classifier", outputs=CLASSIFIER_OUTPUTS
        )
