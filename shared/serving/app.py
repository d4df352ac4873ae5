"""A model object with an explicit lifecycle, and the OIP (KServe v2) app that serves it.

Both model services are this app around a different :class:`BatchedModel`. The model
loads in a background thread at start-up (``/v2/health/live`` answers at once, ready
only once the checkpoints are loaded), requests are split into single images, batched
dynamically across clients, run on the model's device, and reassembled per request.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from shared import contract, oip
from shared.bundle import BundleManifest, load_manifest
from shared.observability import (
    ASGIApp,
    ClientDisconnectedError,
    HttpMetrics,
    Receive,
    RequestContextMiddleware,
    Scope,
    Send,
    send_json,
    unless_disconnected,
)
from shared.serving.batching import (
    BatchStats,
    DeadlineExceededError,
    DynamicBatcher,
    QueueFullError,
)
from shared.settings import Settings, get_settings

log = logging.getLogger(__name__)

# Probes and scrapes stay open when INTERNAL_TOKEN is set (kubelet and Prometheus).
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"})


class InputError(ValueError):
    """The request's tensors do not fit the model's input contract (answered with 400)."""


def split_images(array: np.ndarray) -> list[np.ndarray]:
    """UINT8 ``[N,1,H,W]`` or ``[N,H,W]`` -> N contiguous ``(H, W)`` images."""
    if array.dtype != np.uint8:
        raise InputError(f"{contract.IMAGE.name} must be UINT8, got {array.dtype}")
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 3:
        raise InputError(
            f"{contract.IMAGE.name} must have shape [N,1,H,W] or [N,H,W], got {list(array.shape)}"
        )
    n, height, width = array.shape
    if n < 1 or height < 8 or width < 8:
        raise InputError(f"{contract.IMAGE.name} shape {list(array.shape)} is too small")
    if height * width > 64 * 1024 * 1024:
        raise InputError(f"{contract.IMAGE.name} of {height}x{width} is too large")
    return [np.ascontiguousarray(image) for image in array]


class BatchedModel(ABC):
    """Lifecycle: ``load()`` once (blocking), then ``predict_batch`` on lists of images."""

    name: str

    def __init__(self) -> None:
        self.ready = False
        self.load_error: str | None = None
        self.load_seconds: float | None = None

    @abstractmethod
    def load(self) -> None:
        """Read checkpoints, move to the device, warm up. Raise with a clear message."""

    @abstractmethod
    def metadata(self) -> oip.ModelMetadata: ...

    @abstractmethod
    def predict_batch(self, images: list[np.ndarray]) -> Sequence[dict[str, np.ndarray]]:
        """One forward pass over single-channel uint8 images of any sizes."""

    @abstractmethod
    def merge_outputs(self, per_image: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Per-image outputs of one request -> the request's output tensors."""

    def response_parameters(self) -> dict[str, Any]:
        """Facts every infer response carries (bundle name, kind, checkpoint hashes)."""
        return {}


class BundleModel(BatchedModel):
    """A model served from a bundle folder: what both model services share.

    Holds the manifest, device and thread settings, and the bundle facts
    (:mod:`shared.contract`) that every metadata answer and infer response carries.
    """

    def __init__(
        self,
        model_dir: Path,
        device: str = "auto",
        torch_threads: int = 0,
        settings: Settings | None = None,
    ) -> None:
        super().__init__()
        self.model_dir = model_dir
        self.device_setting = device
        self.torch_threads = torch_threads
        self.settings = settings or get_settings()
        self.manifest: BundleManifest = load_manifest(model_dir)

    def bundle_facts(self) -> contract.BundleFacts:
        """What the manifest says; known before the checkpoints load."""
        return contract.BundleFacts(name=self.manifest.name, kind=self.manifest.kind)

    @abstractmethod
    def facts(self) -> contract.ServedFacts:
        """The loaded model's facts (checkpoint hashes, device, ...); only once loaded."""

    def known_facts(self) -> contract.BundleFacts:
        """What the metadata answer reports: full facts once loaded, the manifest's before."""
        return self.facts() if self.ready else self.bundle_facts()

    def response_parameters(self) -> dict[str, Any]:
        return self.facts().to_parameters()

    def warn_if_demo(self) -> None:
        warning = self.bundle_facts().demo_warning
        if warning:
            log.warning("%s Serve your own checkpoints with --model-dir / MODEL_DIR.", warning)


