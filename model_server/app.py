"""The OIP (KServe v2 REST) app around one model: wiring only.

Both model services are this app around a different
:class:`~model_server.lifecycle.BatchedModel`. Requests are split into single
images (:mod:`model_server.infer`), batched dynamically across clients
(:mod:`model_server.batching`), run on the model's device, and reassembled per request
by the routes (:mod:`model_server.routes`); what they share is a
:class:`~model_server.served.Served`. Every refusal is a
:class:`~model_server.errors.ServingError` mapped by one handler.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI

from model_server.batching import DynamicBatcher
from model_server.errors import ServingError
from model_server.lifecycle import BatchedModel, BundleModel
from model_server.metrics import ModelMetrics
from model_server.routes import refuse, router
from model_server.served import Batcher, BodyLimits, Served
from shared.observability import ASGIApp, Receive, RequestContextMiddleware, Scope, Send, send_json
from shared.settings import ModelServerSettings

# Probes and scrapes stay open when INTERNAL_TOKEN is set (kubelet and Prometheus).
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"})
# Deadline of one infer call when the caller sends no ``timeout`` parameter (the gateway
# always sends its own, UPSTREAM_TIMEOUT_S = 60 s by default, which then wins): twice that,
# so a direct OIP caller gets a 504 rather than waiting forever on a stuck queue.
DEFAULT_INFER_DEADLINE_S = 120.0


class InternalTokenMiddleware:
    """Refuse every call but the probes and /metrics without ``Authorization: Bearer <token>``.

    Model services sit on an internal network; the token is a second lock, so a
    misrouted port or a neighbour on that network cannot run inference.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") not in OPEN_PATHS:
            supplied = dict(scope.get("headers", ())).get(b"authorization", b"")
            if not hmac.compare_digest(supplied, self.expected):
                await send_json(send, 401, {"error": "missing or wrong internal token"},
                                [("WWW-Authenticate", "Bearer")])
                return
        await self.app(scope, receive, send)


def _lifespan(
    model: BatchedModel, batcher: Batcher
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        model.load_in_background()
        yield
        await batcher.stop()

    return lifespan


def create_model_app(
    model: BatchedModel,
    *,
    title: str,
    max_batch_size: int,
    max_delay_ms: float,
    max_queue_size: int,
    settings: ModelServerSettings,
    request_timeout_s: float = DEFAULT_INFER_DEADLINE_S,
) -> FastAPI:
    """The KServe v2 REST app (with Triton's binary tensor extension) around ``model``.

    ``settings`` supplies INTERNAL_TOKEN and the request limits.
    """
    metrics = ModelMetrics(model.name)
    metrics.watch_model(model)
    batcher: Batcher = DynamicBatcher(
        model.predict_batch,
        max_batch_size=max_batch_size,
        max_delay_ms=max_delay_ms,
        max_queue_size=max_queue_size,
        on_batch=metrics.observe_batch,
    )
    app = FastAPI(title=title, version="1", lifespan=_lifespan(model, batcher))
    app.state.served = Served(
        title, model, batcher, metrics, request_timeout_s, BodyLimits.from_settings(settings)
    )
    app.include_router(router)
    app.add_exception_handler(ServingError, refuse)
    token = settings.internal_token.get_secret_value() if settings.internal_token else ""
    if token:
        app.add_middleware(InternalTokenMiddleware, token=token)
    app.add_middleware(
        RequestContextMiddleware,  # outermost: 401s and 500s get request ids and metrics too
        metrics=metrics.http,
        response_headers=lambda _path: [("X-Content-Type-Options", "nosniff")],
        max_header_bytes=settings.max_header_bytes,
    )
    return app


def create_bundle_app(
    model_type: type[BundleModel], title: str, settings: ModelServerSettings
) -> FastAPI:
    """The OIP app of a model service, configured by the settings its entry point read."""
    if settings.model_dir is None:
        raise RuntimeError(
            "MODEL_DIR is not set (`spine classifier|detector` chooses the default bundle)"
        )
    model = model_type(
        settings.model_dir, settings.model_device, settings.torch_threads, settings=settings
    )
    return create_model_app(
        model,
        title=title,
        max_batch_size=settings.max_batch_size,
        max_delay_ms=settings.max_delay_ms,
        max_queue_size=settings.max_queue_size,
        settings=settings,
    )
