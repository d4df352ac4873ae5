"""Model bundles: a folder of checkpoints plus a manifest saying how to use them.

The default manifest describes the original system's folder layout, so a user can point
the services at the folder they already have (``ensemble output/...``,
``detection output/yolo11/weights/best.pt``) with no configuration. A ``manifest.yaml``
in the folder overrides any field. Torch-free: the gateway and the CLI read this too.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

MANIFEST_NAMES = ("manifest.yaml", "manifest.yml")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BundleKind(StrEnum):
    """Where the weights came from; anything but USER is labelled not-medical everywhere."""

    USER = "user"
    DEMO = "demo"  # trained by this project on synthetic phantoms
    UNTRAINED = "untrained"  # random weights: proves the plumbing, predicts nothing


class MemberSpec(BaseModel):
    """One classifier of the ensemble."""

    name: str = Field(description="Key in the response's ensemble_prediction")
    arch: str = Field(description="timm architecture name")
    checkpoint: str = Field(description="Path relative to the bundle folder")
    weight: float = Field(gt=0)
    input_size: int = Field(gt=0, le=4096)
    num_classes: int = Field(1, description="1 = one logit + sigmoid")
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


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


class DetectorSpec(BaseModel):
    checkpoint: str = Field(description="Ultralytics .pt (or a YOLO .yaml), relative path")
    image_size: int = Field(640, gt=0, le=4096)
    conf: float = Field(0.25, ge=0, le=1)
    iou: float = Field(0.7, ge=0, le=1)
    max_det: int = Field(300, ge=1, le=10000)


class BundleManifest(BaseModel):
    name: str = "original-layout"
    kind: BundleKind = BundleKind.USER
    description: str = ""
    classifier: ClassifierSpec
    detector: DetectorSpec


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


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Dicts merge key by key; anything else (lists included) is replaced whole."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


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
        data = _deep_merge(DEFAULT_MANIFEST, override)
    try:
        return BundleManifest.model_validate(data)
    except ValidationError as exc:
        raise BundleError(f"{path or model_dir}: invalid manifest: {exc}") from exc


def resolve_checkpoint(model_dir: Path, relative: str) -> Path:
    """The checkpoint's absolute path, or a clear error naming what is missing."""
    path = (model_dir / relative).resolve()
    if not path.is_file():
        raise BundleError(f"checkpoint {relative!r} not found in model folder {model_dir}")
    return path


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def is_demo(kind: BundleKind) -> bool:
    return kind is not BundleKind.USER