class _Metrics:
    """Prometheus metrics in Triton's naming where they mean the same thing."""

    def __init__(self, model: str) -> None:
        self.registry = CollectorRegistry()
        labels = ["model", "version"]
        self.labels = {"model": model, "version": "1"}
        self.success = Counter(
            "nv_inference_request_success", "Successful inference requests", labels,
            registry=self.registry,
        )
        self.failure = Counter(
            "nv_inference_request_failure", "Failed inference requests", labels + ["reason"],
            registry=self.registry,
        )
        self.count = Counter(
            "nv_inference_count", "Images inferred", labels, registry=self.registry
        )
        self.exec_count = Counter(
            "nv_inference_exec_count", "Batches executed", labels, registry=self.registry
        )
        self.queue_us = Counter(
            "nv_inference_queue_duration_us", "Cumulative queue time (us)", labels,
            registry=self.registry,
        )
        self.compute_us = Counter(
            "nv_inference_compute_infer_duration_us", "Cumulative compute time (us)", labels,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "spine_batch_size", "Images per executed batch", labels,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry,
        )
        self.request_seconds = Histogram(
            "spine_request_duration_seconds", "Infer request latency", labels,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "spine_queue_depth", "Images waiting for a batch", labels, registry=self.registry
        )
        self.pending = Gauge(
            "nv_inference_pending_request_count", "Images waiting for a batch (Triton name)",
            labels, registry=self.registry,
        )
        self.request_us = Counter(
            "nv_inference_request_duration_us", "Cumulative infer request time (us)", labels,
            registry=self.registry,
        )
        self.queue_seconds = Histogram(
            "spine_queue_duration_seconds", "Time one image waited for its batch", labels,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.compute_seconds = Histogram(
            "spine_compute_duration_seconds", "Model execution time of one batch", labels,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.http = HttpMetrics(self.registry)
        self.gpu_used = Gauge(
            "nv_gpu_memory_used_bytes", "GPU memory in use (whole device)", ["gpu_uuid"],
            registry=self.registry,
        )
        self.gpu_total = Gauge(
            "nv_gpu_memory_total_bytes", "GPU memory of the device", ["gpu_uuid"],
            registry=self.registry,
        )
        self.gpu_allocated = Gauge(
            "spine_gpu_memory_allocated_bytes", "GPU memory held by this process's tensors",
            ["gpu_uuid"], registry=self.registry,
        )

    def set_queue_depth(self, depth: int) -> None:
        self.queue_depth.labels(**self.labels).set(depth)
        self.pending.labels(**self.labels).set(depth)

    def observe_gpus(self) -> None:
        """GPU memory gauges, read at scrape time; nothing when torch has no CUDA device."""
        torch = sys.modules.get("torch")  # never import torch here: the model did, or no GPU
        if torch is None or not torch.cuda.is_available():
            return
        for index in range(torch.cuda.device_count()):
            try:
                free, total = torch.cuda.mem_get_info(index)
                name = str(getattr(torch.cuda.get_device_properties(index), "uuid", index))
            except Exception:  # noqa: BLE001 - metrics must never break the scrape
                continue
            self.gpu_used.labels(name).set(total - free)
            self.gpu_total.labels(name).set(total)
            self.gpu_allocated.labels(name).set(torch.cuda.memory_allocated(index))

    def observe_batch(self, stats: BatchStats) -> None:
        self.exec_count.labels(**self.labels).inc()
        self.count.labels(**self.labels).inc(stats.size)
        self.batch_size.labels(**self.labels).observe(stats.size)
        self.queue_us.labels(**self.labels).inc(sum(stats.queue_seconds) * 1e6)
        self.compute_us.labels(**self.labels).inc(stats.compute_seconds * 1e6)
        self.compute_seconds.labels(**self.labels).observe(stats.compute_seconds)
        for waited in stats.queue_seconds:
            self.queue_seconds.labels(**self.labels).observe(waited)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message}, headers=headers)


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


def _caller_timeout_s(parameters: dict[str, Any]) -> float | None:
    """Triton's ``timeout`` request parameter (microseconds) in seconds, if usable."""
    value = parameters.get(contract.TIMEOUT_PARAMETER)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return float(value) / 1e6


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


