"""The DICOM routes: ``POST /upload/dicom`` and STOW-RS ``POST /dicomweb/studies[/{study}]``.

Thin handlers: the analysis is :func:`gateway.http.routes.analyse_upload` (the same
recorded path as ``/upload``), the objects are written by :mod:`gateway.dicomweb.outputs`,
a STOW-RS request is read, analysed and answered by :mod:`gateway.dicomweb.stow`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from gateway.dicomweb import outputs
from gateway.dicomweb.stow import DICOM_JSON, PRIVATE_CREATOR, RELATED, store_instances
from gateway.http.errors import error_responses, service_error_response
from gateway.http.routes import ANALYSIS_ERRORS, UPLOAD_BODY, analyse_upload, gateway_of
from shared.errors import ServiceError

router = APIRouter()


@router.post(
    "/upload/dicom",
    response_class=Response,
    responses={
        200: {
            "content": {
                outputs.MULTIPART: {"schema": {"type": "string", "format": "binary"}},
                outputs.DICOM: {"schema": {"type": "string", "format": "binary"}},
            },
            "description": "multipart/related: the Comprehensive SR (TID 1500), the "
            "Grayscale Softcopy Presentation State, the burned-in Secondary Capture (each "
            "application/dicom, Content-ID <sr> / <gsps> / <sc>, those that `parts` asks "
            "for) and the /upload JSON (application/json, <analysis>). With one part "
            "asked for and `Accept: application/dicom`, that one object alone. "
            "Server-Timing: dicom;dur=<ms spent writing the objects>.",
        },
        **error_responses(*ANALYSIS_ERRORS),
    },
    openapi_extra=UPLOAD_BODY,
    summary="Analyse one radiograph and answer with DICOM SR + presentation state",
    tags=["analysis"],
)
async def upload_dicom(
    request: Request,
    parts: str = Query(
        outputs.ALL, description="all (the objects of RESULTS_OBJECTS: SR + GSPS unless "
        "set otherwise) or a comma-separated list of sr, gsps, sc, kos",
    ),
) -> Response:
    try:
        kinds = outputs.requested_kinds(parts, gateway_of(request).settings)
    except ServiceError as exc:
        return service_error_response(exc)
    analysed = await analyse_upload(request, annotate=False, canonical_image=False)
    if isinstance(analysed, Response):
        return analysed
    findings, result = analysed
    try:
        answer = await outputs.dicom_answer(
            gateway_of(request).pipeline, findings, result, kinds, request.headers.get("accept")
        )
    except ServiceError as exc:
        return service_error_response(exc)
    headers = {"Server-Timing": f"dicom;dur={answer.write_ms:.1f}"}
    if answer.filename:
        headers["Content-Disposition"] = f'attachment; filename="{answer.filename}"'
    return Response(answer.body, media_type=answer.media_type, headers=headers)


STORE_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {RELATED: {"schema": {"type": "string", "format": "binary"}}},
        "description": "One or more PS3.10 instances, one per part (Content-Type: "
        "application/dicom). At most STOWRS_MAX_INSTANCES instances and STOWRS_MAX_BYTES "
        "bytes; each instance at most MAX_CONTENT_LENGTH.",
    },
}
STORE_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {
        "description": text,
        "content": {DICOM_JSON: {"schema": {"type": "object"}}},
    }
    for status, text in (
        (200, "Every instance analysed. Store Instances Response (PS3.18 Annex I): "
              "ReferencedSOPSequence (0008,1199), one item per instance with "
              "ReferencedSOPClassUID / ReferencedSOPInstanceUID. Extension: each item "
              f"carries the private creator (0009,0010) = '{PRIVATE_CREATOR}' and "
              "(0009,1001) UT = this instance's /upload JSON plus 'part' (its 1-based "
              "position in the request); standard clients ignore private elements."),
        (202, "Some instances analysed; the others are in FailedSOPSequence (0008,1198) "
              "with FailureReason (0008,1197): A700 out of resources (models or results "
              "queue busy: retry), A900 does not match (valid DICOM we cannot analyse, or "
              "a Study Instance UID other than the path's), C000 cannot understand "
              "(not DICOM, damaged, past a hostile-input limit), 0122 not taken (refused "
              "by the input selection rules: not a spine radiograph), 0110 processing "
              "failure. (0009,1001) of a failed item: {part, status, message}, status "
              "being what /upload would have answered."),
        (409, "No instance analysed (FailedSOPSequence only)."),
    )
}


@router.post(
    "/dicomweb/studies",
    response_class=Response,
    responses={**STORE_RESPONSES, **error_responses(400, 408, 413, 415, 429, 503)},
    openapi_extra=STORE_DOC,
    summary="STOW-RS: analyse instances (PS3.18 10.5 Store Instances)",
    tags=["dicomweb"],
)
async def store_studies(request: Request) -> Response:
    return await store_instances(request, None)


@router.post(
    "/dicomweb/studies/{study}",
    response_class=Response,
    responses={**STORE_RESPONSES, **error_responses(400, 408, 413, 415, 429, 503)},
    openapi_extra=STORE_DOC,
    summary="STOW-RS into one study: instances of another study fail (A900)",
    tags=["dicomweb"],
)
async def store_study(request: Request, study: str) -> Response:
    return await store_instances(request, study)
