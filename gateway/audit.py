"""Audit log for research governance: one JSON line per analysis, no PHI.

Each line says who (API key id), when, which image (a keyed hash of the Study and
SOP Instance UIDs: joinable across lines and with the operator's own records, not
reversible without PSEUDONYM_SECRET), what came out, with which model bundle and
checkpoint hashes, and how long it took. The sink is its own: a file
(``AUDIT_LOG_PATH``, reopened if logrotate moves it) or, without a path, the logger
``spine.audit`` in the service log.

Refusals are audited too (event ``refused``, or ``failure`` for a 5xx): every answer of
the gateway passes :class:`RefusalAuditMiddleware`, which writes a line for a 401, 403,
408, 413, 415, 429, 503 or any 5xx (and any exception) that the route did not audit
itself: a refusal by admission (API key, rate, concurrency) never reaches a route. Such
a line carries the request id, the caller (key id and address), the route and our
error message; never a header value, a query, a body or an unknown path.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.phi import keyed_digest
from gateway.schemas import UploadResponse
from shared.logging import request_id_var
from shared.observability import ASGIApp, Message, Receive, Scope, Send, route_label

log = logging.getLogger(__name__)

AUDIT_LOGGER = "spine.audit"
# Answers that refused a caller: audited even when no route ran.
REFUSED_STATUSES = frozenset({401, 403, 408, 413, 415, 429, 503})
# Probes ask for readiness, they are not refused: their 503 is not an audit event.
PROBE_PATHS = frozenset({"/livez", "/readyz"})
# Where a route that audits its own outcome marks the request (scope["state"]).
AUDITED = "audited"
# The most of an error body read back for its message.
MAX_ERROR_BODY = 4096


@dataclass
class AuditFacts:
    """What the pipeline learns about a request that the audit line needs (memory only)."""

    study_instance_uid: str | None = None
    sop_instance_uid: str | None = None


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


def mark_audited(scope: Scope) -> None:
    """Tell :class:`RefusalAuditMiddleware` that this request has its audit line."""
    scope.setdefault("state", {})[AUDITED] = True


class RefusalAuditMiddleware:
    """Audits every refusal and failure on its way out: the one place all answers pass.

    ``audit()`` gives the app's :class:`AuditLog` (created in the lifespan), or None.
    Sits inside the request-context middleware (so the request id is set) and outside
    admission, CORS and the routes.
    """

    def __init__(self, app: ASGIApp, *, audit: Callable[[Scope], AuditLog | None]) -> None:
        self.app = app
        self.audit = audit
        self._known_paths: frozenset[str] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        seen: dict[str, Any] = {"status": None, "body": b""}

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            elif message["type"] == "http.response.body" and self._refused(scope, seen["status"]):
                seen["body"] = (seen["body"] + message.get("body", b""))[:MAX_ERROR_BODY]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            self._record(scope, seen["status"] or 500, started, "unexpected failure")
            raise
        status = seen["status"]
        if self._refused(scope, status) and not scope.get("state", {}).get(AUDITED):
            self._record(scope, status, started, _message(seen["body"]))

    @staticmethod
    def _refused(scope: Scope, status: int | None) -> bool:
        if status is None or not (status in REFUSED_STATUSES or status >= 500):
            return False
        return not (status == 503 and scope.get("path") in PROBE_PATHS)

    def _route(self, scope: Scope) -> str:
        """The route template, or the path if it is one of the app's: never a stray path."""
        route = route_label(scope)
        if route != "unmatched":
            return route
        if self._known_paths is None:
            routes = getattr(scope.get("app"), "routes", ())
            paths = (getattr(r, "path", None) for r in routes)
            self._known_paths = frozenset(p for p in paths if isinstance(p, str))
        path = str(scope.get("path", ""))
        return path if path in self._known_paths else "unmatched"

    def _record(self, scope: Scope, status: int, started: float, error: str | None) -> None:
        try:
            audit = self.audit(scope)
            if audit is None:
                return
            client = scope.get("client")
            audit.refusal(
                request_id=request_id_var.get() or "",
                status=status,
                method=str(scope.get("method", "")),
                route=self._route(scope),
                key_id=scope.get("state", {}).get("key_id"),
                client=str(client[0]) if client else None,
                duration_ms=(time.perf_counter() - started) * 1000,
                error=error,
            )
        except Exception:  # noqa: BLE001 - an audit failure must not change the answer
            log.exception("audit log write failed")


def _message(body: bytes) -> str | None:
    """The ``message`` of our error JSON, if the body is one."""
    try:
        message = json.loads(body).get("message")
    except (ValueError, AttributeError):
        return None
    return message if isinstance(message, str) else None


def _outcome(status: int, result: UploadResponse | None) -> str:
    if result is not None:
        return "partial" if result.detections is None else "complete"
    if status < 300:
        return "complete"
    if status == 499:
        return "cancelled"
    return "refused" if status < 500 else "error"
