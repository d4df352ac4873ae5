"""Refusals are audited too: the one place every answer of the gateway passes.

:class:`RefusalAuditMiddleware` writes a line (event ``refused``, or ``failure`` for a
5xx) for a 401, 403, 408, 413, 415, 429, 503 or any 5xx (and any exception) that the
route did not audit itself: a refusal by admission (API key, rate, concurrency) never
reaches a route. Such a line carries the request id, the caller (key id and address),
the route and our error message; never a header value, a query, a body or an unknown path.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from gateway.audit import AuditLog
from shared.logging import request_id_var
from shared.observability import ASGIApp, Message, Receive, Scope, Send, route_label

log = logging.getLogger(__name__)

# Answers that refused a caller: audited even when no route ran.
REFUSED_STATUSES = frozenset({401, 403, 408, 413, 415, 429, 503})
# Probes ask for readiness, they are not refused: their 503 is not an audit event.
PROBE_PATHS = frozenset({"/livez", "/readyz"})
# Where a route that audits its own outcome marks the request (scope["state"]).
AUDITED = "audited"
# The most of an error body read back for its message.
MAX_ERROR_BODY = 4096


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
