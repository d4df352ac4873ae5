"""The OIP (KServe v2 REST) app around one model: routes, admission and error mapping.

Both model services are this app around a different
:class:`~model_server.lifecycle.BatchedModel`. Requests are split into single
images, batched dynamically across clients (:mod:`model_server.batching`), run on
the model's device, and reassembled per request. Every refusal is a
:class:`~model_server.errors.ServingError` mapped by one handler.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.datastructures import Headers

from model_server.batching import DynamicBatcher
from model_server.errors import (
    ClientGoneError,
    InputError,
    ModelFailedError,
    ModelNotReadyError,
    QueueFullError,
    RequestTooLargeError,
    ServingError,
    UnknownModelError,
)
from model_server.lifecycle import BatchedModel, BundleModel
from model_server.metrics import ModelMetrics
from shared import contract, oip
from shared.bodies import BodyRefusedError, read_capped
from shared.observability import (
    ASGIApp,
    ClientDisconnectedError,
    Receive,
    RequestContextMiddleware,
    Scope,
    Send,
    send_json,
    unless_disconnected,
)
from shared.settings import Settings, get_settings

log = logging.getLogger(__name__)

# Probes and scrapes stay open when INTERNAL_TOKEN is set (kubelet and Prometheus).
# Deadline of one infer call when the caller sends no ``timeout`` parameter (the gateway
# always sends its own, UPSTREAM_TIMEOUT_S = 60 s by default, which then wins): twice that,
# so a direct OIP caller gets a 504 rather than waiting forever on a stuck queue.
DEFAULT_INFER_DEADLINE_S = 120.0
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"})
MAX_IMAGE_PIXELS = 64 * 1024 * 1024
MIN_IMAGE_SIDE = 8
# MODEL_MAX_BODY_BYTES by default: N images of 4096 x 4096 UINT8 (binary tensor data)
# plus room for the JSON header.
DEFAULT_IMAGE_BYTES = 4096 * 4096
BODY_ENVELOPE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class BodyLimits:
    """What one infer request may cost before a byte of it reaches the model."""

    max_images: int = 8
    max_bytes: int = 8 * DEFAULT_IMAGE_BYTES + BODY_ENVELOPE_BYTES
    timeout_s: float = 30.0
    idle_timeout_s: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings) -> BodyLimits:
        images = settings.model_max_images_per_request or settings.max_batch_size
        return cls(
            max_images=images,
            max_bytes=settings.model_max_body_bytes
            or images * DEFAULT_IMAGE_BYTES + BODY_ENVELOPE_BYTES,
            timeout_s=settings.model_body_timeout_s,
            idle_timeout_s=settings.http_body_idle_timeout_s,
        )

T = TypeVar("T")
Batcher = DynamicBatcher[np.ndarray, dict[str, np.ndarray]]
router = APIRouter()


@dataclass
class Served:
    """What the routes share: the model, its batcher and metrics, the server's limits."""

    title: str
    model: BatchedModel
    batcher: Batcher
    metrics: ModelMetrics
    request_timeout_s: float
    limits: BodyLimits = BodyLimits()

    def check_name(self, name: str) -> None:
        if name != self.model.name:
            raise UnknownModelError(
                f"unknown model {name!r}; this server serves {self.model.name!r}"
            )

    def admit(self) -> None:
        """Refuse before the body is read: model loading, or the queue already full."""
        if not self.model.ready:
            raise ModelNotReadyError(f"model {self.model.name} is not ready")
        if self.batcher.queue_depth >= self.batcher.max_queue_size:
            raise QueueFullError("inference queue is full")

    def admit_images(self, count: int) -> None:
        """Refuse a request over the batch limit, or one the queue has no room for."""
        if count > self.limits.max_images:
            raise RequestTooLargeError(
                f"{count} images in one request; the limit is {self.limits.max_images} "
                "(MODEL_MAX_IMAGES_PER_REQUEST)"
            )
        if self.batcher.queue_depth + count > self.batcher.max_queue_size:
            raise QueueFullError("inference queue is full")

    def model_config(self) -> dict[str, Any]:
        """Triton's JSON model configuration of the loaded model: its tensors, batching
        limits and the bundle facts as ``parameters`` (what the gateway reads)."""
        if not self.model.ready:
            raise ModelNotReadyError(f"model {self.model.name} is not ready")
        metadata = self.model.metadata()
        return contract.model_configuration(
            self.model.name,
            inputs=metadata.inputs,
            outputs=metadata.outputs,
            parameters=self.model.config_parameters(),
            max_batch_size=self.batcher.max_batch_size,
            max_queue_delay_us=round(self.batcher.max_delay * 1e6),
            instance_kind=self.model.instance_kind(),
            platform=metadata.platform,
        )

    async def read_body(self, request: Request) -> bytes:
        """The body under MODEL_MAX_BODY_BYTES and MODEL_BODY_TIMEOUT_S, read chunk by chunk."""
        try:
            return await read_capped(
                request.stream(), request.headers.get("content-length"),
                limit=self.limits.max_bytes, setting="MODEL_MAX_BODY_BYTES",
                idle_timeout_s=self.limits.idle_timeout_s, total_timeout_s=self.limits.timeout_s,
            )
        except BodyRefusedError as exc:
            raise RequestTooLargeError(exc.message, status_code=exc.status_code) from exc


