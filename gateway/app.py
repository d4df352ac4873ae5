"""The public HTTP API: routes only; the work happens in ``gateway.analysis``."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway import dicom
from gateway.analysis import Gateway, analyze, bundle_summary, decode, demo_warning_text
from gateway.upload import UploadError, read_file_field
from gateway.upstream import UpstreamError
from shared.logging import request_id_var
from shared.schemas import ErrorResponse, HealthResponse, ServiceHealth, UploadResponse
from shared.settings import Settings, get_settings

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"

REQUEST_ID_HEADER = "X-Request-ID"
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

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
        413: "Upload larger than MAX_CONTENT_LENGTH",
        415: "Not multipart/form-data",
        422: "Valid DICOM that cannot be analysed (no pixels, colour, multi-frame, ...)",
        503: "A model service is unavailable (see Retry-After)",
        504: "A model service did not answer in time",
    }
    return {code: {"model": ErrorResponse, "description": descriptions[code]} for code in codes}


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = ErrorResponse(message=message, request_id=request_id_var.get())
    return JSONResponse(status_code=status, content=body.model_dump(), headers=headers)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gateway = Gateway.create(settings)
        gateway.decodable = dicom.decodable_transfer_syntaxes()
        app.state.gateway = gateway
        missing = [name for name, ok in gateway.decodable.items() if not ok]
        log.info("gateway up; transfer syntaxes without a decoder: %s", missing or "none")
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
    )

    @app.middleware("http")
    async def request_id_middleware(request: Request, call_next):  # type: ignore[no-untyped-def]
        supplied = request.headers.get(REQUEST_ID_HEADER, "")
        request_id = supplied if _SAFE_REQUEST_ID.match(supplied) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        try:
            response = await call_next(request)
        finally:
            request_id_var.reset(token)
        response.headers[REQUEST_ID_HEADER] = request_id
        return response

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
        data, _filename = await read_file_field(
            request.headers.get("content-type"),
            request.headers.get("content-length"),
            request.stream(),
            settings.max_content_length,
        )
        if not data:
            raise UploadError(400, "the uploaded file is empty")
        return data

    @app.post(
        "/upload",
        response_model=UploadResponse,
        response_model_by_alias=True,
        responses=_error_responses(400, 413, 415, 422, 503, 504),
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
        try:
            data = await _read_upload(request)
            result = await analyze(
                _gateway(request),
                data,
                annotate=annotate,
                request_id=request_id_var.get() or "",
                include_canonical=canonical_image,
            )
        except UploadError as exc:
            return error_response(exc.status_code, exc.message)
        except dicom.DicomError as exc:
            return error_response(exc.status_code, exc.message)
        except UpstreamError as exc:
            headers = {"Retry-After": "5"} if exc.status_code == 503 else None
            return error_response(exc.status_code, f"{exc}; no diagnosis was made", headers)
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
            **_error_responses(400, 413, 415, 422),
        },
        openapi_extra=UPLOAD_BODY,
        summary="The canonical image the models would see",
        tags=["analysis"],
    )
    async def preview(request: Request) -> Response:
        try:
            data = await _read_upload(request)
            canonical, _ = await decode(_gateway(request), data)
        except UploadError as exc:
            return error_response(exc.status_code, exc.message)
        except dicom.DicomError as exc:
            return error_response(exc.status_code, exc.message)
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
            params[client.service] = await client.model_parameters() if ready else None
            services[client.service] = ServiceHealth(
                ready=ready,
                replicas=replicas,
                model_bundle=bundle_summary(params[client.service], None)
                if params[client.service] and "checkpoints" in params[client.service]
                else None,
                device=(params[client.service] or {}).get("device"),
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
        if bundle is not None and (text := demo_warning_text(bundle)):
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

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        page = STATIC_DIR / "index.html"
        if not page.is_file():
            return error_response(404, "the web page is not installed; use /docs")
        return FileResponse(page, headers={"Cache-Control": "no-cache"})

    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    return app
