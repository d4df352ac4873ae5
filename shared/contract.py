"""The wire contract between the gateway and the two model services (torch-free).

Model names, tensor names with their datatypes and shapes, and the bundle facts that
each model service reports (model metadata ``parameters`` and the model configuration)
are defined here once; the services encode facts with ``to_parameters`` /
``to_config_parameters`` and the gateway decodes them with ``facts_from_config``, so
neither side spells a key. Infer answers carry no facts: only their digest
(:attr:`ServedFacts.version`) as ``model_version``.

Encoding: OIP parameter values are bool, number or string, so scalar facts travel as
themselves and structured facts (lists, maps) as JSON text. The same facts are also the
``parameters`` of the model's Triton model configuration (``GET /v2/models/{name}/config``,
``config.pbtxt``), where every value is a ``{"string_value": text}``: the same keys, with
numbers, booleans, lists and maps as JSON text (:meth:`BundleFacts.to_config_parameters`,
:meth:`BundleFacts.from_config_parameters`). That is how a stock Triton serving an exported
repository reports them, so the gateway reads facts from the configuration, once per
replica. A missing or ill-typed fact is a :class:`ContractError` naming it: nothing is
defaulted on the receiving side.

The Normal/Abnormal decision is made once, by the classifier service next to its
bundle's threshold, and travels as the ``abnormal`` output; the gateway reads it.
"""

from __future__ import annotations

import hashlib
import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared import oip
from shared.bundle import BundleKind, is_demo

CLASSIFIER_MODEL = "spine-classifier"
DETECTOR_MODEL = "spine-detector"
# Triton's request parameter: the caller's remaining time in microseconds. The gateway
# sends it so that a model server drops an image whose caller has given up.
TIMEOUT_PARAMETER = "timeout"

DEMO_WARNINGS: dict[BundleKind, str] = {
    BundleKind.UNTRAINED: "UNTRAINED model bundle (random weights): these results are meaningless.",
    BundleKind.DEMO: "DEMO model bundle trained on synthetic phantoms: not a medical result.",
}

ParameterValue = str | int | float | bool
# Triton model-configuration parameters: ``{"key": {"string_value": "text"}}``.
ConfigParameters = dict[str, dict[str, str]]
# OIP tensor datatype -> Triton model-configuration data_type.
CONFIG_DATATYPES: dict[str, str] = {
    "BOOL": "TYPE_BOOL", "UINT8": "TYPE_UINT8", "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32", "UINT64": "TYPE_UINT64", "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16", "INT32": "TYPE_INT32", "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16", "FP32": "TYPE_FP32", "FP64": "TYPE_FP64", "BYTES": "TYPE_STRING",
}


def demo_warning(kind: BundleKind | str) -> str | None:
    """The warning every answer carries when the weights are not a real medical model."""
    return DEMO_WARNINGS.get(BundleKind(kind))


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the contract; ``-1`` is a dimension of any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def check(self, array: np.ndarray, *, rows: int, columns: int | None = None) -> None:
        """ContractError unless ``array`` has this datatype and shape, ``rows`` rows first.

        ``columns`` pins a variable last axis (the member count), as in :meth:`metadata`.
        """
        datatype = oip.datatype_of(array)
        if datatype != self.datatype:
            raise ContractError(f"{self.name}: datatype {datatype}, not {self.datatype}")
        wanted = list(self.shape)
        wanted[0] = rows
        if columns is not None:
            wanted[-1] = columns
        actual = list(array.shape)
        if len(actual) != len(wanted) or any(
            w not in (-1, a) for w, a in zip(wanted, actual, strict=True)
        ):
            raise ContractError(f"{self.name}: shape {actual}, not {wanted} (-1: any)")

    def metadata(self, *, columns: int | None = None) -> oip.TensorMetadata:
        """OIP tensor metadata; ``columns`` pins a variable last axis (member count)."""
        shape = list(self.shape)
        if columns is not None:
            shape[-1] = columns
        return oip.TensorMetadata(name=self.name, datatype=self.datatype, shape=shape)

    def config(self, *, columns: int | None = None) -> dict[str, Any]:
        """The Triton model-configuration entry (``input`` / ``output``), batch axis left out."""
        return config_tensor(self.metadata(columns=columns))