def _served(request: Request) -> Served:
    served: Served = request.app.state.served
    return served


def split_images(array: np.ndarray) -> list[np.ndarray]:
    """UINT8 ``[N,1,H,W]`` or ``[N,H,W]`` -> N contiguous ``(H, W)`` images."""
    name = contract.IMAGE.name
    if array.dtype != np.uint8:
        raise InputError(f"{name} must be UINT8, got {array.dtype}")
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 3:
        raise InputError(f"{name} must have shape [N,1,H,W] or [N,H,W], got {list(array.shape)}")
    n, height, width = array.shape
    if n < 1 or height < MIN_IMAGE_SIDE or width < MIN_IMAGE_SIDE:
        raise InputError(f"{name} shape {list(array.shape)} is too small")
    if height * width > MAX_IMAGE_PIXELS:
        raise InputError(f"{name} of {height}x{width} is too large")
    return [np.ascontiguousarray(image) for image in array]


def read_images(headers: Headers, body: bytes) -> tuple[oip.InferenceRequest, list[np.ndarray]]:
    """The infer request and its images; anything off-protocol is an InputError."""
    try:
        raw_length = headers.get(oip.HEADER_LENGTH)
        header_length = int(raw_length) if raw_length is not None else None
        infer_request, tensors = oip.decode_request(body, header_length)
        if contract.IMAGE.name not in tensors:
            raise InputError(f"missing input tensor {contract.IMAGE.name!r}")
        return infer_request, split_images(tensors[contract.IMAGE.name])
    except (ValueError, oip.OipError) as exc:
        raise InputError(str(exc)) from exc


def _caller_timeout_s(parameters: dict[str, Any]) -> float | None:
    """Triton's ``timeout`` request parameter (microseconds) in seconds, if usable."""
    value = parameters.get(contract.TIMEOUT_PARAMETER)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return float(value) / 1e6


async def _run(
    served: Served, images: list[np.ndarray], deadline: float, receive: Receive
) -> list[dict[str, np.ndarray]]:
    """Every image through the batcher; dropped if the caller goes away meanwhile."""
    try:
        results = await unless_disconnected(
            _all_or_none([served.batcher.submit(image, deadline=deadline) for image in images]),
            receive,
        )
    except ClientDisconnectedError as exc:
        log.info("caller went away; its queued images were dropped")
        raise ClientGoneError("client closed the request") from exc
    except ServingError:
        raise  # queue full, deadline passed
    except Exception as exc:  # noqa: BLE001 - a model failure is a real server error
        log.exception("inference failed")
        raise ModelFailedError("inference failed; the request id identifies it in the log") from exc
    return list(results)


async def _all_or_none(work: list[Awaitable[T]]) -> list[T]:
    """Await all; on the first failure (or cancellation) cancel the rest, so the images
    of a request that has already failed are dropped from the queue, not computed."""
    tasks = [asyncio.ensure_future(item) for item in work]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
            elif not task.cancelled():
                task.exception()  # retrieved: only the first failure is reported


def _requested(
    outputs: dict[str, np.ndarray], infer_request: oip.InferenceRequest
) -> dict[str, np.ndarray]:
    """The outputs the request names (all when it names none)."""
    requested = [item.name for item in infer_request.outputs or []]
    if not requested:
        return outputs
    unknown = [item for item in requested if item not in outputs]
    if unknown:
        raise InputError(f"unknown output(s) {unknown}; available {list(outputs)}")
    return {key: outputs[key] for key in requested}


