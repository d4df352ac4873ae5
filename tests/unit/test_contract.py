"""The wire contract: facts survive encode -> decode, and a broken answer is named."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shared.bundle import BundleKind
from shared.contract import (
    ClassifierFacts,
    ContractError,
    DetectorFacts,
    ServedFacts,
    check_classifier_outputs,
    check_detector_outputs,
    demo_warning,
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
