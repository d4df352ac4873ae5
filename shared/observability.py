"""Per-request context for every service: request id, access log line, HTTP metrics.

A pure ASGI middleware rather than Starlette's ``BaseHTTPMiddleware``: the body stream,
client disconnects and task cancellation reach the routes unchanged (the routes watch
for a client that has gone so its work is dropped, not computed), and an unexpected
exception still gets a JSON 500 that names the request id, with the same headers as
every other response.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared import tracing
from shared.errors import ServiceError
from shared.logging import request_id_var

log = logging.getLogger("spine.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
T = TypeVar("T")

REQUEST_ID_HEADER = "X-Request-ID"
# Accepted from the caller only if it cannot forge log lines or headers.
SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
MAX_HEADER_COUNT = 100
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
# Probes and scrapes are logged at DEBUG: at INFO they would drown the real traffic.
QUIET_PATHS = frozenset(
    {"/livez", "/readyz", "/health", "/metrics", "/v2/health/live", "/v2/health/ready"}
)


# A model's own readiness (the gateway polls every replica's): a probe too, for tracing.
MODEL_READY_PATH = re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/ready$")


class HttpMetrics:
    """Requests by route and status, latency by route, requests in flight."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "spine_http_requests_total", "HTTP requests by route template, method and status",
            ["route", "method", "status"], registry=registry,
        )
        self.latency = Histogram(
            "spine_http_request_duration_seconds", "HTTP request latency by route template",
            ["route", "method"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.in_flight = Gauge(
            "spine_http_requests_in_flight", "HTTP requests being handled", registry=registry
        )


def route_label(scope: Scope) -> str:
    """The route template (``/v2/models/{name}/infer``), never the raw path: bounded labels."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    return "static" if str(scope.get("path", "")).startswith("/static/") else "unmatched"


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


async def send_json(
    send: Send, status: int, body: dict[str, Any], headers: Iterable[tuple[str, str]] = ()
) -> None:
    """A complete JSON response, for middlewares that answer before the app."""
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


class ClientDisconnectedError(ServiceError):
    """The caller closed the connection before the answer was ready (499: nobody reads it)."""

    status_code = 499


async def until_disconnect(receive: Receive) -> None:
    """Return once the client has gone (call only after the whole body was read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(work: Awaitable[T], receive: Receive) -> T:
    """Await ``work``; if the client disconnects first, cancel it and raise.

    Cancelling propagates down: upstream HTTP calls are aborted, their connections
    closed, and the model servers in turn drop the queued images of this request.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(until_disconnect(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # retrieved: nobody will read it now
        raise ClientDisconnectedError("client closed the request")
    return task.result()


def _traceparent(scope: Scope) -> dict[str, str]:
    """The caller's W3C trace context; ``{}`` (a new trace) when it sent none. Never the
    current context: a server's connection task may still hold an earlier request's."""
    if not tracing.enabled():
        return {}
    value = header(scope, b"traceparent")
    return {tracing.TRACEPARENT: value} if value else {}


class RequestContextMiddleware:
    """Request id in/out and in the log context, header limits, metrics, access log.

    ``response_headers(path)`` gives headers added to every response (security headers);
    ones the route already set win. ``error_body(status, message)`` shapes the JSON of
    the errors this middleware answers itself (431, 500) like the service's other errors.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: HttpMetrics | None = None,
        response_headers: Callable[[str], list[tuple[str, str]]] | None = None,
        error_body: Callable[[int, str], dict[str, Any]] | None = None,
        max_header_bytes: int = 16384,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.response_headers = response_headers or (lambda _path: [])
        self.error_body = error_body or (lambda _status, message: {"error": message})
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        supplied = header(scope, b"x-request-id") or ""
        request_id = supplied if SAFE_REQUEST_ID.match(supplied) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        path = str(scope.get("path", ""))
        # Probes and scrapes make no spans: a trace is a request someone waits for.
        probe = path in QUIET_PATHS or MODEL_READY_PATH.match(path)
        traced = contextlib.nullcontext() if probe else tracing.span(
            "HTTP request", parent=_traceparent(scope), kind="server",
            **{"spine.request_id": request_id},
        )
        try:
            with traced as live:
                await self._handle(scope, receive, send, request_id, live)
        finally:
            request_id_var.reset(token)

    async def _handle(
        self, scope: Scope, receive: Receive, send: Send, request_id: str, live: Any
    ) -> None:
        path = str(scope.get("path", ""))
        extra = [(k.lower().encode("latin-1"), v.encode("latin-1"))
                 for k, v in [(REQUEST_ID_HEADER, request_id), *self.response_headers(path)]]
        started = time.perf_counter()
        state: dict[str, Any] = {"status": 500, "started": False}

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                state["started"] = True
                present = {key.lower() for key, _ in message.get("headers", ())}
                message["headers"] = [
                    *message.get("headers", ()), *(h for h in extra if h[0] not in present)
                ]
            await send(message)

        if self.metrics is not None:
            self.metrics.in_flight.inc()
        try:
            headers = scope.get("headers", ())
            size = sum(len(key) + len(value) for key, value in headers)
            if size > self.max_header_bytes or len(headers) > MAX_HEADER_COUNT:
                await send_json(send_with_headers, 431, self.error_body(
                    431, f"request headers too large (limit {self.max_header_bytes} bytes, "
                    f"{MAX_HEADER_COUNT} headers)"))
            else:
                await self.app(scope, receive, send_with_headers)
        except Exception:  # noqa: BLE001 - answered here so it carries the request id
            log.exception("unexpected error")
            if not state["started"]:
                await send_json(send_with_headers, 500, self.error_body(
                    500, "internal error; the request id identifies it in the log"))
        finally:
            elapsed = time.perf_counter() - started
            route, method = route_label(scope), str(scope.get("method", ""))
            status = state["status"]
            tracing.annotate(live, name=f"{method} {route}",
                             **{"http.route": route, "http.response.status_code": status})
            if self.metrics is not None:
                self.metrics.in_flight.dec()
                self.metrics.requests.labels(route, method, str(status)).inc()
                self.metrics.latency.labels(route, method).observe(elapsed)
            log.log(
                logging.DEBUG if path in QUIET_PATHS else logging.INFO,
                "%s %s %s", method, path, status,
                extra={"http_method": method, "route": route, "status": status,
                       "duration_ms": round(elapsed * 1000, 2),
                       "key_id": scope.get("state", {}).get("key_id")},
            )
