"""All configuration in one pydantic-settings class, read from the environment.

Every service reads the same class so an operator has one list of variables to learn
(documented in README.md). Only the fields a service uses matter to it.
"""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from typing import Annotated


class FusionMode(StrEnum):
    """How detector boxes are combined with the ensemble's Normal/Abnormal call."""

    PAPER = "paper"  # VinDr-SpineXR paper: Normal keeps only boxes with confidence >= 0.5
    SEED = "seed"  # the original app: no boxes at all when Normal


class PhiSetting(StrEnum):
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
    canonical_long_side: int = Field(1024, ge=64, le=8192)
    annotate_long_side: int = Field(1024, ge=64, le=8192)
    classifier_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["http://127.0.0.1:8001"]
    )
    detector_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["http://127.0.0.1:8002"]
    )
    upstream_timeout_s: float = Field(60.0, gt=0, description="Deadline for one model call")
    fusion_mode: FusionMode = FusionMode.PAPER
    fusion_normal_min_confidence: float = Field(0.5, ge=0, le=1)
    phi_mode: PhiSetting = PhiSetting.PSEUDONYMIZE
    pseudonym_secret: str = Field(
        "change-me", description="HMAC key for patient_id pseudonyms; set it in production"
    )
    decode_workers: int = Field(0, ge=0, description="Decode threads; 0 = number of cores")

    # --- model services ---
    model_dir: Path | None = Field(None, description="Model bundle folder; None = demo bundle")
    model_device: str = Field("auto", pattern="^(auto|cpu|cuda(:[0-9]+)?)$")
    max_batch_size: int = Field(8, ge=1, le=512)
    max_delay_ms: float = Field(5.0, ge=0)
    max_queue_size: int = Field(64, ge=1)
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads; 0 = torch default")

    @field_validator("classifier_urls", "detector_urls", mode="before")
    @classmethod
    def _parse_urls(cls, value: object) -> object:
        return _split_urls(value)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, read from the environment once."""
    return Settings()
