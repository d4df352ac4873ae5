"""All configuration in one pydantic-settings class, read from the environment.

Every service reads the same class so an operator has one list of variables to learn
(documented in README.md). Only the fields a service uses matter to it.
"""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class FusionMode(StrEnum):
    """How detector boxes are combined with the ensemble's Normal/Abnormal call."""

    PAPER = "paper"  # VinDr-SpineXR paper: Normal keeps only boxes with confidence >= 0.5
    SEED = "seed"  # the original app: no boxes at all when Normal


class DefaultBundle(StrEnum):
    """What the model services serve without ``MODEL_DIR``."""

    DEMO = "demo"  # trained on synthetic phantoms on first use (minutes), then cached
    UNTRAINED = "untrained"  # the real architectures with random weights (seconds)


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


def _split_urls(value: object) -> object:
    if isinstance(value, str):
        return [part.strip().rstrip("/") for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    # --- shared ---
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    log_json: bool = Field(True, description="One JSON object per log line")

    # --- gateway ---
    max_content_length: int = Field(64 * 1024 * 1024, description="Largest upload in bytes (413)")
    canonical_long_side: int = Field(
        1024, ge=64, le=8192, description="Long side of the canonical image sent to the models"
    )
    annotate_long_side: int = Field(
        1024, ge=64, le=8192, description="Long side of the annotated PNG"
    )
    classifier_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["http://127.0.0.1:8001"],
        description="Classifier replicas, comma-separated; dns+http://name:port = every address",
    )
    detector_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["http://127.0.0.1:8002"],
        description="Detector replicas, comma-separated; dns+http://name:port = every address",
    )
    upstream_timeout_s: float = Field(60.0, gt=0, description="Deadline for one model call")
    fusion_mode: FusionMode = Field(
        FusionMode.PAPER, description="paper (Normal keeps confident boxes) or seed (no boxes)"
    )
    fusion_normal_min_confidence: float = Field(
        0.5, ge=0, le=1, description="paper mode: least box confidence kept on a Normal image"
    )
    phi_mode: PhiMode = Field(
        PhiMode.PSEUDONYMIZE, description="pseudonymize, passthrough or redact patient fields"
    )
    pseudonym_secret: str = Field(
        "change-me", description="HMAC key for patient_id pseudonyms; set it in production"
    )
    decode_workers: int = Field(
        0, ge=0,
        description="Decode threads; 0 = the CPU quota (cgroup cpu.max, else the affinity mask); "
        "decoder worker processes never exceed the CPU quota",
    )
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

    # --- gateway: operations (docs/OPERATIONS.md) ---
    request_timeout_s: float = Field(
        90.0, gt=0, description="Deadline of one /upload or /preview after its body (504)"
    )
    upload_timeout_s: float = Field(60.0, gt=0, description="Time to receive one body (408)")
    classifier_timeout_s: float | None = Field(None, gt=0, description="None = UPSTREAM_TIMEOUT_S")
    detector_timeout_s: float | None = Field(None, gt=0, description="None = UPSTREAM_TIMEOUT_S")
    api_keys_sha256: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict, description="'id:sha256hex,...'; empty = no API keys required"
    )
    rate_limit_per_minute: float = Field(0.0, ge=0, description="Per key/client; 0 = off")
    rate_limit_burst: int = Field(10, ge=1, description="Token bucket size")
    max_uploads_per_client: int = Field(8, ge=0, description="Concurrent; 0 = unlimited (429)")
    max_inflight_uploads: int = Field(32, ge=0, description="Gateway-wide; 0 = unlimited (503)")
    max_header_bytes: int = Field(16384, ge=1024, description="All request headers (431)")
    cors_allow_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origins allowed by CORS; empty = no CORS"
    )
    hsts_seconds: int = Field(0, ge=0, description="Strict-Transport-Security max-age; 0 = off")
    audit_log_path: Path | None = Field(None, description="JSON lines file; None = logger")
    audit_log: bool = Field(True, description="One audit line per analysis")

    # --- every service ---
    internal_token: SecretStr | None = Field(
        None, description="Model services refuse OIP calls without it; the gateway sends it"
    )

    # --- model services ---
    model_dir: Path | None = Field(None, description="Model bundle folder; None = demo bundle")
    model_device: str = Field(
        "auto", pattern="^(auto|cpu|cuda(:[0-9]+)?)$", description="auto, cpu, cuda or cuda:N"
    )
    max_batch_size: int = Field(8, ge=1, le=512, description="Largest dynamic batch")
    max_delay_ms: float = Field(5.0, ge=0, description="Longest wait for a batch to fill")
    max_queue_size: int = Field(64, ge=1, description="Images waiting per model; full = 503")
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads; 0 = torch default")
    model_backend: str = Field(
        "auto", pattern="^(auto|torch|onnx)$",
        description="auto = ONNX Runtime on CPU, PyTorch on CUDA; onnx falls back to torch "
        "(with a warning) where an export fails or does not match PyTorch",
    )
    model_precision: str = Field(
        "auto", pattern="^(auto|fp32|fp16|bf16)$",
        description="CUDA compute dtype; auto = fp16 on CUDA, fp32 on CPU (CPU is always fp32)",
    )
    ort_threads: int = Field(
        0, ge=0, description="ONNX Runtime intra-op threads; 0 = TORCH_THREADS, else ORT default"
    )
    onnx_opset: int = Field(18, ge=13, le=23, description="opset of the cached ONNX exports")
    spine_cache_dir: Path | None = Field(
        None, description="cache root (built bundles, ONNX exports, samples, Ultralytics "
        "config: shared.paths.cache_root); None = ~/.cache/spine",
    )
    spine_default_bundle: DefaultBundle = Field(
        DefaultBundle.DEMO, description="bundle served without MODEL_DIR: demo or untrained"
    )
    yolo_config_dir: Path | None = Field(
        None, description="Ultralytics' settings folder (read by Ultralytics itself); "
        "None = <cache root>/ultralytics",
    )

    # --- the `spine` command: defaults of its options (the options win) ---
    spine_host: str = Field("127.0.0.1", description="address the services of `spine` bind")
    gateway_port: int = Field(8000, ge=1, le=65535, description="gateway port of `spine serve`")
    classifier_port: int = Field(
        8001, ge=1, le=65535, description="classifier port of `spine serve`"
    )
    detector_port: int = Field(8002, ge=1, le=65535, description="detector port of `spine serve`")
    port: int | None = Field(
        None, ge=1, le=65535,
        description="port of `spine gateway|classifier|detector` run alone; None = 8000/8001/8002",
    )
    spine_api_key: SecretStr | None = Field(
        None, description="API key `spine bench --gateway` sends (X-API-Key)"
    )

    # --- gateway: input selection (README "Input selection"; shared/dicom/selection.py) ---
    input_selection: bool = Field(
        True, description="on = refuse (422) what the input selection rules say is not a "
        "spine radiograph, before decoding; off = analyse every decodable image",
    )
    input_selection_rules: Path | None = Field(
        None, description="YAML file merged over the shipped rules "
        "(shared/dicom/selection_default.yaml); None = the shipped rules",
    )

    # --- lockdown: exposed services, slow clients, multipart, secrets and PHI (issue 12) ---
    model_max_images_per_request: int | None = Field(
        None, ge=1, description="Images (batch dimension N) in one infer request (413); "
        "None = MAX_BATCH_SIZE",
    )
    model_max_body_bytes: int | None = Field(
        None, ge=1024, description="Largest infer request body in bytes (413); None = "
        "MODEL_MAX_IMAGES_PER_REQUEST x 16 MiB (a 4096 x 4096 UINT8 image) + 1 MiB",
    )
    model_body_timeout_s: float = Field(
        30.0, gt=0, description="Time a model service waits for one whole infer body (408)"
    )
    http_header_timeout_s: float = Field(
        10.0, gt=0, description="Time to send a request's headers; the connection is closed "
        "after it (every service)",
    )
    http_body_idle_timeout_s: float = Field(
        10.0, gt=0, description="Longest wait for the next chunk of a request body (408)"
    )
    http_max_connections: int = Field(
        512, ge=0, description="Open connections + requests per process; beyond it uvicorn "
        "answers 503 (every service); 0 = unlimited",
    )
    multipart_max_parts: int = Field(
        4, ge=1, description="Parts in one multipart upload (400)"
    )
    multipart_max_part_header_bytes: int = Field(
        8192, ge=256, description="Headers of one multipart part, in bytes (400)"
    )
    study_date_mode: StudyDateMode = Field(
        StudyDateMode.AUTO, description="study_date in responses: auto (omitted under "
        "PHI_MODE=redact, the year under pseudonymize, full under passthrough), full, year, omit",
    )
    operator_keys_sha256: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict, description="'id:sha256hex,...' keys that see /health details "
        "(replica URLs, bundle paths and hashes); empty = nobody",
    )

    # --- DICOM results (issue 13): POST /upload/dicom, spine evaluate --dicom-out
    dicom_result_patient: ResultPatientMode = Field(
        ResultPatientMode.COPY,
        description="Patient module of DICOM results: copy (the source's, so results land "
        "in the patient's own study) or pseudonymize (PatientID/Name -> keyed pseudonym)",
    )

    # --- upstream trust (issue 12 item 7): circuit breaker, cached readiness ---
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

    # --- decode budget (issue 12 item 1): what one untrusted upload may cost ---------------
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

    # --- DICOM networking (issue 14 items 1-2): STOW-RS in, results delivery -------------
    # (shared/dicomnet/; docs/OPERATIONS.md "STOW-RS in and results delivery")
    stowrs_max_instances: int = Field(
        16, ge=1, le=1000, description="Instances in one STOW-RS request to /dicomweb/studies (413)"
    )
    stowrs_max_bytes: int = Field(
        128 * 1024 * 1024, ge=1024 * 1024,
        description="Largest STOW-RS request body in bytes (413); each instance in it at most "
        "MAX_CONTENT_LENGTH",
    )
    results_dicomweb_url: str | None = Field(
        None, description="DICOMweb root results are stored into by STOW-RS "
        "(POST {url}/studies), e.g. http://pacs:8042/dicom-web; None = no STOW-RS delivery",
    )
    results_dicomweb_bearer_token: SecretStr | None = Field(
        None, description="Authorization: Bearer token for RESULTS_DICOMWEB_URL "
        "(refused over http:// beyond loopback)",
    )
    results_dicomweb_user: str | None = Field(
        None, description="HTTP basic user for RESULTS_DICOMWEB_URL (instead of a bearer token)"
    )
    results_dicomweb_password: SecretStr | None = Field(
        None, description="HTTP basic password for RESULTS_DICOMWEB_USER"
    )
    results_store_ae: str | None = Field(
        None, description="C-STORE destination of results as AE@host:port; None = no C-STORE"
    )
    results_calling_ae: str = Field(
        "SPINE", min_length=1, max_length=16,
        description="our calling AE title when sending results by C-STORE",
    )
    results_queue_size: int = Field(
        1000, ge=1, description="result objects (per destination) queued or waiting to retry; "
        "beyond it the request that made them is refused (503 + Retry-After)",
    )
    results_concurrency: int = Field(
        2, ge=1, le=64, description="result deliveries in flight at once (all destinations)"
    )
    results_timeout_s: float = Field(
        30.0, gt=0, description="deadline of one delivery attempt (connect, send, answer)"
    )
    results_retry_initial_s: float = Field(
        1.0, gt=0, description="first retry delay; doubled each retry up to RESULTS_RETRY_MAX_S"
    )
    results_retry_max_s: float = Field(60.0, gt=0, description="longest delay between retries")
    results_retry_budget_s: float = Field(
        600.0, gt=0, description="a result not delivered this long after its submit is given "
        "up: logged with its SOP Instance UID and counted (spine_results_failed_total)",
    )
    results_drain_timeout_s: float = Field(
        10.0, ge=0, description="at shutdown, how long pending results may still be delivered; "
        "what is left is logged and counted as failed (reason shutdown)",
    )
    results_spool_dir: Path | None = Field(
        None, description="gateway (STOW-RS): keep each result object durably in "
        "RESULTS_SPOOL_DIR/results/ until every destination has it, sent again at the next "
        "start; at most RESULTS_QUEUE_SIZE objects (beyond: 503 / A700); None = in memory only",
    )

    # --- DICOM listener (issue 14 items 3-5): C-STORE SCP, spool, studies -----------------
    # (dicom_listener/; docs/INTEGRATION.md, docs/OPERATIONS.md "DICOM listener")
    listener_ae_title: str = Field(
        "SPINE", min_length=1, max_length=16, description="AE title of `spine dicom-listener`"
    )
    listener_port: int = Field(
        11112, ge=1, le=65535, description="DICOM port of `spine dicom-listener`"
    )
    listener_allowed_ae_titles: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="calling AE titles allowed to associate, "
        "comma-separated; empty = any, allowed only when the listener binds loopback",
    )
    listener_check_called_ae: bool = Field(
        True, description="reject an association whose called AE title is not LISTENER_AE_TITLE"
    )
    listener_max_associations: int = Field(
        10, ge=1, le=256, description="DICOM associations served at once"
    )
    listener_spool_dir: Path | None = Field(
        None, description="where received instances wait (durably) for analysis; "
        "None = SPINE_CACHE_DIR/listener/spool",
    )
    listener_results_dir: Path | None = Field(
        None, description="one JSON report per study; None = SPINE_CACHE_DIR/listener/studies"
    )
    listener_max_instance_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="largest instance accepted by C-STORE "
        "(bigger: status A700 out of resources)",
    )
    listener_spool_max_bytes: int = Field(
        2 * 1024 ** 3, ge=1024 * 1024, description="most bytes waiting in the spool; a C-STORE "
        "beyond it is answered A700 (out of resources), so the sender retries later",
    )
    listener_study_idle_s: float = Field(
        15.0, gt=0, description="a study is closed (reported) this long after its last "
        "instance arrived, once all its instances are done",
    )
    listener_gateway_url: str = Field(
        "http://127.0.0.1:8000", description="the gateway the listener sends each instance to "
        "(POST /upload/dicom)",
    )
    listener_gateway_api_key: SecretStr | None = Field(
        None, description="API key the listener sends to the gateway (X-API-Key); None = none"
    )
    listener_forward_timeout_s: float = Field(
        120.0, gt=0, description="deadline of one gateway request of the listener"
    )
    listener_concurrency: int = Field(
        2, ge=1, le=64, description="instances the listener sends to the gateway at once"
    )
    listener_retry_initial_s: float = Field(
        1.0, gt=0, description="first delay before the listener retries the gateway; doubled "
        "each time up to LISTENER_RETRY_MAX_S",
    )
    listener_retry_max_s: float = Field(
        60.0, gt=0, description="longest delay between the listener's gateway retries"
    )
    listener_retry_budget_s: float = Field(
        3600.0, gt=0, description="an instance the gateway did not take this long after it "
        "was received (or replayed) is logged and counted as failed and moved to the spool's "
        "failed/ folder",
    )
    listener_drain_timeout_s: float = Field(
        20.0, ge=0, description="at shutdown, how long gateway requests in flight may finish; "
        "instances not analysed stay in the spool for the next start",
    )
    listener_status_host: str = Field(
        "127.0.0.1", description="address of the listener's status server "
        "(/health, /metrics, /studies)",
    )
    listener_status_port: int = Field(
        8003, ge=0, le=65535, description="port of the listener's status server; 0 = none"
    )

    @field_validator("listener_allowed_ae_titles", mode="before")
    @classmethod
    def _parse_ae_titles(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    # --- Triton path (issue 15: `spine export-triton`, `spine triton`; README "Triton") ---
    triton_venv: Path | None = Field(
        None, description="environment with the nvidia-pytriton wheel and numpy<2 "
        "(scripts/setup-triton.sh); None = .venv-triton at the project root",
    )

    # --- CPU shared by need (issue 16 item 8): `spine serve`'s split of the cores -------
    classifier_threads: int = Field(
        0, ge=0, description="intra-op threads of the classifier service under `spine serve`; "
        "0 = half the cores",
    )
    detector_threads: int = Field(
        0, ge=0, description="intra-op threads of each detector replica under `spine serve`; "
        "0 = half the cores",
    )
    detector_replicas: int = Field(
        1, ge=1, le=16, description="detector processes `spine serve` starts (the gateway "
        "balances by requests in flight); extra ones listen on free loopback ports",
    )
    detector_letterbox: str = Field(
        "rect", pattern="^(rect|square)$",
        description="rect: the minimal stride-32 rectangle, as Ultralytics' own predict "
        "(2400x1600 portrait -> 640x448; images of one rectangle batch together); square: "
        "the fixed image_size square (any shapes batch together)",
    )
    reduced_j2k: bool = Field(
        False, description="the gateway decodes JPEG 2000 at the lowest resolution level that "
        "still covers the canonical size (faster; grey levels differ slightly from the full "
        "decode, see docs/BENCHMARKS.md); off = exact",
    )

    @field_validator("spine_default_bundle", mode="before")
    @classmethod
    def _lower_bundle(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("classifier_urls", "detector_urls", mode="before")
    @classmethod
    def _parse_urls(cls, value: object) -> object:
        return _split_urls(value)

    @field_validator("cors_allow_origins", mode="before")
    @classmethod
    def _parse_origins(cls, value: object) -> object:
        return _split_urls(value)

    @field_validator("api_keys_sha256", "operator_keys_sha256", mode="before")
    @classmethod
    def _parse_api_keys(cls, value: object) -> object:
        """``id1:hex,id2:hex`` -> ``{id: hex}`` (ids name callers in logs, never the key)."""
        if not isinstance(value, str):
            return value
        keys: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in value.split(","))):
            key_id, _, digest = item.partition(":")
            digest = digest.strip().lower()
            hexdigits = set("0123456789abcdef")
            if not key_id.strip() or len(digest) != 64 or not set(digest) <= hexdigits:
                raise ValueError("API_KEYS_SHA256 entries are 'id:<64 hex digits of sha256(key)>'")
            keys[key_id.strip()] = digest
        return keys


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, read from the environment once."""
    return Settings()
