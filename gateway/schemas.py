"""The public JSON of the gateway, as pydantic models (they are the OpenAPI document).

SEED.md's ``/upload`` and ``/health`` fields keep their names and meaning; everything
else is added alongside, never renamed.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.buildprogress import BuildProgress


class ErrorResponse(BaseModel):
    """Every error the gateway returns, whatever the status code."""

    status: Literal["error"] = "error"
    message: str = Field(description="What went wrong and what to do about it")
    request_id: str | None = None


class Detection(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    class_name: str = Field(alias="class", description="Lesion class, named by the checkpoint")
    class_id: int
    confidence: float = Field(ge=0, le=1)
    bbox: list[float] = Field(
        min_length=4, max_length=4, description="[x1, y1, x2, y2] in ORIGINAL image pixels"
    )


class DicomSummary(BaseModel):
    """Identifiers follow PHI_MODE: ``patient_id`` is a keyed pseudonym by default."""

    patient_id: str | None = Field(description="Pseudonym (default), raw, or null: see PHI_MODE")
    study_date: str | None
    modality: str | None
    rows: int
    columns: int
    photometric_interpretation: str
    transfer_syntax_uid: str
    transfer_syntax: str
    bits_stored: int


class ImageGeometry(BaseModel):
    """How the canonical image the models saw relates to the original pixels."""

    original_width: int
    original_height: int
    canonical_width: int
    canonical_height: int
    scale_x: float = Field(description="canonical width / original width")
    scale_y: float = Field(description="canonical height / original height")


class BundlePart(BaseModel):
    """The bundle one model service answered with."""

    name: str
    kind: Literal["user", "demo", "untrained"]
    digest: str = Field(
        description="Digest of the bundle's facts (all but device and backends): the same on "
        "every replica serving this bundle; another bundle swapped in has another"
    )


class BundleSummary(BaseModel):
    name: str
    kind: Literal["user", "demo", "untrained"]
    demo: bool = Field(description="True when the weights are not a real medical model")
    checkpoints: dict[str, str] = Field(description="checkpoint path -> sha256")
    parts: dict[str, BundlePart] = Field(
        default_factory=dict,
        description="service (classifier, detector) -> the bundle its answer came from; "
        "while a bundle swap rolls through the services they may differ for a moment",
    )


class Timings(BaseModel):
    """Milliseconds per stage; classify and detect run concurrently."""

    decode: float
    classify: float
    detect: float | None
    merge: float
    render: float
    total: float


class FusionInfo(BaseModel):
    mode: Literal["paper", "seed"]
    detector_threshold: float | None
    normal_min_confidence: float
    boxes_suppressed: int = Field(description="Detector boxes hidden by the fusion rule")


class InputSelection(BaseModel):
    """Which input selection rule accepted the image (README "Input selection")."""

    rule: str = Field(
        description="The deciding rule: body_part (a spine term or code) or "
        "body_part_not_stated (no body part in the header: accepted with a warning)"
    )
    accepted_by: str = Field(
        description="What the rule matched, e.g. 'BodyPartExamined is LSPINE' (a listed "
        "keyword or code, never a description's text)"
    )
    warnings: list[str] = Field(description="Also in the answer's warnings")


class UploadResponse(BaseModel):
    status: Literal["success"] = "success"
    diagnosis: Literal["Normal", "Abnormal"]
    confidence: float = Field(ge=0, le=1, description="Probability of the stated diagnosis")
    abnormal_probability: float = Field(ge=0, le=1, description="Ensemble score")
    threshold: float = Field(description="Abnormal iff abnormal_probability > threshold")
    ensemble_prediction: dict[str, float] = Field(
        description="Each member's probability of Abnormal (densenet121, resnet50, efficientnetv2)"
    )
    ensemble_weights: dict[str, float]
    detections: list[Detection] | None = Field(
        description="Lesion boxes after fusion; null when the detector was unavailable"
    )
    metadata: DicomSummary
    annotated_image: str | None = Field(
        description="data:image/png;base64 image with the boxes drawn; null with ?annotate=false"
    )
    canonical_image: str | None = Field(
        None,
        description="data:image/png;base64 of the canonical image the models saw (no boxes); "
        "only with ?canonical_image=true",
    )
    image: ImageGeometry
    fusion: FusionInfo
    model_bundle: BundleSummary
    demo: bool = Field(description="True when results come from demo/untrained weights")
    timings_ms: Timings
    request_id: str
    warnings: list[str]
    input_selection: InputSelection | None = Field(
        None, description="The input selection rule that accepted the image; null when "
        "INPUT_SELECTION=off"
    )
    viewer_url: str | None = Field(
        None, description="This image's study in the DICOMweb viewer of VIEWER_URL "
        "(OHIF: {VIEWER_URL}/viewer?StudyInstanceUIDs=...); null without VIEWER_URL or a "
        "valid Study Instance UID",
    )


class ServiceHealth(BaseModel):
    ready: bool
    replicas: dict[str, bool] = Field(description="upstream URL -> ready")
    model_bundle: BundleSummary | None = None
    device: str | None = None
    problems: dict[str, str] = Field(
        default_factory=dict,
        description="upstream URL -> why it is out of rotation (bundle facts unreadable or "
        "disagreeing with the other replicas'); operators only",
    )


class HealthResponse(BaseModel):
    status: Literal["healthy", "degraded", "unhealthy"]
    models_loaded: bool
    device: str = Field(description="The model services' device(s)")
    timestamp: str
    services: dict[str, ServiceHealth]
    demo: bool
    warnings: list[str]
    decodable_transfer_syntaxes: dict[str, bool]
    bundle_build: BuildProgress | None = Field(
        None, description="The bundle `spine serve` is building, until it is loaded: stage, "
        "share done, seconds left (estimates)",
    )
