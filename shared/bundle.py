"""Model bundles: a folder of checkpoints plus a manifest saying how to use them.

The default manifest describes the original system's folder layout, so a user can point
the services at the folder they already have (``ensemble output/...``,
``detection output/yolo11/weights/best.pt``) with no configuration. A ``manifest.yaml``
in the folder overrides any field. Torch-free: the gateway and the CLI read this too.

A bundle is data, never code: every checkpoint path must stay inside the bundle folder
(no absolute path, no ``..``, no symlink that leads out), and a checkpoint may be pinned
by ``sha256:``. ``allow_unsafe_pickle_sha256:`` is the operator's explicit trust in one
exact file whose pickle needs more than the safe allow-list (see
:mod:`model_server.safe_load`); prefer ``spine convert-checkpoint``.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from shared.mappings import deep_merge

MANIFEST_NAMES = ("manifest.yaml", "manifest.yml")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SHA256_PATTERN = r"^[0-9a-fA-F]{64}$"


class BundleKind(StrEnum):
    """Where the weights came from; anything but USER is labelled not-medical everywhere."""

    USER = "user"
    DEMO = "demo"  # trained by this project on synthetic phantoms
    UNTRAINED = "untrained"  # random weights: proves the plumbing, predicts nothing


def _relative_inside(value: str) -> str:
    """Refuse what could name a file outside the bundle folder, before any file is read."""
    path = Path(value)
    if not value or path.is_absolute() or value.startswith(("/", "\\")):
        raise ValueError(f"{value!r} must be a path relative to the bundle folder")
    if ".." in path.parts or ".." in Path(value.replace("\\", "/")).parts:
        raise ValueError(f"{value!r} must not contain '..': it must stay inside the bundle folder")
    return value


class CheckpointPins(BaseModel):
    """Optional integrity and trust settings shared by every checkpoint entry."""

    sha256: str | None = Field(
        None, pattern=SHA256_PATTERN,
        description="If set, the checkpoint's sha256 must match or it is refused at load",
    )
    allow_unsafe_pickle_sha256: str | None = Field(
        None, pattern=SHA256_PATTERN,
        description="Operator trust in this exact file (by sha256): load its full pickle even "
        "if it needs globals outside the safe allow-list. It RUNS CODE from the file; prefer "
        "`spine convert-checkpoint`",
    )

    @field_validator("sha256", "allow_unsafe_pickle_sha256")
    @classmethod
    def _lower(cls, value: str | None) -> str | None:
        return value.lower() if value else value


class MemberSpec(CheckpointPins):
    """One classifier of the ensemble."""

    name: str = Field(description="Key in the response's ensemble_prediction")
    arch: str = Field(description="timm architecture name")
    checkpoint: str = Field(description="Path relative to the bundle folder")
    weight: float = Field(gt=0)
    input_size: int = Field(gt=0, le=4096)
    num_classes: int = Field(1, description="1 = one logit + sigmoid")
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @field_validator("checkpoint")
    @classmethod
    def _inside_bundle(cls, value: str) -> str:
        return _relative_inside(value)


class ClassifierSpec(BaseModel):
    members: list[MemberSpec]
    threshold: float = Field(0.449, ge=0, le=1, description="Abnormal iff score > threshold")

    @model_validator(mode="after")
    def _unique_names(self) -> ClassifierSpec:
        names = [member.name for member in self.members]
        if not names:
            raise ValueError("the ensemble needs at least one member")
        if len(set(names)) != len(names):
            raise ValueError(f"member names must be unique, got {names}")
        return self


class DetectorSpec(CheckpointPins):
    checkpoint: str = Field(description="Ultralytics .pt (or a YOLO .yaml), relative path")
    image_size: int = Field(640, gt=0, le=4096)
    conf: float = Field(0.25, ge=0, le=1)
    iou: float = Field(0.7, ge=0, le=1)
    max_det: int = Field(300, ge=1, le=10000)

    @field_validator("checkpoint")
    @classmethod
    def _inside_bundle(cls, value: str) -> str:
        return _relative_inside(value)


class BundleManifest(BaseModel):
    name: str = "original-layout"
    kind: BundleKind = BundleKind.USER
    description: str = ""
    classifier: ClassifierSpec
    detector: DetectorSpec

    def checkpoint_entries(self) -> list[tuple[str, CheckpointPins, str]]:
        """``(manifest field, spec, relative path)`` for every checkpoint the bundle names."""
        entries: list[tuple[str, CheckpointPins, str]] = [
            (f"classifier.members[{index}].checkpoint", member, member.checkpoint)
            for index, member in enumerate(self.classifier.members)
        ]
        entries.append(("detector.checkpoint", self.detector, self.detector.checkpoint))
        return entries


DEFAULT_MANIFEST: dict[str, Any] = {
    "name": "original-layout",
    "kind": "user",
    "description": "The original system's folder layout and ensemble settings.",
    "classifier": {
        "threshold": 0.449,
        "members": [
            {
                "name": "densenet121",
                "arch": "densenet121",
                "checkpoint": "ensemble output/densenet121_balanced/model_best.pth",
                "weight": 0.42,
                "input_size": 384,
            },
            {
                "name": "resnet50",
                "arch": "resnet50",
                "checkpoint": "ensemble output/resnet50_optimized/model_best.pth",
                "weight": 0.26,
                "input_size": 224,
            },
            {
                "name": "efficientnetv2",
                "arch": "tf_efficientnetv2_s",
                "checkpoint": "ensemble output/tf_efficientnetv2_s_optimized/model_best.pth",
                "weight": 0.32,
                "input_size": 384,
            },
        ],
    },
    "detector": {
        "checkpoint": "detection output/yolo11/weights/best.pt",
        "image_size": 640,
        "conf": 0.25,
        "iou": 0.7,
        "max_det": 300,
    },
}


class BundleError(RuntimeError):
    """A bundle that cannot be served; the message names the file and the problem."""



def manifest_path(model_dir: Path) -> Path | None:
    for name in MANIFEST_NAMES:
        candidate = model_dir / name
        if candidate.is_file():
            return candidate
    return None


def load_manifest(model_dir: Path) -> BundleManifest:
    """The default manifest, overridden by the folder's ``manifest.yaml`` if present."""
    if not model_dir.is_dir():
        raise BundleError(f"model folder {model_dir} does not exist")
    data = DEFAULT_MANIFEST
    path = manifest_path(model_dir)
    if path is not None:
        try:
            override = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise BundleError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(override, dict):
            raise BundleError(f"{path}: the manifest must be a YAML mapping")
        data = deep_merge(DEFAULT_MANIFEST, override)
    try:
        manifest = BundleManifest.model_validate(data)
    except ValidationError as exc:
        raise BundleError(f"{path or model_dir}: invalid manifest: {exc}") from exc
    for field, _spec, relative in manifest.checkpoint_entries():
        confined_path(model_dir, relative, field)
    return manifest


