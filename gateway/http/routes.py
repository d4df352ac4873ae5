"""The public HTTP routes of analysis and health: thin handlers over the modules they call.

One upload: :mod:`gateway.http.multipart` reads the body,
:func:`gateway.pipeline.analyze.analyze` decodes it and asks the models,
:mod:`gateway.pipeline.response` builds the JSON, :mod:`gateway.http.recording` writes
its audit line and metric; a failure becomes its answer in :mod:`gateway.http.errors`.
Each analysis has a deadline (``REQUEST_TIMEOUT_S``) and stops when its client
disconnects (:mod:`gateway.http.deadline`). The DICOM routes (``/upload/dicom``,
STOW-RS) are in :mod:`gateway.dicomweb.routes`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.http.deadline import within
from gateway.http.errors import error_response, error_responses, service_error_response
from gateway.http.health import check_ready, health_report, public_health
from gateway.http.multipart import MultipartLimits, receive_upload
from gateway.http.recording import PREVIEW, Recording
from gateway.http.security import docs_page, swagger_assets_dir
from gateway.pipeline.analyze import Findings, analyze
from gateway.pipeline.decode import decode
from gateway.pipeline.response import preview_headers, upload_response
from gateway.runtime import Gateway
from gateway.schemas import HealthResponse, UploadResponse
from shared import dicom
from shared.errors import ServiceError
from shared.logging import request_id_var

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
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


def gateway_of(request: Request) -> Gateway:
    """The app's :class:`~gateway.runtime.Gateway` (built in the lifespan)."""
    return request.app.state.gateway


async def read_upload(request: Request) -> bytes:
    """The DICOM of a ``multipart/form-data`` upload, under every body limit."""
    settings = gateway_of(request).settings
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


async def analyse_upload(
    request: Request, *, annotate: bool, canonical_image: bool
) -> tuple[Findings, UploadResponse] | Response:
    """One recorded analysis of an uploaded file: its findings and JSON, or the error answer."""
    gateway = gateway_of(request)
    timeout_s = gateway.settings.request_timeout_s
    recording = Recording(gateway, request.scope)
    try:
        data = await read_upload(request)
        findings = await within(
            analyze(
                gateway.pipeline,
                data,
                annotate=annotate,
                request_id=request_id_var.get() or "",
                include_canonical=canonical_image,
                deadline=time.monotonic() + timeout_s,
                check=recording.note,
            ),
            request,
            timeout_s,
        )
    except ServiceError as exc:
        recording.failed(exc)
        return service_error_response(exc)
    result = upload_response(findings, gateway.settings)
    recording.succeeded(result)
    return findings, result


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
    analysed = await analyse_upload(request, annotate=annotate, canonical_image=canonical_image)
    if isinstance(analysed, Response):
        return analysed
    return JSONResponse(analysed[1].model_dump(by_alias=True))


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
    gateway = gateway_of(request)
    recording = Recording(gateway, request.scope, PREVIEW)
    try:
        data = await read_upload(request)
        canonical, metadata = await within(
            decode(gateway.pipeline, data), request, gateway.settings.request_timeout_s
        )
    except ServiceError as exc:
        recording.failed(exc)
        return service_error_response(exc)
    recording.note(metadata)
    recording.succeeded()
    return Response(
        dicom.encode_png(canonical.pixels), media_type="image/png",
        headers=preview_headers(canonical),
    )


@router.get("/health", response_model=HealthResponse, tags=["health"], summary="Service health")
async def health(request: Request) -> HealthResponse:
    report = await health_report(gateway_of(request))
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
        await check_ready(gateway_of(request))
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
