"""Sections read by two processes, declared once and mixed into each process's class.

| section | read by |
|---|---|
| :class:`HttpServerSettings` | the gateway, the model services |
| :class:`ResultsDeliverySettings` | the gateway (STOW-RS), the DICOM listener |
| :class:`SelectionRulesSettings` | the gateway (refuses), the DICOM listener (its SOP classes) |
| :class:`BundleSettings` | the model services, the ``spine`` command (builds the default) |
| :class:`PseudonymSecretSettings` | the gateway, ``spine serve`` (fills in a per-install one) |
| :class:`ListenerEndpointSettings` | the DICOM listener, ``spine serve`` (starts and polls it) |
| :class:`OperatorKeysSettings` | the gateway (``/health`` details), the listener (its status) |
| :class:`DiskSettings` | the gateway (its results spool), the DICOM listener (its spool) |
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from shared.settings.base import SettingsBase, parse_key_digests

# RESULTS_OBJECTS words, in the order the objects are written (shared.dicom.results).
RESULT_OBJECT_KINDS = ("sr", "gsps", "sc", "kos")


class DefaultBundle(StrEnum):
    """What the model services serve without ``MODEL_DIR``."""

    DEMO = "demo"  # trained on synthetic phantoms on first use (minutes), then cached
    UNTRAINED = "untrained"  # the real architectures with random weights (seconds)


class HttpServerSettings(SettingsBase):
    """Limits of a uvicorn server facing callers we do not control."""

    max_header_bytes: int = Field(16384, ge=1024, description="All request headers (431)")
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


class ResultsDeliverySettings(SettingsBase):
    """Where SR + presentation state go, and how hard we try (shared/dicomnet/delivery.py;
    docs/OPERATIONS.md "STOW-RS in and results delivery")."""

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
    results_store_tls: bool = Field(
        False, description="send C-STORE results over DICOM TLS (TLS 1.2 or later), the "
        "destination's certificate checked against RESULTS_STORE_TLS_CA",
    )
    results_store_tls_ca: Path | None = Field(
        None, description="PEM CA certificate(s) the C-STORE destination's certificate must "
        "chain to; None = the system's CAs",
    )
    results_store_tls_cert: Path | None = Field(
        None, description="PEM client certificate (chain) we present to the C-STORE "
        "destination, for a PACS that requires one; with RESULTS_STORE_TLS_KEY",
    )
    results_store_tls_key: Path | None = Field(
        None, description="PEM private key (unencrypted) of RESULTS_STORE_TLS_CERT"
    )
    results_store_tls_check_hostname: bool = Field(
        True, description="the destination's certificate must name the host of "
        "RESULTS_STORE_AE (DNS name or IP address); false = the chain only, as DCMTK does",
    )

    results_objects: str = Field(
        "sr,gsps", description="the result objects written for each analysed image and "
        "sent to this process's RESULTS_* destinations (the gateway's STOW-RS results, the "
        "listener's): comma-separated sr (TID 1500 SR), gsps (presentation state), sc "
        "(Secondary Capture with the boxes burned in, for viewers that show neither), kos "
        "(Key Object Selection flagging the analysed image)",
    )

    @field_validator("results_objects")
    @classmethod
    def _result_objects(cls, value: str) -> str:
        words = [word.strip().lower() for word in value.split(",") if word.strip()]
        unknown = sorted(set(words) - set(RESULT_OBJECT_KINDS))
        if unknown or not words:
            raise ValueError(
                f"RESULTS_OBJECTS is a comma-separated list of {', '.join(RESULT_OBJECT_KINDS)}"
                f", not {value!r}"
            )
        return ",".join(kind for kind in RESULT_OBJECT_KINDS if kind in words)


class SelectionRulesSettings(SettingsBase):
    """The input selection rules (README "Input selection"; shared/dicom/selection.py)."""

    input_selection_rules: Path | None = Field(
        None, description="YAML file merged over the shipped rules "
        "(shared/dicom/selection_default.yaml); None = the shipped rules",
    )


class BundleSettings(SettingsBase):
    """Which model bundle the model services serve."""

    model_dir: Path | None = Field(None, description="Model bundle folder; None = demo bundle")
    spine_default_bundle: DefaultBundle = Field(
        DefaultBundle.DEMO, description="bundle served without MODEL_DIR: demo or untrained"
    )

    @field_validator("spine_default_bundle", mode="before")
    @classmethod
    def _lower_bundle(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class PseudonymSecretSettings(SettingsBase):
    """The key of patient pseudonyms (the gateway uses it; ``spine serve`` supplies one)."""

    pseudonym_secret: str = Field(
        "change-me", description="HMAC key for patient_id pseudonyms; set it in production"
    )


class ListenerEndpointSettings(SettingsBase):
    """Where the DICOM listener answers and sends (also what ``spine serve`` polls)."""

    listener_ae_title: str = Field(
        "SPINE", min_length=1, max_length=16, description="AE title of `spine dicom-listener`"
    )
    listener_port: int = Field(
        11112, ge=1, le=65535, description="DICOM port of `spine dicom-listener`"
    )
    listener_gateway_url: str = Field(
        "http://127.0.0.1:8000", description="the gateway the listener sends each instance to "
        "(POST /upload/dicom)",
    )
    listener_status_host: str = Field(
        "127.0.0.1", description="address of the listener's status server "
        "(/health, /metrics, /studies); beyond loopback every call needs an operator key "
        "(OPERATOR_KEYS_SHA256)",
    )
    listener_status_port: int = Field(
        8003, ge=0, le=65535, description="port of the listener's status server; 0 = none"
    )


class OperatorKeysSettings(SettingsBase):
    """Keys of the operators, who see what a deployment is made of."""

    operator_keys_sha256: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict, description="'id:sha256hex,...' keys that see the gateway's "
        "/health details (replica URLs, bundle paths and hashes) and, bound beyond loopback, "
        "the listener's status (/metrics, /studies); empty = nobody",
    )

    @field_validator("operator_keys_sha256", mode="before")
    @classmethod
    def _parse_operator_keys(cls, value: object) -> object:
        return parse_key_digests(value, "OPERATOR_KEYS_SHA256")


DAY_S = 86400.0


class DiskSettings(SettingsBase):
    """Bounded disk for the spools (shared/dicomnet/retention.py; docs/OPERATIONS.md
    "Bounded disk")."""

    disk_min_free_bytes: int = Field(
        256 * 1024 ** 2, ge=0, description="free bytes kept on a spool's disk: below it new "
        "work is refused (C-STORE A700, STOW-RS 503 + Retry-After); 0 = no check",
    )
    retention_interval_s: float = Field(
        300.0, gt=0, description="how often finished work (failed/ folders, closed study "
        "reports) is pruned by its age and bytes limits",
    )
