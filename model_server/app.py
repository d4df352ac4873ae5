"""The OIP (KServe v2 REST) app around one model: wiring only.

Both model services are this app around a different
:class:`~model_server.lifecycle.BatchedModel`. Requests are split into single
images (:mod:`model_server.infer`), batched dynamically across clients
(:mod:`model_server.batching`), run on the model's device, and reassembled per request
by the routes (:mod:`model_server.routes`); what they share is a
:class:`~model_server.served.Served`. The model itself sits in a
:class:`~model_server.repository.ModelRepository`, which Triton's model repository
extension (:mod:`model_server.repository_api`) swaps without a failed request. Every
refusal is a :class:`~model_server.errors.ServingError` mapped by one handler.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from model_server.batching import DynamicBatcher
from model_server.errors import ServingError
from model_server.lifecycle import BatchedModel, BundleModel
from model_server.metrics import ModelMetrics
from model_server.repository import ModelBuilder, ModelRepository, run_jobs
from model_server.repository_api import RepositoryAccess
from model_server.repository_api import router as repository_router
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
    repository: ModelRepository, batcher: Batcher
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        # The start-up load runs beside the server: /v2/health/live answers at once.
        loading = asyncio.create_task(repository.start(), name="model-load")
        yield
        if not loading.done():
            loading.cancel()  # its thread ends with the load; the process is exiting
        await batcher.stop()

    return lifespan


def create_model_app(
    model: BatchedModel | None,
    *,
    title: str,
    max_batch_size: int,
    max_delay_ms: float,
    max_queue_size: int,
    settings: ModelServerSettings,
    request_timeout_s: float = DEFAULT_INFER_DEADLINE_S,
    build: ModelBuilder | None = None,
    name: str | None = None,
) -> FastAPI:
    """The KServe v2 REST app (with Triton's binary tensor and model repository
    extensions) around ``model``, loaded at start-up; ``None``: no model until one is
    loaded through the repository API (``build`` makes the model of a bundle folder,
    ``name`` is the model's).

    ``settings`` supplies INTERNAL_TOKEN, MODEL_REPOSITORY_ROOT and the request limits.
    """
    model_name = model.name if model is not None else name
    if model_name is None:
        raise ValueError("a model server without a model at start needs its model's name")
    metrics = ModelMetrics(model_name)
    batcher: Batcher = DynamicBatcher(
        run_jobs,
        max_batch_size=max_batch_size,
        max_delay_ms=max_delay_ms,
        max_queue_size=max_queue_size,
        on_batch=metrics.observe_batch,
    )
    repository = ModelRepository(
        model_name, build or _no_builder, request_timeout_s + 5.0,
        first=model, model_dir=getattr(model, "model_dir", None),
    )
    metrics.watch_model(repository)
    app = FastAPI(title=title, version="1", lifespan=_lifespan(repository, batcher))
    app.state.served = Served(
        title, repository, batcher, metrics, request_timeout_s, BodyLimits.from_settings(settings)
    )
    app.state.repository_access = RepositoryAccess.from_settings(settings)
    app.include_router(router)
    app.include_router(repository_router)
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


def _no_builder(model_dir: Path) -> BatchedModel:
    raise RuntimeError("this server cannot load bundles from folders")


def bundle_model(
    model_type: type[BundleModel], settings: ModelServerSettings, model_dir: Path
) -> BundleModel:
    """The model of the bundle in ``model_dir``, as start-up and every load make it."""
    return model_type(model_dir, settings.model_device, settings.torch_threads, settings=settings)


def create_bundle_app(
    model_type: type[BundleModel], title: str, settings: ModelServerSettings
) -> FastAPI:
    """The OIP app of a model service, configured by the settings its entry point read:
    ``MODEL_DIR`` loaded at start, or (``MODEL_LOAD_AT_START=false``) nothing until a
    load through the repository API."""
    model = None
    if settings.model_load_at_start:
        if settings.model_dir is None:
            raise RuntimeError(
                "MODEL_DIR is not set (`spine classifier|detector` chooses the default bundle)"
            )
        model = bundle_model(model_type, settings, settings.model_dir)
    elif settings.model_repository_root is None:
        raise RuntimeError("MODEL_LOAD_AT_START=false needs MODEL_REPOSITORY_ROOT: without "
                           "the repository API nothing could ever be loaded")
    return create_model_app(
        model,
        title=title,
        max_batch_size=settings.max_batch_size,
        max_delay_ms=settings.max_delay_ms,
        max_queue_size=settings.max_queue_size,
        settings=settings,
        build=lambda folder: bundle_model(model_type, settings, folder),
        name=model_type.name,
    )
