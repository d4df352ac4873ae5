"""Structured logging shared by every service: JSON lines carrying the request id.

The request id lives in a context variable, set by each service's middleware, so every
log line written while handling a request names it without threading it through calls.
Log messages must never contain PHI: callers log ids, sizes and timings, not DICOM tags.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar

from shared import tracing

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
_configured = False


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, trace_id, extras."""

    _RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        if trace_id := tracing.trace_id():
            entry["trace_id"] = trace_id
        for key, value in vars(record).items():
            if key not in self._RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__(f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        request_id, trace_id = request_id_var.get(), tracing.trace_id()
        if trace_id:
            text = f"{text} [trace_id={trace_id}]"
        return f"{text} [request_id={request_id}]" if request_id else text


def configure_logging(service: str, level: str = "INFO", json_lines: bool = True) -> None:
    """Route the root logger (and uvicorn's) to stderr in one format; idempotent."""
    global _configured
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if json_lines else TextFormatter(service))
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, "_spine", False):
            root.removeHandler(existing)
    handler._spine = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
    # Access lines carry query strings only; keep them, they hold no PHI (uploads are bodies).
    # httpx logs every upstream call at INFO; the gateway's own access line and metrics
    # already cover them, so only its warnings are kept.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    _configured = True
