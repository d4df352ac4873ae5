"""What every process's settings are built on: one pydantic-settings base and the fields
every process reads (logging, the internal token, the cache root).

Each process has its own class (:mod:`shared.settings`), read from the environment once
by its entry point and passed down; a field two processes read lives once, here or in a
section of :mod:`shared.settings.sections`. The variable of a field is its name in
capitals, whichever class reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

S = TypeVar("S", bound=BaseSettings)


class SettingsBase(BaseSettings):
    """Environment only (no .env file), names in any case; other processes' variables
    are ignored, so one environment can serve every process."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)


class TracingMode(StrEnum):
    """Where spans go (shared/tracing.py; docs/OPERATIONS.md "Tracing")."""

    OFF = "off"  # no span, no OpenTelemetry import
    FILE = "file"  # JSON lines per process under TRACING_DIR
    OTLP = "otlp"  # OTLP/HTTP to OTEL_EXPORTER_OTLP_ENDPOINT


class CommonSettings(SettingsBase):
    """Read by every process."""

    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    log_json: bool = Field(True, description="One JSON object per log line")
    internal_token: SecretStr | None = Field(
        None, description="Model services refuse OIP calls without it; the gateway sends it"
    )
    spine_cache_dir: Path | None = Field(
        None, description="cache root (built bundles, ONNX exports, samples, Ultralytics "
        "config: shared.paths.cache_root); None = ~/.cache/spine",
    )
    yolo_config_dir: Path | None = Field(
        None, description="Ultralytics' settings folder (read by Ultralytics itself); "
        "None = <cache root>/ultralytics",
    )
    tracing: TracingMode = Field(
        TracingMode.OFF, description="spans of each request (W3C traceparent across the "
        "services): off, file (JSON lines in TRACING_DIR) or otlp (OTLP/HTTP); needs the "
        "`tracing` extra unless off",
    )
    tracing_dir: Path | None = Field(
        None, description="folder TRACING=file writes <service>-<pid>.jsonl into, one span "
        "per line",
    )
    otel_exporter_otlp_endpoint: str | None = Field(
        None, description="OTLP/HTTP collector root for TRACING=otlp (spans go to "
        "{url}/v1/traces); None = the SDK's http://localhost:4318",
    )
    otel_resource_attributes: str | None = Field(
        None, description="key=value,... added to every span's resource, e.g. "
        "host.name=gpu-3 (read by the OpenTelemetry SDK itself)",
    )

    @field_validator("tracing", mode="before")
    @classmethod
    def _lower_tracing(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _tracing_dir_given(self) -> CommonSettings:
        if self.tracing is TracingMode.FILE and self.tracing_dir is None:
            raise ValueError("TRACING=file needs TRACING_DIR")
        return self


def documented_defaults(cls: type[S], **overrides: object) -> S:
    """``cls`` with its documented defaults (and ``overrides``), the environment not read:
    for what must not depend on where it runs (an artifact built from a fixed recipe)."""
    return cls.model_construct(**overrides)


def child_settings(cls: type[S], environ: Mapping[str, str]) -> S:
    """``cls`` as a child process started with ``environ`` will read it, where ``environ``
    is this process's environment plus the child's own variables (which win): for a
    launcher deciding from a child's environment (the bench's stack variants)."""
    fields = cls.model_fields
    return cls(**{k.lower(): v for k, v in environ.items() if k.lower() in fields})


def split_list(value: object, *, strip_slash: bool = False) -> object:
    """``"a, b,"`` -> ``["a", "b"]`` (a trailing ``/`` dropped from each for URLs)."""
    if not isinstance(value, str):
        return value
    parts = [part.strip() for part in value.split(",") if part.strip()]
    return [part.rstrip("/") for part in parts] if strip_slash else parts


def parse_key_digests(value: object, variable: str) -> object:
    """``id1:hex,id2:hex`` -> ``{id: hex}`` (ids name callers in logs, never the key)."""
    if not isinstance(value, str):
        return value
    keys: dict[str, str] = {}
    hexdigits = set("0123456789abcdef")
    for item in filter(None, (part.strip() for part in value.split(","))):
        key_id, _, digest = item.partition(":")
        digest = digest.strip().lower()
        if not key_id.strip() or len(digest) != 64 or not set(digest) <= hexdigits:
            raise ValueError(f"{variable} entries are 'id:<64 hex digits of sha256(key)>'")
        keys[key_id.strip()] = digest
    return keys