def create_model_app(
    model: BatchedModel,
    *,
    title: str,
    max_batch_size: int,
    max_delay_ms: float,
    max_queue_size: int,
    request_timeout_s: float = 120.0,
    settings: Settings | None = None,
) -> FastAPI:
    """The KServe v2 REST app (with Triton's binary tensor extension) around ``model``.

    ``settings`` (default: the environment) supplies INTERNAL_TOKEN.
    """
    settings = settings or get_settings()
    metrics = _Metrics(model.name)
    batcher: DynamicBatcher[np.ndarray, dict[str, np.ndarray]] = DynamicBatcher(
        model.predict_batch,
        max_batch_size=max_batch_size,
        max_delay_ms=max_delay_ms,
        max_queue_size=max_queue_size,
        on_batch=metrics.observe_batch,
    )

    def _load_in_background() -> None:
        started = time.perf_counter()
        try:
            model.load()
        except Exception as exc:  # noqa: BLE001 - reported through readiness and the log
            model.load_error = str(exc)
            log.error("model %s failed to load: %s", model.name, exc)
            return
        model.load_seconds = time.perf_counter() - started
        model.ready = True
        log.info("model %s ready in %.1f s", model.name, model.load_seconds)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        threading.Thread(target=_load_in_background, name="model-load", daemon=True).start()
        yield
        await batcher.stop()

    app = FastAPI(title=title, version="1", lifespan=lifespan)
    app.state.model = model
    token = settings.internal_token.get_secret_value() if settings.internal_token else ""
    if token:
        app.add_middleware(InternalTokenMiddleware, token=token)
    app.add_middleware(
        RequestContextMiddleware,  # outermost: 401s and 500s get request ids and metrics too
        metrics=metrics.http,
        response_headers=lambda _path: [("X-Content-Type-Options", "nosniff")],
        max_header_bytes=settings.max_header_bytes,
    )

    def _unknown(name: str) -> JSONResponse | None:
        if name != model.name:
            return _error(404, f"unknown model {name!r}; this server serves {model.name!r}")
        return None

    @app.get("/v2", tags=["server"])
    async def server_metadata() -> dict[str, Any]:
        return {"name": title, "version": "1", "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live", tags=["health"])
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready", tags=["health"])
    async def ready() -> Response:
        if model.ready:
            return JSONResponse({"ready": True})
        return JSONResponse({"ready": False, "error": model.load_error}, status_code=503)

    @app.get("/v2/models/{name}", tags=["model"])
    @app.get("/v2/models/{name}/versions/{version}", tags=["model"], include_in_schema=False)
    async def model_metadata(name: str, version: str | None = None) -> Response:
        if (missing := _unknown(name)) is not None:
            return missing
        return JSONResponse(model.metadata().model_dump())

    @app.get("/v2/models/{name}/ready", tags=["model"])
    @app.get("/v2/models/{name}/versions/{version}/ready", tags=["model"], include_in_schema=False)
    async def model_ready(name: str, version: str | None = None) -> Response:
        if (missing := _unknown(name)) is not None:
            return missing
        return JSONResponse(
            {"name": name, "ready": model.ready}, status_code=200 if model.ready else 503
        )

    @app.post("/v2/models/{name}/infer", tags=["model"])
    @app.post("/v2/models/{name}/versions/{version}/infer", tags=["model"], include_in_schema=False)
    async def infer(name: str, request: Request, version: str | None = None) -> Response:
        if (missing := _unknown(name)) is not None:
            return missing
        if not model.ready:
            metrics.failure.labels(**metrics.labels, reason="not_ready").inc()
            return _error(503, f"model {name} is not ready", {"Retry-After": "5"})
        if batcher.queue_depth >= batcher.max_queue_size:  # refuse before reading the body
            metrics.failure.labels(**metrics.labels, reason="queue_full").inc()
            return _error(503, "inference queue is full", {"Retry-After": "1"})
        started = time.perf_counter()
        body = await request.body()
        try:
            raw_length = request.headers.get(oip.HEADER_LENGTH)
            header_length = int(raw_length) if raw_length is not None else None
            infer_request, tensors = oip.decode_request(body, header_length)
            if contract.IMAGE.name not in tensors:
                raise InputError(f"missing input tensor {contract.IMAGE.name!r}")
            images = split_images(tensors[contract.IMAGE.name])
        except (ValueError, oip.OipError) as exc:
            metrics.failure.labels(**metrics.labels, reason="bad_request").inc()
            return _error(400, str(exc))
        budget = request_timeout_s
        if (caller_s := _caller_timeout_s(infer_request.parameters)) is not None:
            budget = min(budget, caller_s)
        deadline = started + budget
        metrics.set_queue_depth(batcher.queue_depth)
        try:
            results = await unless_disconnected(
                asyncio.gather(*(batcher.submit(image, deadline=deadline) for image in images)),
                request.receive,
            )
        except ClientDisconnectedError:
            metrics.failure.labels(**metrics.labels, reason="cancelled").inc()
            log.info("caller went away; its queued images were dropped")
            return _error(499, "client closed the request")
        except QueueFullError as exc:
            metrics.failure.labels(**metrics.labels, reason="queue_full").inc()
            return _error(503, str(exc), {"Retry-After": "1"})
        except DeadlineExceededError as exc:
            metrics.failure.labels(**metrics.labels, reason="deadline").inc()
            return _error(504, str(exc))
        except Exception as exc:  # noqa: BLE001 - a model failure is a real server error
            log.exception("inference failed")
            metrics.failure.labels(**metrics.labels, reason="model_error").inc()
            return _error(500, f"inference failed: {type(exc).__name__}: {exc}")
        outputs = model.merge_outputs(list(results))
        requested = [item.name for item in infer_request.outputs or []]
        if requested:
            unknown = [item for item in requested if item not in outputs]
            if unknown:
                return _error(400, f"unknown output(s) {unknown}; available {list(outputs)}")
            outputs = {key: outputs[key] for key in requested}
        binary = {key for key in outputs if oip.wants_binary(infer_request, key)}
        elapsed = time.perf_counter() - started
        parameters = {**model.response_parameters(), "server_ms": round(elapsed * 1000, 3)}
        payload, headers = oip.encode_response(
            model.name, outputs, request_id=infer_request.id, binary=binary, parameters=parameters
        )
        metrics.success.labels(**metrics.labels).inc()
        metrics.request_seconds.labels(**metrics.labels).observe(elapsed)
        metrics.request_us.labels(**metrics.labels).inc(elapsed * 1e6)
        return Response(content=payload, headers=headers, media_type=headers["Content-Type"])

    @app.get("/metrics", tags=["metrics"], include_in_schema=False)
    async def prometheus_metrics() -> Response:
        metrics.set_queue_depth(batcher.queue_depth)
        metrics.observe_gpus()
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
