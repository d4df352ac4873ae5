"""The public HTTP API: routes only; the work happens in the modules they call.

One upload: :mod:`gateway.upload` reads the body, :mod:`gateway.analysis` decodes it and
asks the models, :mod:`gateway.response` builds the JSON; a failure becomes its answer
in :mod:`gateway.errors`; :mod:`gateway.health` aggregates the model services' health.
Around the routes, outermost first: request context (request id, security headers,
header limits, metrics, access log), the refusal audit (:mod:`gateway.audit`), CORS
(only with an allow-list), admission (API key, rate and concurrency limits), then FastAPI.
Each analysis has a deadline (``REQUEST_TIMEOUT_S``) and stops when its client
disconnects (:mod:`gateway.deadline`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway import dicom_out, dicomweb, samples
from gateway.admission import AdmissionMiddleware
from gateway.analysis import Findings, Gateway, analyze, decode
from gateway.audit import AuditFacts, AuditLog, RefusalAuditMiddleware, mark_audited
from gateway.deadline import within
from gateway.errors import (
    error_body,
    error_response,
    error_responses,
    register_error_handlers,
    service_error_response,
)
from gateway.health import check_ready, health_report, public_health
from gateway.ratelimit import ConcurrencyLimiter, TokenBucketLimiter
from gateway.response import preview_headers, upload_response
from gateway.schemas import HealthResponse, UploadResponse
from gateway.security import (
    SWAGGER_ASSETS,
    ApiKeys,
    docs_page,
    document_api_keys,
    security_headers,
    swagger_assets_dir,
)
from gateway.telemetry import GatewayMetrics
from gateway.upload import MultipartLimits, receive_upload
from shared import dicom
from shared.errors import ServiceError
from shared.logging import request_id_var
from shared.observability import REQUEST_ID_HEADER, RequestContextMiddleware
from shared.settings import Settings, get_settings

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
# Headers a browser on an allowed origin may read from our answers.
EXPOSED_HEADERS = [
    REQUEST_ID_HEADER, "Retry-After", "X-Original-Width", "X-Original-Height",
    "X-Canonical-Width", "X-Canonical-Height", "X-Scale-X", "X-Scale-Y", "X-Warnings",
]
# The statuses an analysis route may answer besides 200.
ANALYSIS_ERRORS = (400, 408, 413, 415, 422, 429, 502, 503, 504)

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

router = APIRouter()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    metrics = GatewayMetrics()
    api_keys = ApiKeys(settings.api_keys_sha256)
    app = FastAPI(
        title="Spine lesion service",
        version="0.1.0",
        description=(
            "Classifies a spine radiograph (DICOM) as Normal/Abnormal with a weighted ensemble "
            "and localises lesions with YOLO. **For research only: not a medical device.**"
        ),
        lifespan=_lifespan(settings, metrics, api_keys),
        docs_url=None,  # served below with its own CSP
        redoc_url=None,  # would need fonts and scripts from two more hosts
    )
    app.state.metrics = metrics
    app.state.operator_keys = ApiKeys(settings.operator_keys_sha256)  # /health details
    _add_middleware(app, settings, metrics, api_keys)
    if api_keys.enabled:
        document_api_keys(app)
    register_error_handlers(app)
    app.include_router(router)
    app.include_router(samples.router)
    app.include_router(dicomweb.router)
    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    if (swagger := swagger_assets_dir()) is not None:
        app.mount(SWAGGER_ASSETS, StaticFiles(directory=swagger), name="swagger-ui")
    return app


def _lifespan(
    settings: Settings, metrics: GatewayMetrics, api_keys: ApiKeys
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Start-up and shut-down: the model clients, decode pool and audit log of one app."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gateway = Gateway.create(settings, metrics)
        app.state.gateway = gateway
        await gateway.start()
        missing = [name for name, ok in gateway.decodable.items() if not ok]
        log.info("gateway up; transfer syntaxes without a decoder: %s", missing or "none")
        log.info("results delivery: %s", gateway.delivery.describe())
        log.info(
            "security: api keys %s, rate limit %s/min, cors %s, internal token %s",
            "on" if api_keys.enabled else "off", settings.rate_limit_per_minute or "off",
            settings.cors_allow_origins or "off", "set" if settings.internal_token else "unset",
        )
        yield
        await gateway.close()

    return lifespan


def _add_middleware(
    app: FastAPI, settings: Settings, metrics: GatewayMetrics, api_keys: ApiKeys
) -> None:
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
    app.add_middleware(RefusalAuditMiddleware, audit=_audit_log)
    app.add_middleware(
        RequestContextMiddleware,
        metrics=metrics.http,
        response_headers=lambda path: security_headers(path, settings.hsts_seconds),
        error_body=error_body,
        max_header_bytes=settings.max_header_bytes,
    )


def _audit_log(scope: dict[str, Any]) -> AuditLog | None:
    """The audit log of the app serving ``scope`` (None before start-up)."""
    gateway = getattr(scope["app"].state, "gateway", None)
    return gateway.audit if gateway is not None else None


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


async def _read_upload(request: Request) -> bytes:
    settings = _gateway(request).settings
    return await receive_upload(
        request.headers.get("content-type"),
        request.headers.get("content-length"),
        request.stream(),
        settings.max_content_length,
        settings.upload_timeout_s,
        MultipartLimits(
            max_parts=settings.multipart_max_parts,
            max_part_header_bytes=settings.multipart_max_part_header_bytes,
            idle_timeout_s=settings.http_body_idle_timeout_s,
        ),
    )


def _audit(
    request: Request, event: str, status: int, facts: AuditFacts, started: float,
    result: UploadResponse | None = None, error: str | None = None,
) -> None:
    audit = _gateway(request).audit
    mark_audited(request.scope)
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
    """The error answer (and audit line, and metric) of an analysis or preview that failed."""
    if event == "analysis":
        result = "cancelled" if exc.status_code == 499 else "error"
        _gateway(request).metrics.analyses.labels(result).inc()
    _audit(request, event, exc.status_code, facts, started, error=exc.message)
    return service_error_response(exc)


@router.post(
    "/upload",
    response_model=UploadResponse,
    response_model_by_alias=True,
    responses=error_responses(*ANALYSIS_ERRORS),
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
    analysed = await _analyse(request, annotate=annotate, canonical_image=canonical_image)
    if isinstance(analysed, Response):
        return analysed
    return JSONResponse(analysed[1].model_dump(by_alias=True))


async def _analyse(
    request: Request, *, annotate: bool, canonical_image: bool
) -> tuple[Findings, UploadResponse] | Response:
    """One audited analysis: its findings and JSON, or the error answer."""
    gateway = _gateway(request)
    timeout_s = gateway.settings.request_timeout_s
    started = time.perf_counter()
    facts = AuditFacts()
    try:
        data = await _read_upload(request)
        findings = await within(
            analyze(
                gateway,
                data,
                annotate=annotate,
                request_id=request_id_var.get() or "",
                include_canonical=canonical_image,
                deadline=time.monotonic() + timeout_s,
                facts=facts,
            ),
            request,
            timeout_s,
        )
    except ServiceError as exc:
        return _failure(request, "analysis", facts, started, exc)
    result = upload_response(findings, gateway.settings)
    gateway.metrics.analyses.labels("partial" if result.detections is None else "complete").inc()
    _audit(request, "analysis", 200, facts, started, result=result)
    return findings, result


@router.post(
    "/upload/dicom",
    response_class=Response,
    responses={
        200: {
            "content": {
                dicom_out.MULTIPART: {"schema": {"type": "string", "format": "binary"}},
                dicom_out.DICOM: {"schema": {"type": "string", "format": "binary"}},
            },
            "description": "multipart/related: the Comprehensive 3D SR (TID 1500), the "
            "Grayscale Softcopy Presentation State (each application/dicom, Content-ID "
            "<sr> / <gsps>) and the /upload JSON (application/json, <analysis>). With "
            "parts=sr or parts=gsps and `Accept: application/dicom`, that one object "
            "alone. Server-Timing: dicom;dur=<ms spent writing the objects>.",
        },
        **error_responses(*ANALYSIS_ERRORS),
    },
    openapi_extra=UPLOAD_BODY,
    summary="Analyse one radiograph and answer with DICOM SR + presentation state",
    tags=["analysis"],
)
async def upload_dicom(
    request: Request,
    parts: dicom_out.Parts = Query(
        dicom_out.Parts.ALL, description="all (SR + GSPS), sr or gsps"
    ),
) -> Response:
    analysed = await _analyse(request, annotate=False, canonical_image=False)
    if isinstance(analysed, Response):
        return analysed
    findings, result = analysed
    try:
        answer = await dicom_out.dicom_answer(
            _gateway(request), findings, result, parts, request.headers.get("accept")
        )
    except ServiceError as exc:
        return service_error_response(exc)
    headers = {"Server-Timing": f"dicom;dur={answer.write_ms:.1f}"}
    if answer.filename:
        headers["Content-Disposition"] = f'attachment; filename="{answer.filename}"'
    return Response(answer.body, media_type=answer.media_type, headers=headers)


@router.post(
    "/preview",
    response_class=Response,
    responses={
        200: {
            "content": {"image/png": {}},
            "description": "The canonical 8-bit grey image the models see. Headers "
            "X-Original-Width/Height, X-Canonical-Width/Height, X-Scale-X/Y.",
        },
        **error_responses(*ANALYSIS_ERRORS),
    },
    openapi_extra=UPLOAD_BODY,
    summary="The canonical image the models would see",
    tags=["analysis"],
)
async def preview(request: Request) -> Response:
    gateway = _gateway(request)
    started = time.perf_counter()
    facts = AuditFacts()
    try:
        data = await _read_upload(request)
        canonical, metadata = await within(
            decode(gateway, data), request, gateway.settings.request_timeout_s
        )
    except ServiceError as exc:
        return _failure(request, "preview", facts, started, exc)
    facts.study_instance_uid = metadata.study_instance_uid
    facts.sop_instance_uid = metadata.sop_instance_uid
    _audit(request, "preview", 200, facts, started)
    return Response(
        dicom.encode_png(canonical.pixels), media_type="image/png",
        headers=preview_headers(canonical),
    )


@router.get("/health", response_model=HealthResponse, tags=["health"], summary="Service health")
async def health(request: Request) -> HealthResponse:
    gateway = _gateway(request)
    report = await health_report(gateway)
    if request.app.state.operator_keys.identify(request.headers.raw) is None:
        return public_health(report)  # no replica URLs, bundle paths or hashes
    return report


@router.get("/livez", tags=["health"], summary="Liveness: the process answers")
async def livez() -> dict[str, str]:
    return {"status": "alive"}


@router.get(
    "/readyz",
    tags=["health"],
    summary="Readiness: the classifier can be reached",
    responses=error_responses(503),
)
async def readyz(request: Request) -> Any:
    try:
        await check_ready(_gateway(request))
    except ServiceError as exc:
        return service_error_response(exc)
    return {"status": "ready"}


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(request: Request) -> Response:
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/docs", include_in_schema=False)
async def swagger_ui(request: Request) -> Response:
    app = request.app
    if swagger_assets_dir() is None:
        return error_response(404, "Swagger UI is not installed (pip install fastapi-offline)")
    return docs_page(app.openapi_url or "/openapi.json", f"{app.title} - Swagger UI")


@router.get("/", include_in_schema=False)
async def index() -> Response:
    page = STATIC_DIR / "index.html"
    if not page.is_file():
        return error_response(404, "the web page is not installed; use /docs")
    return FileResponse(page, headers={"Cache-Control": "no-cache"})
