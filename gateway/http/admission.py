"""Who may start an analysis, how often, and how many at once.

An ASGI middleware in front of the routes that do work (``POST /upload``,
``POST /preview``). Before any body is read, so a refused caller costs no upload
bandwidth, no memory and no decode: API key (401), per-caller rate (429), per-caller
concurrency (429). The gateway-wide slot (503) is taken only once the whole body has
arrived: a slow or stalled upload holds its caller's slots, never everyone's, so
clients trickling bodies cannot turn every other caller away. Each answer says when
to come back (``Retry-After``).
"""

from __future__ import annotations

from gateway.http.errors import error_body
from gateway.http.ratelimit import ConcurrencyLimiter, TokenBucketLimiter, retry_after_header
from gateway.http.security import ApiKeys
from gateway.telemetry import GatewayMetrics
from shared.errors import ServiceError
from shared.observability import ASGIApp, Message, Receive, Scope, Send, send_json

PROTECTED_PATHS = frozenset({"/upload", "/upload/dicom", "/preview", "/dicomweb/studies"})
PROTECTED_PREFIXES = ("/dicomweb/studies/",)  # STOW-RS into one study


def is_protected(path: str) -> bool:
    """Whether ``path`` (a request path or an OpenAPI template) does analysis work."""
    return path in PROTECTED_PATHS or path.startswith(PROTECTED_PREFIXES)


class AtCapacityError(ServiceError):
    """Every gateway-wide slot is taken (503): raised to the route as its body completes."""

    status_code = 503
    retry_after_s = 1


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
            or not is_protected(scope.get("path", ""))
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
        if not self.slots.try_acquire_caller(caller):
            await self._refuse(
                send, 429, "client_concurrency",
                f"too many uploads in progress from this caller (limit {self.slots.per_caller})",
                [("Retry-After", "1")],
            )
            return
        holding = [False]

        async def receive_then_admit() -> Message:
            message = await receive()
            if (message["type"] == "http.request" and not message.get("more_body", False)
                    and not holding[0]):
                if not self.slots.try_acquire_total():
                    self.metrics.rejections.labels("overloaded").inc()
                    raise AtCapacityError("the gateway is at capacity; retry shortly")
                holding[0] = True
                self.metrics.uploads_in_flight.inc()
            return message

        try:
            await self.app(scope, receive_then_admit, send)
        finally:
            self.slots.release_caller(caller)
            if holding[0]:
                self.slots.release_total()
                self.metrics.uploads_in_flight.dec()
