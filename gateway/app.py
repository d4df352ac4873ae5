"""The public HTTP API: routes only; the work happens in ``gateway.analysis``.

Around the routes, outermost first: request context (request id, security headers,
header limits, metrics, access log), CORS (only with an allow-list), admission (API
key, rate and concurrency limits), then FastAPI. Each analysis has a deadline
(``REQUEST_TIMEOUT_S``) and stops when its client disconnects.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway import samples
from gateway.admission import AdmissionMiddleware
from gateway.analysis import Gateway, analyze, bundle_summary, decode, decode_options
from gateway.audit import AuditFacts
from gateway.ratelimit import ConcurrencyLimiter, TokenBucketLimiter, retry_after_header
from gateway.security import ApiKeys, docs_page, security_headers
from gateway.telemetry import GatewayMetrics
from gateway.upload import UploadError, read_file_field
from shared import dicom
from shared.contract import ServedFacts, demo_warning
from shared.errors import ServiceError
from shared.logging import request_id_var
from shared.observability import (
    REQUEST_ID_HEADER,
    RequestContextMiddleware,
    unless_disconnected,
)
from shared.schemas import ErrorResponse, HealthResponse, ServiceHealth, UploadResponse
from shared.settings import Settings, get_settings

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
T = TypeVar("T")
# Headers a browser on an allowed origin may read from our answers.
EXPOSED_HEADERS = [
    REQUEST_ID_HEADER, "Retry-After", "X-Original-Width", "X-Original-Height",
    "X-Canonical-Width", "X-Canonical-Height", "X-Scale-X", "X-Scale-Y", "X-Warnings",
]


class DeadlineError(ServiceError):
    """The request's deadline passed before the answer was ready (504)."""

    status_code = 504

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "A DICOM file (.dcm / .dicom)",
                        }
                    },
                }
            }
        },
    }
}


def _error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "Not a readable DICOM, or a malformed request",
        401: "API keys are configured and the request has no valid one",
        408: "The upload was not received within UPLOAD_TIMEOUT_S",
        413: "Upload larger than MAX_CONTENT_LENGTH",
        415: "Not multipart/form-data",
        422: "Valid DICOM that cannot be analysed (no pixels, colour, multi-frame, ...)",
        429: "Rate limit or concurrent uploads per caller exceeded (see Retry-After)",
        503: "A model service or the gateway is unavailable or at capacity (see Retry-After)",
        504: "No answer within the deadline (REQUEST_TIMEOUT_S / UPSTREAM_TIMEOUT_S)",
    }
    return {code: {"model": ErrorResponse, "description": descriptions[code]} for code in codes}


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = ErrorResponse(message=message, request_id=request_id_var.get())
    return JSONResponse(status_code=status, content=body.model_dump(), headers=headers)


def _error_body(status: int, message: str) -> dict[str, Any]:
    return ErrorResponse(message=message, request_id=request_id_var.get()).model_dump()


