"""The wire contract: facts survive encode -> decode, and a broken answer is named."""

from __future__ import annotations

import json

import pytest

from shared.bundle import BundleKind
from shared.contract import (
    ClassifierFacts,
    ContractError,
    DetectorFacts,
    ServedFacts,
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
