"""The gateway's settings (``spine gateway``): read once by its entry point, passed to
``gateway.app.create_app`` and from there to everything the app builds."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from shared.settings.base import CommonSettings, parse_key_digests, split_list
from shared.settings.sections import (
    DAY_S,
    DiskSettings,
    HttpServerSettings,
    OperatorKeysSettings,
    PseudonymSecretSettings,
    ResultsDeliverySettings,
    SelectionRulesSettings,
)


class FusionMode(StrEnum):
    """How detector boxes are combined with the ensemble's Normal/Abnormal call."""

    PAPER = "paper"  # VinDr-SpineXR paper: Normal keeps only boxes with confidence >= 0.5
    SEED = "seed"  # the original app: no boxes at all when Normal


class StudyDateMode(StrEnum):
    """How much of the study date a response shows (``STUDY_DATE_MODE``)."""

    AUTO = "auto"  # by PHI_MODE: redact omits it, pseudonymize keeps the year
    FULL = "full"
    YEAR = "year"
    OMIT = "omit"


class ResultPatientMode(StrEnum):
    """What DICOM results (SR, presentation state) say about the patient."""

    COPY = "copy"
    PSEUDONYMIZE = "pseudonymize"


class PhiMode(StrEnum):
    """How a response reports the patient ID (``PHI_MODE``, set by the operator)."""

    PSEUDONYMIZE = "pseudonymize"
    PASSTHROUGH = "passthrough"
    REDACT = "redact"


