"""The DICOM listener's settings (``spine dicom-listener``; docs/INTEGRATION.md,
docs/OPERATIONS.md "DICOM listener"): read once by its entry point, passed to
``dicom_listener.service.run``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from shared.settings.base import CommonSettings, split_list
from shared.settings.sections import (
    DAY_S,
    DiskSettings,
    ListenerEndpointSettings,
    OperatorKeysSettings,
    ResultsDeliverySettings,
    SelectionRulesSettings,
)


class ListenerSettings(
    CommonSettings, ListenerEndpointSettings, ResultsDeliverySettings, SelectionRulesSettings,
    OperatorKeysSettings, DiskSettings,
):
    """The C-STORE SCP, its spool and study reports, and its client of the gateway."""

    # --- associations --------------------------------------------------------------------
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

    # --- DICOM TLS on the listener's port (docs/OPERATIONS.md "DICOM TLS") ----------------
    listener_tls_cert: Path | None = Field(
        None, description="PEM certificate (chain) the DICOM listener presents to TLS "
        "callers; with LISTENER_TLS_KEY its port accepts DICOM TLS associations (TLS 1.2+)",
    )
    listener_tls_key: Path | None = Field(
        None, description="PEM private key (unencrypted) of LISTENER_TLS_CERT"
    )
    listener_tls_ca: Path | None = Field(
        None, description="PEM CA certificate(s) a TLS caller's client certificate must chain "
        "to; set = a caller without a valid client certificate is refused; None = none asked",
    )
    listener_tls_required: bool = Field(
        False, description="refuse plain (unencrypted) associations on the listener's port; "
        "false = plain and TLS callers both accepted (needs LISTENER_TLS_CERT for TLS)",
    )

    # --- the spool and the study reports -------------------------------------------------
    listener_spool_dir: Path | None = Field(
        None, description="where received instances wait (durably) for analysis; "
        "None = SPINE_CACHE_DIR/listener/spool; one listener per folder (a second is refused)",
    )
    listener_results_dir: Path | None = Field(
        None, description="one JSON report per study; None = SPINE_CACHE_DIR/listener/studies"
    )
    listener_max_instance_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="largest instance accepted by C-STORE "
        "(bigger: status A700 out of resources)",
    )
    listener_spool_max_bytes: int = Field(
        2 * 1024 ** 3, ge=1024, description="most bytes waiting in the spool (incoming/ and "
        "results/); a C-STORE beyond it is answered A700 (out of resources), so the sender "
        "retries later",
    )
    listener_failed_max_age_s: float = Field(
        30 * DAY_S, ge=0, description="files in the spool's failed/ and failed/results/ "
        "older than this are deleted; 0 = kept whatever their age",
    )
    listener_failed_max_bytes: int = Field(
        1024 ** 3, ge=0, description="most bytes kept in failed/ and in failed/results/ "
        "(each); beyond, the oldest files are deleted; 0 = no cap",
    )
    listener_reports_max_age_s: float = Field(
        90 * DAY_S, ge=0, description="closed study reports (LISTENER_RESULTS_DIR) older "
        "than this are deleted (open ones never); 0 = kept whatever their age",
    )
    listener_reports_max_bytes: int = Field(
        256 * 1024 ** 2, ge=0, description="most bytes of study reports kept; beyond, the "
        "oldest closed ones are deleted; 0 = no cap",
    )
    listener_study_idle_s: float = Field(
        15.0, gt=0, description="a study is closed (reported) this long after its last "
        "instance arrived, once all its instances are done",
    )

    # --- sending to the gateway ----------------------------------------------------------
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

    @field_validator("listener_allowed_ae_titles", mode="before")
    @classmethod
    def _parse_ae_titles(cls, value: object) -> object:
        return split_list(value)