def confined_path(model_dir: Path, relative: str, field: str = "checkpoint") -> Path:
    """``model_dir / relative`` resolved (symlinks followed), refused unless it stays inside.

    Lexical checks (absolute, ``..``) come first so the message says what was written;
    then the resolved path must lie under the resolved folder, which catches symlinks
    (of the file or of any folder on the way) that lead out.
    """
    try:
        _relative_inside(relative)
    except ValueError as exc:
        raise BundleError(f"manifest field {field}: {exc}") from exc
    root = model_dir.resolve()
    path = (model_dir / relative).resolve()
    if not path.is_relative_to(root):
        raise BundleError(
            f"manifest field {field}: {relative!r} resolves to {path}, outside the bundle "
            f"folder {root} (a symlink that leads out is refused)"
        )
    return path


def resolve_checkpoint(model_dir: Path, relative: str, field: str = "checkpoint") -> Path:
    """The checkpoint's absolute path inside the bundle, or a clear error naming the field."""
    path = confined_path(model_dir, relative, field)
    if not path.is_file():
        raise BundleError(
            f"checkpoint {relative!r} ({field}) not found in model folder {model_dir}"
        )
    return path


def check_pins(path: Path, pins: CheckpointPins, field: str = "checkpoint") -> tuple[str, bool]:
    """``(sha256, trusted)``: the pinned ``sha256`` must match; ``trusted`` is true when
    ``allow_unsafe_pickle_sha256`` names this exact file (a different file is refused)."""
    actual = verify_sha256(path, pins.sha256, field)
    trust = pins.allow_unsafe_pickle_sha256
    if trust and trust != actual:
        raise BundleError(
            f"{path}: allow_unsafe_pickle_sha256 for manifest field {field} is {trust}, but "
            f"the file has {actual}: the trust was given to another file; refusing to load it"
        )
    return actual, bool(trust)


def verify_sha256(path: Path, expected: str | None, field: str = "checkpoint") -> str:
    """The file's sha256; refused if the manifest pins another one."""
    actual = sha256_file(path)
    if expected and actual != expected.lower():
        raise BundleError(
            f"{path}: sha256 mismatch for manifest field {field}: the manifest pins "
            f"{expected.lower()}, the file has {actual}; refusing to load it"
        )
    return actual


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def is_demo(kind: BundleKind) -> bool:
    return kind is not BundleKind.USER