def config_tensor(metadata: oip.TensorMetadata) -> dict[str, Any]:
    """A tensor as Triton's model configuration writes it for ``max_batch_size > 0``:
    ``data_type`` ``TYPE_*`` and ``dims`` without the leading batch axis."""
    return {
        "name": metadata.name,
        "data_type": CONFIG_DATATYPES[metadata.datatype],
        "dims": list(metadata.shape[1:]),
    }


# Input of both models: the canonical grey image(s).
IMAGE = TensorSpec("IMAGE", "UINT8", (-1, 1, -1, -1))

# Classifier outputs, one row per image.
ABNORMAL_PROBABILITY = TensorSpec("abnormal_probability", "FP32", (-1, 1))
MEMBER_PROBABILITIES = TensorSpec("member_probabilities", "FP32", (-1, -1))  # columns: members
ABNORMAL = TensorSpec("abnormal", "BOOL", (-1, 1))  # the decision: score > threshold
CLASSIFIER_OUTPUTS = (ABNORMAL_PROBABILITY, MEMBER_PROBABILITIES, ABNORMAL)

# Detector outputs (Triton's NMS naming); rows past num_detections are padding.
NUM_DETECTIONS = TensorSpec("num_detections", "INT32", (-1, 1))
DETECTION_BOXES = TensorSpec("detection_boxes", "FP32", (-1, -1, 4))  # x1, y1, x2, y2
DETECTION_SCORES = TensorSpec("detection_scores", "FP32", (-1, -1))
DETECTION_CLASSES = TensorSpec("detection_classes", "INT32", (-1, -1))
DETECTOR_OUTPUTS = (NUM_DETECTIONS, DETECTION_BOXES, DETECTION_SCORES, DETECTION_CLASSES)


def names(specs: tuple[TensorSpec, ...]) -> list[str]:
    return [spec.name for spec in specs]


class ContractError(ValueError):
    """Parameters or tensors that break the contract: a fact missing or ill-typed, a
    tensor of the wrong shape, datatype or range."""


def _is_structured(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (list, dict, tuple)


class BundleFacts(BaseModel):
    """What the manifest says about the bundle: known before the checkpoints load."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    name: str = Field(alias="bundle")
    kind: BundleKind = Field(alias="bundle_kind")

    @property
    def demo(self) -> bool:
        """Anything but the user's own weights is labelled not-medical."""
        return is_demo(self.kind)

    @property
    def demo_warning(self) -> str | None:
        return demo_warning(self.kind)

    def to_parameters(self) -> dict[str, ParameterValue]:
        """OIP ``parameters``: scalars as themselves, lists and maps as JSON text."""
        encoded: dict[str, ParameterValue] = {}
        for key, value in self.model_dump(by_alias=True, mode="json").items():
            encoded[key] = json.dumps(value) if isinstance(value, list | dict) else value
        encoded["demo"] = self.demo  # derived from the kind; sent for plain OIP clients
        return encoded

    def to_config_parameters(self) -> ConfigParameters:
        """Triton model-configuration ``parameters``: the keys of :meth:`to_parameters`,
        each a ``{"string_value": text}``; strings as themselves, anything else as JSON."""
        return {
            key: {"string_value": value if isinstance(value, str) else json.dumps(value)}
            for key, value in self.to_parameters().items()
        }

    @classmethod
    def from_config_parameters(cls, parameters: Mapping[str, Any]) -> Self:
        """The facts from a model configuration's ``parameters``; ContractError if one of
        ours is missing, not a ``{"string_value": text}``, or ill-typed. Other keys (a
        Triton backend's own, e.g. ``EXECUTION_ENV_PATH``) are left alone."""
        if not isinstance(parameters, Mapping):
            raise ContractError(f"{cls.__name__}: model configuration has no parameters map")
        ours = {field.alias or name for name, field in cls.model_fields.items()} | {"demo"}
        flat: dict[str, str] = {}
        for key in ours & set(parameters):
            value = parameters[key]
            text = value.get("string_value") if isinstance(value, Mapping) else None
            if not isinstance(text, str):
                raise ContractError(
                    f"{cls.__name__}: config parameter {key!r} is not {{\"string_value\": text}}"
                )
            flat[key] = text
        return cls.from_parameters(flat)

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, Any]) -> Self:
        """The facts from OIP (or Triton string) parameters; ContractError if incomplete."""
        data = dict(parameters)
        for name, field in cls.model_fields.items():
            key = field.alias or name
            value = data.get(key)
            if isinstance(value, str) and _is_structured(field.annotation):
                try:
                    data[key] = json.loads(value)
                except ValueError as exc:
                    raise ContractError(f"{cls.__name__}: {key!r} is not JSON: {exc}") from exc
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
                for error in exc.errors()
            )
            raise ContractError(f"{cls.__name__}: {problems}") from exc