async def _within(work: Awaitable[T], request: Request, seconds: float) -> T:
    """``work`` bounded by ``seconds`` and cancelled if the client goes away."""
    try:
        async with asyncio.timeout(seconds):
            return await unless_disconnected(work, request.receive)
    except TimeoutError as exc:
        raise DeadlineError(
            f"no answer within the {seconds:g} s deadline; no diagnosis was made"
        ) from exc


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    metrics = GatewayMetrics()
    api_keys = ApiKeys(settings.api_keys_sha256)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gateway = Gateway.create(settings, metrics)
        gateway.decodable = dicom.decodable_transfer_syntaxes(decode_options(settings))
        app.state.gateway = gateway
        missing = [name for name, ok in gateway.decodable.items() if not ok]
        log.info("gateway up; transfer syntaxes without a decoder: %s", missing or "none")
        log.info(
            "security: api keys %s, rate limit %s/min, cors %s, internal token %s",
            "on" if api_keys.enabled else "off", settings.rate_limit_per_minute or "off",
            settings.cors_allow_origins or "off", "set" if settings.internal_token else "unset",
        )
        yield
        await gateway.close()

    app = FastAPI(
        title="Spine lesion service",
        version="0.1.0",
        description=(
            "Classifies a spine radiograph (DICOM) as Normal/Abnormal with a weighted ensemble "
            "and localises lesions with YOLO. **For research only: not a medical device.**"
        ),
        lifespan=lifespan,
        docs_url=None,  # served below with its own CSP
        redoc_url=None,  # would need fonts and scripts from two more hosts
    )
    # add_middleware puts each one outside the previous: admission innermost.
    app.add_middleware(
        AdmissionMiddleware,
        keys=api_keys,
        rate=TokenBucketLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
        if settings.rate_limit_per_minute > 0 else None,
        slots=ConcurrencyLimiter(settings.max_uploads_per_client, settings.max_inflight_uploads),
        metrics=metrics,
    )
    if settings.cors_allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allow_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "X-API-Key", REQUEST_ID_HEADER, "Content-Type"],
            expose_headers=EXPOSED_HEADERS,
            allow_credentials=False,
            max_age=600,
        )
    app.add_middleware(
        RequestContextMiddleware,
        metrics=metrics.http,
        response_headers=lambda path: security_headers(path, settings.hsts_seconds),
        error_body=_error_body,
        max_header_bytes=settings.max_header_bytes,
    )
    if api_keys.enabled:
        _document_api_keys(app)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return error_response(400, f"invalid request: {where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(500, "internal error; the request id identifies it in the log")

    def _gateway(request: Request) -> Gateway:
        return request.app.state.gateway

    async def _read_upload(request: Request) -> bytes:
        try:
            async with asyncio.timeout(settings.upload_timeout_s):
                data, _filename = await read_file_field(
                    request.headers.get("content-type"),
                    request.headers.get("content-length"),
                    request.stream(),
                    settings.max_content_length,
                )
        except TimeoutError as exc:
            raise UploadError(
                f"the upload was not received within {settings.upload_timeout_s:g} s",
                status_code=408,
            ) from exc
        if not data:
            raise UploadError("the uploaded file is empty")
        return data

    def _audit(
        request: Request, event: str, status: int, facts: AuditFacts, started: float,
        result: UploadResponse | None = None, error: str | None = None,
    ) -> None:
        audit = _gateway(request).audit
        if audit is None:
            return
        try:
            audit.record(
                event=event, key_id=request.scope.get("state", {}).get("key_id"),
                request_id=request_id_var.get() or "", status=status, facts=facts,
                duration_ms=(time.perf_counter() - started) * 1000, result=result, error=error,
            )
        except Exception:  # noqa: BLE001 - a full disk must not turn a result into a 500
            log.exception("audit log write failed")

    def _failure(
        request: Request, event: str, facts: AuditFacts, started: float, exc: ServiceError
    ) -> JSONResponse:
        """The error answer (and audit line) for every way an analysis can fail."""
        headers = None
        if exc.retry_after_s is not None:
            headers = {"Retry-After": retry_after_header(exc.retry_after_s)}
        if event == "analysis":
            result = "cancelled" if exc.status_code == 499 else "error"
            _gateway(request).metrics.analyses.labels(result).inc()
        _audit(request, event, exc.status_code, facts, started, error=exc.message)
        return error_response(exc.status_code, exc.message, headers)

    @app.post(
        "/upload",
        response_model=UploadResponse,
        response_model_by_alias=True,
        responses=_error_responses(400, 408, 413, 415, 422, 429, 503, 504),
        openapi_extra=UPLOAD_BODY,
        summary="Analyse one DICOM spine radiograph",
        tags=["analysis"],
    )
    async def upload(
        request: Request,
        annotate: bool = Query(True, description="Return the annotated PNG (false skips it)"),
        canonical_image: bool = Query(
            False, description="Also return the canonical image the models saw (no boxes)"
        ),
    ) -> Any:
        started = time.perf_counter()
        facts = AuditFacts()
        try:
            data = await _read_upload(request)
            result = await _within(
                analyze(
                    _gateway(request),
                    data,
                    annotate=annotate,
                    request_id=request_id_var.get() or "",
                    include_canonical=canonical_image,
                    deadline=time.monotonic() + settings.request_timeout_s,
                    facts=facts,
                ),
                request,
                settings.request_timeout_s,
            )
        except ServiceError as exc:
            return _failure(request, "analysis", facts, started, exc)
        _gateway(request).metrics.analyses.labels(
            "partial" if result.detections is None else "complete"
        ).inc()
        _audit(request, "analysis", 200, facts, started, result=result)
        return JSONResponse(result.model_dump(by_alias=True))

    @app.post(
        "/preview",
        response_class=Response,
        responses={
            200: {
                "content": {"image/png": {}},
                "description": "The canonical 8-bit grey image the models see. Headers "
                "X-Original-Width/Height, X-Canonical-Width/Height, X-Scale-X/Y.",
            },
            **_error_responses(400, 408, 413, 415, 422, 429, 503, 504),
        },
        openapi_extra=UPLOAD_BODY,
        summary="The canonical image the models would see",
        tags=["analysis"],
    )
    async def preview(request: Request) -> Response:
        started = time.perf_counter()
        facts = AuditFacts()
        try:
            data = await _read_upload(request)
            canonical, metadata = await _within(
                decode(_gateway(request), data), request, settings.request_timeout_s
            )
        except ServiceError as exc:
            return _failure(request, "preview", facts, started, exc)
        facts.study_instance_uid = metadata.study_instance_uid
        facts.sop_instance_uid = metadata.sop_instance_uid
        _audit(request, "preview", 200, facts, started)
        height, width = canonical.pixels.shape
        headers = {
            "X-Original-Width": str(canonical.original_columns),
            "X-Original-Height": str(canonical.original_rows),
            "X-Canonical-Width": str(width),
            "X-Canonical-Height": str(height),
            "X-Scale-X": repr(canonical.scale_x),
            "X-Scale-Y": repr(canonical.scale_y),
        }
        if canonical.warnings:
            headers["X-Warnings"] = " | ".join(canonical.warnings)[:1000]
        return Response(dicom.encode_png(canonical.pixels), media_type="image/png", headers=headers)

    @app.get("/health", response_model=HealthResponse, tags=["health"], summary="Service health")
    async def health(request: Request) -> HealthResponse:
        gateway = _gateway(request)
        services: dict[str, ServiceHealth] = {}
        params: dict[str, dict[str, Any] | None] = {}
        for client in (gateway.classifier, gateway.detector):
            replicas = await client.replica_readiness()
            ready = any(replicas.values())
            found = params[client.service] = await client.model_parameters() if ready else None
            services[client.service] = ServiceHealth(
                ready=ready,
                replicas=replicas,
                model_bundle=bundle_summary(ServedFacts.from_parameters(found), None)
                if found and "checkpoints" in found
                else None,
                device=(found or {}).get("device"),
            )
        classifier_ready = services["classifier"].ready
        detector_ready = services["detector"].ready
        status = (
            "healthy"
            if classifier_ready and detector_ready
            else "degraded"
            if classifier_ready
            else "unhealthy"
        )
        devices = sorted({s.device for s in services.values() if s.device})
        demo = any(bool((p or {}).get("demo")) for p in params.values())
        warnings = []
        bundle = services["classifier"].model_bundle
        if bundle is not None and (text := demo_warning(bundle.kind)):
            warnings.append(text)
        if not detector_ready:
            warnings.append("detector service not ready: uploads get classification only")
        return HealthResponse(
            status=status,
            models_loaded=classifier_ready and detector_ready,
            device=",".join(devices) or "unknown",
            timestamp=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            services=services,
            demo=demo,
            warnings=warnings,
            decodable_transfer_syntaxes=gateway.decodable,
        )

    @app.get("/livez", tags=["health"], summary="Liveness: the process answers")
    async def livez() -> dict[str, str]:
        return {"status": "alive"}

    @app.get(
        "/readyz",
        tags=["health"],
        summary="Readiness: the classifier can be reached",
        responses=_error_responses(503),
    )
    async def readyz(request: Request) -> Any:
        replicas = await _gateway(request).classifier.replica_readiness()
        if any(replicas.values()):
            return {"status": "ready"}
        return error_response(503, "classifier service not ready", {"Retry-After": "5"})

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return docs_page(app.openapi_url or "/openapi.json", f"{app.title} - Swagger UI")

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        page = STATIC_DIR / "index.html"
        if not page.is_file():
            return error_response(404, "the web page is not installed; use /docs")
        return FileResponse(page, headers={"Cache-Control": "no-cache"})

    app.include_router(samples.router)
    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    return app


def _document_api_keys(app: FastAPI) -> None:
    """Declare the API key schemes in OpenAPI, so Swagger's "Authorize" button sends one."""
    from gateway.admission import PROTECTED_PATHS

    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {})["securitySchemes"] = {
                "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "BearerKey": {"type": "http", "scheme": "bearer"},
            }
            for path in PROTECTED_PATHS:
                for operation in schema.get("paths", {}).get(path, {}).values():
                    operation["security"] = [{"ApiKeyHeader": []}, {"BearerKey": []}]
                    operation.setdefault("responses", {})["401"] = {
                        "description": "No valid API key",
                        "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
                    }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