class GatewaySettings(
    CommonSettings,
    HttpServerSettings,
    ResultsDeliverySettings,
    DiskSettings,
    SelectionRulesSettings,
    PseudonymSecretSettings,
    OperatorKeysSettings,
):
    """The public API: intake, decoding, the model clients, fusion, PHI, admission, outputs."""

    # --- intake: the upload and the canonical image -------------------------------------
    max_content_length: int = Field(64 * 1024 * 1024, description="Largest upload in bytes (413)")
    request_timeout_s: float = Field(
        90.0, gt=0, description="Deadline of one /upload or /preview after its body (504)"
    )
    upload_timeout_s: float = Field(60.0, gt=0, description="Time to receive one body (408)")
    multipart_max_parts: int = Field(
        4, ge=1, description="Parts in one multipart upload (400)"
    )
    multipart_max_part_header_bytes: int = Field(
        8192, ge=256, description="Headers of one multipart part, in bytes (400)"
    )
    canonical_long_side: int = Field(
        1024, ge=64, le=8192, description="Long side of the canonical image sent to the models"
    )
    annotate_long_side: int = Field(
        1024, ge=64, le=8192, description="Long side of the annotated PNG"
    )
    reduced_j2k: bool = Field(
        False, description="the gateway decodes JPEG 2000 at the lowest resolution level that "
        "still covers the canonical size (faster; grey levels differ slightly from the full "
        "decode, see docs/BENCHMARKS.md); off = exact",
    )
    input_selection: bool = Field(
        True, description="on = refuse (422) what the input selection rules say is not a "
        "spine radiograph, before decoding; off = analyse every decodable image",
    )

    # --- decoding untrusted DICOM: isolation, budget, caps (OPERATIONS "Hostile files") ---
    dicom_isolate_decoders: bool = Field(
        True,
        description="Parse and decode uploads in memory-limited worker processes, so a hostile "
        "or crashing file costs one upload a 4xx, never the gateway; false = in-process "
        "(debugging only)",
    )
    dicom_decode_timeout_s: float = Field(
        15.0, gt=0,
        description="Wall deadline of one worker call (parse or decode); the worker is then killed",
    )
    decode_workers: int = Field(
        0, ge=0,
        description="Decode threads; 0 = the CPU quota (cgroup cpu.max, else the affinity mask); "
        "decoder worker processes never exceed the CPU quota",
    )
    decode_worker_memory_mb: int = Field(
        1536, ge=256,
        description="Address-space limit (RLIMIT_AS, MiB) of one DICOM decoder worker process",
    )
    decode_memory_budget_mb: int = Field(
        2048, ge=64,
        description="Decode memory all uploads together may hold (rows x columns x 8 bytes "
        "each); an upload waits for room, one that can never fit is refused (422)",
    )
    max_pixels: int = Field(
        40_000_000, ge=1, description="Largest image, Rows x Columns, accepted (422)"
    )
    max_dicom_elements: int = Field(
        50_000, ge=100, description="Most data elements in one DICOM, nested ones included (422)"
    )
    max_dicom_sequence_items: int = Field(
        10_000, ge=10, description="Most sequence items in one DICOM, all sequences (422)"
    )
    max_dicom_sequence_depth: int = Field(
        16, ge=2, description="Deepest nesting of sequences in one DICOM (422)"
    )
    max_dicom_fragments: int = Field(
        10_000, ge=1, description="Most fragments in encapsulated Pixel Data (422)"
    )
    max_dicom_element_bytes: int = Field(
        128 * 1024 * 1024, ge=1024 * 1024, description="Longest single DICOM element (422)"
    )
    max_dicom_inflated_bytes: int = Field(
        128 * 1024 * 1024, ge=1024 * 1024,
        description="Largest size a Deflated DICOM body may inflate to (422)",
    )

    # --- the model clients: replicas, deadlines, breaker, readiness ----------------------
    classifier_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["http://127.0.0.1:8001"],
        description="Classifier replicas, comma-separated; dns+http://name:port = every address",
    )
    detector_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["http://127.0.0.1:8002"],
        description="Detector replicas, comma-separated; dns+http://name:port = every address",
    )
    upstream_timeout_s: float = Field(60.0, gt=0, description="Deadline for one model call")
    classifier_timeout_s: float | None = Field(None, gt=0, description="None = UPSTREAM_TIMEOUT_S")
    detector_timeout_s: float | None = Field(None, gt=0, description="None = UPSTREAM_TIMEOUT_S")
    upstream_attempt_timeout_s: float | None = Field(
        None, gt=0, description="longest one attempt at one replica may take while another "
        "replica could still be asked: no answer by then (a cut link, a hung replica) and "
        "the call is retried on another replica, within the service's timeout and the "
        "request's deadline; the last attempt may take what is left; None = half the "
        "service's timeout",
    )
    breaker_failures: int = Field(
        3, ge=1,
        description="failed calls in a row (5xx, timeout, invalid answer) that eject a replica",
    )
    breaker_cooldown_s: float = Field(
        10.0, gt=0, description="rest of an ejected replica before one trial call (half-open)"
    )
    readiness_interval_s: float = Field(
        2.0, gt=0, description="how often the gateway polls its replicas' readiness (/readyz)"
    )
    readiness_timeout_s: float = Field(
        0.8, gt=0, le=5, description="longest one readiness poll of one replica may take"
    )
    bundle_build_progress_file: Path | None = Field(
        None, description="JSON file `spine serve` writes the progress of the demo bundle it "
        "builds to; until it says done, analyses answer 503 with Retry-After and the "
        "progress, which /health, /readyz and the page show; None = no build",
    )

    # --- fusion, PHI and the DICOM results ------------------------------------------------
    fusion_mode: FusionMode = Field(
        FusionMode.PAPER, description="paper (Normal keeps confident boxes) or seed (no boxes)"
    )
    fusion_normal_min_confidence: float = Field(
        0.5, ge=0, le=1, description="paper mode: least box confidence kept on a Normal image"
    )
    phi_mode: PhiMode = Field(
        PhiMode.PSEUDONYMIZE, description="pseudonymize, passthrough or redact patient fields"
    )
    study_date_mode: StudyDateMode = Field(
        StudyDateMode.AUTO, description="study_date in responses: auto (omitted under "
        "PHI_MODE=redact, the year under pseudonymize, full under passthrough), full, year, omit",
    )
    dicom_result_patient: ResultPatientMode = Field(
        ResultPatientMode.COPY,
        description="Patient module of DICOM results: copy (the source's, so results land "
        "in the patient's own study) or pseudonymize (PatientID/Name -> keyed pseudonym)",
    )
    viewer_url: str | None = Field(
        None, description="a DICOMweb viewer (e.g. `spine reading-room`'s OHIF, "
        "http://127.0.0.1:3000); the web page then offers \"Open in viewer\" for an "
        "analysed DICOM study ({url}/viewer?StudyInstanceUIDs=...); None = no link",
    )

    # --- admission, browsers, audit ------------------------------------------------------
    api_keys_sha256: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict, description="'id:sha256hex,...'; empty = no API keys required"
    )
    rate_limit_per_minute: float = Field(0.0, ge=0, description="Per key/client; 0 = off")
    rate_limit_burst: int = Field(10, ge=1, description="Token bucket size")
    max_uploads_per_client: int = Field(8, ge=0, description="Concurrent; 0 = unlimited (429)")
    max_inflight_uploads: int = Field(32, ge=0, description="Gateway-wide; 0 = unlimited (503)")
    cors_allow_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origins allowed by CORS; empty = no CORS"
    )
    hsts_seconds: int = Field(0, ge=0, description="Strict-Transport-Security max-age; 0 = off")
    audit_log_path: Path | None = Field(None, description="JSON lines file; None = logger")
    audit_log: bool = Field(True, description="One audit line per analysis")

    # --- STOW-RS in (docs/OPERATIONS.md "STOW-RS in and results delivery") ---------------
    stowrs_max_instances: int = Field(
        16, ge=1, le=1000, description="Instances in one STOW-RS request to /dicomweb/studies (413)"
    )
    stowrs_max_bytes: int = Field(
        128 * 1024 * 1024, ge=1024 * 1024,
        description="Largest STOW-RS request body in bytes (413); each instance in it at most "
        "MAX_CONTENT_LENGTH",
    )
    results_spool_dir: Path | None = Field(
        None, description="gateway (STOW-RS): keep each result object durably in "
        "RESULTS_SPOOL_DIR/results/ until every destination has it, sent again at the next "
        "start; at most RESULTS_QUEUE_SIZE objects (beyond: 503 / A700); None = in memory only",
    )
    results_spool_max_bytes: int = Field(
        1024 ** 3, ge=1024, description="most bytes of results waiting in "
        "RESULTS_SPOOL_DIR/results/; at or over it a STOW-RS request is refused (503 + "
        "Retry-After) until deliveries drain it",
    )
    results_failed_max_age_s: float = Field(
        30 * DAY_S, ge=0, description="results in RESULTS_SPOOL_DIR/failed/ older than this "
        "are deleted; 0 = kept whatever their age",
    )
    results_failed_max_bytes: int = Field(
        1024 ** 3, ge=0, description="most bytes kept in RESULTS_SPOOL_DIR/failed/; beyond, "
        "the oldest files are deleted; 0 = no cap",
    )

    @field_validator("classifier_urls", "detector_urls", "cors_allow_origins", mode="before")
    @classmethod
    def _parse_urls(cls, value: object) -> object:
        return split_list(value, strip_slash=True)

    @field_validator("viewer_url")
    @classmethod
    def _viewer_url(cls, value: str | None) -> str | None:
        if value and not value.lower().startswith(("http://", "https://")):
            raise ValueError(f"VIEWER_URL must be an http(s) URL, not {value!r}")
        return value or None

    @field_validator("api_keys_sha256", mode="before")
    @classmethod
    def _parse_api_keys(cls, value: object) -> object:
        return parse_key_digests(value, "API_KEYS_SHA256")
