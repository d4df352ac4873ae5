"""Audit log for research governance: one JSON line per analysis or refusal, no PHI.

Each line says who (API key id), when, which image (a keyed hash of the Study and
SOP Instance UIDs: joinable across lines and with the operator's own records, not
reversible without PSEUDONYM_SECRET), what came out, with which model bundle and
checkpoint hashes, and how long it took. The sink is its own: a file
(``AUDIT_LOG_PATH``, reopened if logrotate moves it) or, without a path, the logger
``spine.audit`` in the service log. The analysis routes write their lines through
:mod:`gateway.http.recording`; refusals no route saw through
:mod:`gateway.http.refusals`.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.pipeline.phi import keyed_digest
from gateway.schemas import UploadResponse
from shared.dicom import DicomMetadata

AUDIT_LOGGER = "spine.audit"

@dataclass
class AuditFacts:
    """What the pipeline learns about a request that the audit line needs (memory only)."""

    study_instance_uid: str | None = None
    sop_instance_uid: str | None = None

    def note(self, metadata: DicomMetadata) -> None:
        """Keep the decoded image's UIDs (hashed when written), for a later failure too."""
        self.study_instance_uid = metadata.study_instance_uid
        self.sop_instance_uid = metadata.sop_instance_uid


def uid_hash(secret: str, uid: str | None) -> str | None:
    """HMAC-SHA256 of a DICOM UID, 32 hex digits; domain-separated from patient pseudonyms."""
    if not uid:
        return None
    return keyed_digest(secret, uid, hex_digits=32, domain=b"dicom-uid:")


class AuditLog:
    def __init__(self, path: Path | None, secret: str, enabled: bool = True) -> None:
        self.enabled = enabled
        self.secret = secret
        self.logger = logging.getLogger(AUDIT_LOGGER)
        self._to_file = False
        if path is not None and enabled:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                handler = logging.handlers.WatchedFileHandler(path, encoding="utf-8")
            except OSError as exc:  # keep serving; the lines go to the service log instead
                self.logger.error("cannot open AUDIT_LOG_PATH %s (%s); using the log", path, exc)
                return
            handler.setFormatter(logging.Formatter("%(message)s"))
            self.logger = logging.getLogger(f"{AUDIT_LOGGER}.file.{id(self)}")
            self.logger.handlers = [handler]
            self.logger.propagate = False
            self.logger.setLevel(logging.INFO)
            self._to_file = True

    def close(self) -> None:
        if self._to_file:
            for handler in self.logger.handlers:
                handler.close()

    def record(
        self,
        *,
        event: str,
        key_id: str | None,
        request_id: str,
        status: int,
        facts: AuditFacts,
        duration_ms: float,
        result: UploadResponse | None = None,
        error: str | None = None,
    ) -> dict[str, Any] | None:
        """Write one line; returns the entry (for tests), None when auditing is off."""
        if not self.enabled:
            return None
        entry: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "event": event,
            "key_id": key_id,
            "request_id": request_id,
            "study_uid_hash": uid_hash(self.secret, facts.study_instance_uid),
            "sop_uid_hash": uid_hash(self.secret, facts.sop_instance_uid),
            "status": status,
            "outcome": _outcome(status, result),
            "duration_ms": round(duration_ms, 2),
        }
        if result is not None:
            entry.update(
                diagnosis=result.diagnosis,
                abnormal_probability=result.abnormal_probability,
                detections=None if result.detections is None else len(result.detections),
                warnings=len(result.warnings),
                bundle=result.model_bundle.name,
                bundle_kind=result.model_bundle.kind,
                checkpoints=result.model_bundle.checkpoints,
            )
        if error is not None:
            entry["error"] = error[:300]  # our messages; they never quote DICOM values
        self._write(entry)
        return entry


    def refusal(
        self,
        *,
        request_id: str,
        status: int,
        method: str,
        route: str,
        key_id: str | None,
        client: str | None,
        duration_ms: float,
        error: str | None,
    ) -> dict[str, Any] | None:
        """One line for a refused or failed request that no route audited."""
        if not self.enabled:
            return None
        entry: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "event": "failure" if status >= 500 else "refused",
            "key_id": key_id,
            "request_id": request_id,
            "status": status,
            "outcome": _outcome(status, None),
            "method": method,
            "route": route,
            "client": client,
            "duration_ms": round(duration_ms, 2),
        }
        if error is not None:
            entry["error"] = error[:300]  # our messages; they never quote DICOM values
        self._write(entry)
        return entry

    def _write(self, entry: dict[str, Any]) -> None:
        if self._to_file:
            self.logger.info(json.dumps(entry, sort_keys=False))
        else:
            self.logger.info("audit", extra={"audit": entry})


def _outcome(status: int, result: UploadResponse | None) -> str:
    if result is not None:
        return "partial" if result.detections is None else "complete"
    if status < 300:
        return "complete"
    if status == 499:
        return "cancelled"
    return "refused" if status < 500 else "error"