# How a replica serves its bundle, not what the bundle is: replicas of one model may differ
# here (a CPU and a GPU replica, ONNX Runtime and PyTorch) and still agree.
SERVING_FACTS = frozenset({"device", "backend", "backends"})


class ServedFacts(BundleFacts):
    """Facts every loaded model service reports: its checkpoints and device."""

    checkpoints: dict[str, str] = Field(description="checkpoint path -> sha256")
    device: str

    @property
    def version(self) -> str:
        """A digest of every fact: our services' model ``versions`` and infer answers'
        ``model_version``, so a client sees from one answer that the facts changed."""
        return facts_digest(self.to_parameters())

    def identity(self) -> dict[str, ParameterValue]:
        """The facts replicas of one model must share (all but :data:`SERVING_FACTS`)."""
        return {k: v for k, v in self.to_parameters().items() if k not in SERVING_FACTS}


def facts_digest(parameters: Mapping[str, ParameterValue]) -> str:
    text = json.dumps(dict(parameters), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ClassifierFacts(ServedFacts):
    """The ensemble as loaded: members in output column order, weights, threshold."""

    threshold: float = Field(ge=0, le=1, description="Abnormal iff score > threshold")
    members: list[str] = Field(min_length=1)
    weights: list[float]
    backends: dict[str, str] = Field(description="member -> torch | onnx")

    @model_validator(mode="after")
    def _one_weight_per_member(self) -> ClassifierFacts:
        if len(self.weights) != len(self.members):
            raise ValueError(f"{len(self.weights)} weights for {len(self.members)} members")
        return self


class DetectorFacts(ServedFacts):
    """The detector as loaded: its classes and the thresholds its boxes passed."""

    class_names: dict[int, str]
    conf: float = Field(ge=0, le=1)
    iou: float = Field(ge=0, le=1)
    max_det: int = Field(ge=1)
    image_size: int = Field(gt=0)
    backend: str


FactsT = typing.TypeVar("FactsT", bound=ServedFacts)


def model_configuration(
    name: str,
    *,
    inputs: list[oip.TensorMetadata],
    outputs: list[oip.TensorMetadata],
    parameters: ConfigParameters,
    max_batch_size: int,
    max_queue_delay_us: int,
    instance_kind: str = "KIND_CPU",
    platform: str = "",
    backend: str = "spine",
) -> dict[str, Any]:
    """``GET /v2/models/{name}/config`` as Triton answers it (the JSON form of
    ``config.pbtxt``), for a model that batches on the first axis of every tensor."""
    return {
        "name": name,
        "platform": platform,
        "backend": backend,
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": max_batch_size,
        "input": [config_tensor(item) for item in inputs],
        "output": [config_tensor(item) for item in outputs],
        "dynamic_batching": {"max_queue_delay_microseconds": max_queue_delay_us},
        "instance_group": [{"name": name, "kind": instance_kind, "count": 1}],
        "parameters": parameters,
    }


def facts_from_config(
    config: Mapping[str, Any], facts_type: type[FactsT], *, model: str,
    outputs: tuple[TensorSpec, ...],
) -> FactsT:
    """The facts in a model configuration, after checking that it describes ``model`` with
    the contract's input and ``outputs`` (names and data types). ContractError says what
    is off; nothing is defaulted."""
    if not isinstance(config, Mapping):
        raise ContractError("model configuration is not a JSON object")
    if config.get("name") != model:
        raise ContractError(f"model configuration is for {config.get('name')!r}, not {model!r}")
    for key, specs in (("input", (IMAGE,)), ("output", outputs)):
        entries = config.get(key)
        declared = {
            entry.get("name"): entry.get("data_type")
            for entry in entries if isinstance(entry, Mapping)
        } if isinstance(entries, list) else {}
        for spec in specs:
            wanted = CONFIG_DATATYPES[spec.datatype]
            if spec.name not in declared:
                raise ContractError(f"model configuration {key} has no {spec.name!r}")
            if (actual := declared[spec.name]) != wanted:
                raise ContractError(
                    f"model configuration {key} {spec.name!r} is {actual}, not {wanted}"
                )
    return facts_type.from_config_parameters(config.get("parameters"))


# How far outside the canonical image a box edge may be (float rounding of the mapping back
# from the letterboxed input), in canonical pixels.
BOX_TOLERANCE_PX = 1.0


def _probabilities(name: str, values: np.ndarray) -> None:
    if not np.all(np.isfinite(values)):
        raise ContractError(f"{name}: not finite (NaN or infinity)")
    if values.size and (values.min() < 0 or values.max() > 1):
        raise ContractError(f"{name}: outside [0, 1] ({values.min():.4g} .. {values.max():.4g})")


def check_classifier_outputs(
    outputs: Mapping[str, np.ndarray], facts: ClassifierFacts, *, images: int
) -> None:
    """ContractError unless the classifier's answer for ``images`` images is usable as is:
    one finite probability in [0, 1] per image and member, and one decision per image."""
    for spec in CLASSIFIER_OUTPUTS:
        if spec.name not in outputs:
            raise ContractError(f"{spec.name}: missing from the answer")
    ABNORMAL_PROBABILITY.check(outputs[ABNORMAL_PROBABILITY.name], rows=images)
    MEMBER_PROBABILITIES.check(
        outputs[MEMBER_PROBABILITIES.name], rows=images, columns=len(facts.members)
    )
    ABNORMAL.check(outputs[ABNORMAL.name], rows=images)
    _probabilities(ABNORMAL_PROBABILITY.name, outputs[ABNORMAL_PROBABILITY.name])
    _probabilities(MEMBER_PROBABILITIES.name, outputs[MEMBER_PROBABILITIES.name])


def check_detector_outputs(
    outputs: Mapping[str, np.ndarray], facts: DetectorFacts, *, images: int,
    height: int, width: int,
) -> None:
    """ContractError unless the detector's answer for ``images`` images of ``height`` x
    ``width`` canonical pixels is usable: per image a count within the padded rows and
    ``max_det``, and for each counted row a finite box with x1 <= x2 and y1 <= y2 inside
    the image, a score in [0, 1] and a known class id."""
    for spec in DETECTOR_OUTPUTS:
        if spec.name not in outputs:
            raise ContractError(f"{spec.name}: missing from the answer")
    counts = outputs[NUM_DETECTIONS.name]
    boxes = outputs[DETECTION_BOXES.name]
    NUM_DETECTIONS.check(counts, rows=images)
    DETECTION_BOXES.check(boxes, rows=images)
    width_k = boxes.shape[1]
    DETECTION_SCORES.check(outputs[DETECTION_SCORES.name], rows=images, columns=width_k)
    DETECTION_CLASSES.check(outputs[DETECTION_CLASSES.name], rows=images, columns=width_k)
    known = set(facts.class_names)
    for index in range(images):
        count = int(counts[index, 0])
        if not 0 <= count <= min(width_k, facts.max_det):
            raise ContractError(
                f"{NUM_DETECTIONS.name}: {count} boxes, {width_k} rows, max_det {facts.max_det}"
            )
        kept = boxes[index, :count]
        if not np.all(np.isfinite(kept)):
            raise ContractError(f"{DETECTION_BOXES.name}: not finite (NaN or infinity)")
        x1, y1, x2, y2 = (kept[:, axis] for axis in range(4))
        if np.any(x1 > x2) or np.any(y1 > y2):
            raise ContractError(f"{DETECTION_BOXES.name}: a box with x1 > x2 or y1 > y2")
        low, high_x, high_y = -BOX_TOLERANCE_PX, width + BOX_TOLERANCE_PX, height + BOX_TOLERANCE_PX
        if count and (
            min(x1.min(), y1.min()) < low or x2.max() > high_x or y2.max() > high_y
        ):
            raise ContractError(f"{DETECTION_BOXES.name}: a box outside the {width}x{height} image")
        _probabilities(DETECTION_SCORES.name, outputs[DETECTION_SCORES.name][index, :count])
        unknown = {int(c) for c in outputs[DETECTION_CLASSES.name][index, :count]} - known
        if unknown:
            raise ContractError(f"{DETECTION_CLASSES.name}: unknown class ids {sorted(unknown)}")