@router.get("/v2", tags=["server"])
async def server_metadata(request: Request) -> dict[str, Any]:
    return {
        "name": _served(request).title, "version": "1",
        "extensions": ["binary_tensor_data", "model_configuration"],
    }


@router.get("/v2/health/live", tags=["health"])
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/v2/health/ready", tags=["health"])
async def ready(request: Request) -> Response:
    model = _served(request).model
    if model.ready:
        return JSONResponse({"ready": True})
    return JSONResponse({"ready": False, "error": model.load_error}, status_code=503)


@router.get("/v2/models/{name}", tags=["model"])
@router.get("/v2/models/{name}/versions/{version}", tags=["model"], include_in_schema=False)
async def model_metadata(name: str, request: Request, version: str | None = None) -> Response:
    served = _served(request)
    served.check_name(name)
    return JSONResponse(served.model.metadata().model_dump())


@router.get("/v2/models/{name}/config", tags=["model"])
@router.get("/v2/models/{name}/versions/{version}/config", tags=["model"], include_in_schema=False)
async def model_config(name: str, request: Request, version: str | None = None) -> Response:
    """Triton's model-configuration extension; 503 until the model has loaded."""
    served = _served(request)
    served.check_name(name)
    return JSONResponse(served.model_config())


@router.get("/v2/models/{name}/ready", tags=["model"])
@router.get("/v2/models/{name}/versions/{version}/ready", tags=["model"], include_in_schema=False)
async def model_ready(name: str, request: Request, version: str | None = None) -> Response:
    served = _served(request)
    served.check_name(name)
    is_ready = served.model.ready
    return JSONResponse({"name": name, "ready": is_ready}, status_code=200 if is_ready else 503)


@router.post("/v2/models/{name}/infer", tags=["model"])
@router.post("/v2/models/{name}/versions/{version}/infer", tags=["model"], include_in_schema=False)
async def infer(name: str, request: Request, version: str | None = None) -> Response:
    served = _served(request)
    served.check_name(name)
    served.admit()
    started = time.perf_counter()
    infer_request, images = read_images(request.headers, await served.read_body(request))
    served.admit_images(len(images))
    budget = served.request_timeout_s
    if (caller_s := _caller_timeout_s(infer_request.parameters)) is not None:
        budget = min(budget, caller_s)
    served.metrics.set_queue_depth(served.batcher.queue_depth)
    results = await _run(served, images, started + budget, request.receive)
    outputs = _requested(served.model.merge_outputs(results), infer_request)
    elapsed = time.perf_counter() - started
    payload, headers = oip.encode_response(
        served.model.name,
        outputs,
        request_id=infer_request.id,
        binary={key for key in outputs if oip.wants_binary(infer_request, key)},
        parameters={"server_ms": round(elapsed * 1000, 3)},
        model_version=served.model.model_version(),
    )
    served.metrics.observe_request(elapsed)
    return Response(content=payload, headers=headers, media_type=headers["Content-Type"])


@router.get("/metrics", tags=["metrics"], include_in_schema=False)
async def prometheus_metrics(request: Request) -> Response:
    served = _served(request)
    return Response(
        served.metrics.exposition(served.batcher.queue_depth), media_type=CONTENT_TYPE_LATEST
    )


async def refuse(request: Request, exc: Exception) -> Response:
    """Every refusal: its status, ``{"error": message}``, Retry-After if advised, counted."""
    assert isinstance(exc, ServingError)
    if exc.reason is not None:
        _served(request).metrics.fail(exc.reason)
    headers = None if exc.retry_after_s is None else {"Retry-After": f"{exc.retry_after_s:g}"}
    return JSONResponse(status_code=exc.status_code, content={"error": exc.message},
                        headers=headers)


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
    request_timeout_s: float = DEFAULT_INFER_DEADLINE_S,
    settings: Settings | None = None,
) -> FastAPI:
    """The KServe v2 REST app (with Triton's binary tensor extension) around ``model``.

    ``settings`` (default: the environment) supplies INTERNAL_TOKEN.
    """
    settings = settings or get_settings()
    metrics = ModelMetrics(model.name)
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
    model_type: type[BundleModel], title: str, settings: Settings | None = None
) -> FastAPI:
    """The OIP app of a model service, configured from the environment."""
    settings = settings or get_settings()
    if settings.model_dir is None:
        raise RuntimeError("MODEL_DIR is not set (the `spine` CLI sets it to the default bundle)")
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
