"""Who may start an analysis, how often, and how many at once: before any body is read.

An ASGI middleware in front of the routes that do work (``POST /upload``,
``POST /preview``), so a refused caller costs no upload bandwidth, no memory and no
decode. Order: API key (401), per-caller rate (429), per-caller concurrency (429),
gateway-wide concurrency (503): each answer says when to come back (``Retry-After``).
"""

from __future__ import annotations

from gateway.errors import error_body
from gateway.ratelimit import ConcurrencyLimiter, TokenBucketLimiter, retry_after_header
from gateway.security import ApiKeys
from gateway.telemetry import GatewayMetrics
from shared.observability import ASGIApp, Receive, Scope, Send, send_json

PROTECTED_PATHS = frozenset({"/upload", "/preview"})


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return f"ip:{client[0]}" if client else "ip:unknown"


class AdmissionMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: ApiKeys,
        rate: TokenBucketLimiter | None,
        slots: ConcurrencyLimiter,
        metrics: GatewayMetrics,
    ) -> None:
        self.app = app
        self.keys = keys
        self.rate = rate
        self.slots = slots
        self.metrics = metrics

    async def _refuse(
        self, send: Send, status: int, reason: str, message: str, headers: list[tuple[str, str]]
    ) -> None:
        self.metrics.rejections.labels(reason).inc()
        await send_json(send, status, error_body(status, message), headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("method") != "POST"
            or scope.get("path") not in PROTECTED_PATHS
        ):
            await self.app(scope, receive, send)
            return
        key_id = None
        if self.keys.enabled:
            key_id = self.keys.identify(scope.get("headers", ()))
            if key_id is None:
                await self._refuse(
                    send, 401, "unauthenticated",
                    "a valid API key is required (Authorization: Bearer <key> or X-API-Key)",
                    [("WWW-Authenticate", 'Bearer realm="spine"')],
                )
                return
        scope.setdefault("state", {})["key_id"] = key_id
        caller = f"key:{key_id}" if key_id else client_address(scope)
        if self.rate is not None and (wait := self.rate.acquire(caller)) > 0:
            await self._refuse(
                send, 429, "rate_limited", "rate limit exceeded for this caller; retry later",
                [("Retry-After", retry_after_header(wait))],
            )
            return
        refused = self.slots.try_acquire(caller)
        if refused == "caller":
            await self._refuse(
                send, 429, "client_concurrency",
                f"too many uploads in progress from this caller (limit {self.slots.per_caller})",
                [("Retry-After", "1")],
            )
            return
        if refused == "total":
            await self._refuse(
                send, 503, "overloaded", "the gateway is at capacity; retry shortly",
                [("Retry-After", "1")],
            )
            return
        self.metrics.uploads_in_flight.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            self.slots.release(caller)
            self.metrics.uploads_in_flight.dec()
