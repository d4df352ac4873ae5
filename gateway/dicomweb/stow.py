"""DICOMweb STOW-RS in: ``POST /dicomweb/studies[/{study}]`` (PS3.18 10.5 Store Instances).

Every instance of a ``multipart/related; type="application/dicom"`` body (read by
:mod:`gateway.http.multipart`, bounded like ``/upload``) goes through the ``/upload`` pipeline
(:func:`gateway.pipeline.analyze.analyze`: isolated decode, input selection, both models, every
hostile-input limit), concurrently. The answer is the Store Instances Response
(``application/dicom+json``, PS3.18 Annex I): analysed instances in ReferencedSOPSequence,
refused ones in FailedSOPSequence with a FailureReason (:func:`failure_reason`), status 200
(all analysed), 202 (some) or 409 (none). Our ``/upload`` JSON of each instance travels
in a private element of its item (:data:`PRIVATE_CREATOR`), which standard clients
ignore. With a results destination (``RESULTS_*``) the result objects of each analysed
instance (``RESULTS_OBJECTS``: SR and presentation state unless set otherwise) are queued
for delivery (:mod:`shared.dicomnet`); with ``RESULTS_SPOOL_DIR`` they are first written
durably to its ``results/`` (before the answer is sent) and kept there until delivered,
across restarts. A request whose results would not fit in the queue, or in the spool (its
object and byte caps, the disk's free-space floor), is refused (503 + Retry-After) before
any work.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from gateway.dicomweb import outputs
from gateway.http.errors import service_error_response
from gateway.http.multipart import RelatedLimits, read_related
from gateway.http.recording import Recording
from gateway.http.refusals import mark_audited
from gateway.pipeline.analyze import Findings, analyze
from gateway.pipeline.context import Pipeline
from gateway.pipeline.decode import decode_limits
from gateway.pipeline.response import upload_response
from gateway.runtime import Gateway
from shared import dicom
from shared.dicomnet import DeliveryQueueFull
from shared.dicomnet.spool import ResultSpoolFull
from shared.errors import ServiceError
from shared.logging import request_id_var

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
RELATED = 'multipart/related; type="application/dicom"'
# The private block our analysis JSON travels in, in each Referenced/Failed SOP item.
PRIVATE_GROUP = 0x0009
PRIVATE_CREATOR = "SPINE ANALYSIS 1"
CREATOR_TAG = "00090010"
ANALYSIS_TAG = "00091001"  # UT: the /upload JSON (analysed) or {"status", "message"} (failed)

# Failure Reason (0008,1197) values, PS3.18 Table I.2-2.
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110
SOP_CLASS_NOT_SUPPORTED = 0x0122

class StudyMismatchError(ServiceError):
    """The instance's Study Instance UID differs from the study in the request path."""

    status_code = 409


@dataclass
class Stored:
    """What became of one instance of the request."""

    index: int  # 1-based part number
    sop_class_uid: str | None
    sop_instance_uid: str | None
    analysis: dict[str, Any] | None = None  # the /upload JSON (analysed)
    failure: int | None = None  # Failure Reason (refused)
    status: int = 200  # what /upload would have answered
    message: str | None = None


def failure_reason(exc: ServiceError) -> int:
    """PS3.18 I.2.2 Failure Reason for why an instance was not analysed."""
    if isinstance(exc, StudyMismatchError):
        return DOES_NOT_MATCH
    if isinstance(exc, dicom.NotSelectedError):
        return SOP_CLASS_NOT_SUPPORTED  # not a kind of image this service takes
    if isinstance(exc, dicom.NotDicomError | dicom.DicomLimitError):
        return CANNOT_UNDERSTAND
    if isinstance(exc, dicom.UnsupportedDicomError):
        return DOES_NOT_MATCH  # valid DICOM we cannot analyse (colour, multi-frame, no pixels)
    if isinstance(exc, DeliveryQueueFull) or exc.status_code in (429, 503):
        return OUT_OF_RESOURCES
    return PROCESSING_FAILURE


def _element(vr: str, *values: object) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def _item(stored: Stored) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if stored.sop_class_uid:
        item["00081150"] = _element("UI", stored.sop_class_uid)
    if stored.sop_instance_uid:
        item["00081155"] = _element("UI", stored.sop_instance_uid)
    if stored.failure is not None:
        item["00081197"] = _element("US", stored.failure)
        extension: dict[str, Any] = {
            "part": stored.index, "status": stored.status, "message": stored.message,
        }
    else:
        item["00081190"] = _element("UR")  # Retrieve URL, type 2: we keep no copy to retrieve
        extension = {"part": stored.index, **(stored.analysis or {})}
    item[CREATOR_TAG] = _element("LO", PRIVATE_CREATOR)
    item[ANALYSIS_TAG] = _element("UT", json.dumps(extension, separators=(",", ":")))
    return item


def store_response(results: list[Stored]) -> tuple[int, dict[str, Any]]:
    """``(HTTP status, Store Instances Response)``: 200 all analysed, 202 some, 409 none."""
    referenced = [_item(r) for r in results if r.failure is None]
    failed = [_item(r) for r in results if r.failure is not None]
    body: dict[str, Any] = {"00081190": _element("UR")}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    status = 409 if not referenced else 202 if failed else 200
    return status, body


def _study_check(study: str | None):  # type: ignore[no-untyped-def]
    def check(metadata: dicom.DicomMetadata) -> None:
        if study is not None and metadata.study_instance_uid != study:
            raise StudyMismatchError(
                "the instance's Study Instance UID differs from the study in the request path"
            )

    return check


async def _identify(pipeline: Pipeline, data: bytes) -> dicom.InstanceIds:
    """The UIDs of a refused instance (read in a worker, like a decode); None where unreadable."""
    try:
        return await asyncio.get_running_loop().run_in_executor(
            pipeline.decode_pool,
            lambda: dicom.identify_dicom(
                data, limits=decode_limits(pipeline.settings), pool=pipeline.decoders
            ),
        )
    except Exception:  # noqa: BLE001 - an unreadable instance is reported without UIDs
        return dicom.InstanceIds(None, None, None)


async def _deliver(gateway: Gateway, findings: Findings) -> None:
    """Queue the result objects (RESULTS_OBJECTS) of one analysed instance (when a
    destination is set), written durably to the results spool first when there is one."""
    if not gateway.delivery.enabled:
        return
    kinds = outputs.requested_kinds(outputs.ALL, gateway.settings)
    results, _ = await outputs.write(gateway.pipeline, findings, kinds)
    objects = list(results.objects.values())
    if gateway.results is not None:  # RESULTS_SPOOL_DIR: on disk before the answer
        await gateway.results.submit(objects)
        return
    await gateway.delivery.submit(
        objects,
        study_uid=findings.metadata.study_instance_uid or "",
        sop_uids=[uids.instance for uids in results.uids.values()],
    )


async def store_one(
    gateway: Gateway, request: Request, index: int, data: bytes, study: str | None,
    deadline: float,
) -> Stored:
    """Analyse one instance as ``/upload`` does, record it, queue its results; never raises
    a ServiceError (it becomes the instance's failure)."""
    recording = Recording(gateway, request.scope)
    in_study = _study_check(study)

    def check(metadata: dicom.DicomMetadata) -> None:
        recording.note(metadata)
        in_study(metadata)

    findings: Findings | None = None
    try:
        findings = await analyze(
            gateway.pipeline, data, annotate=False, request_id=request_id_var.get() or "",
            deadline=deadline, check=check,
        )
        answer = upload_response(findings, gateway.settings)
        await _deliver(gateway, findings)
    except ServiceError as exc:
        recording.failed(exc)
        if findings is not None and findings.metadata.source is not None:  # analysed
            source = findings.metadata.source
            ids = dicom.InstanceIds(
                source.sop_class_uid, source.sop_instance_uid, source.study_instance_uid
            )
        else:  # refused before or at the decode (or by the study check): read its UIDs
            ids = await _identify(gateway.pipeline, data)
        return Stored(
            index, ids.sop_class_uid, ids.sop_instance_uid, failure=failure_reason(exc),
            status=exc.status_code, message=exc.message,
        )
    recording.succeeded(answer)
    source = findings.metadata.source
    return Stored(
        index, source.sop_class_uid if source else None, findings.metadata.sop_instance_uid,
        analysis=answer.model_dump(by_alias=True),
    )


async def store_instances(request: Request, study: str | None) -> Response:
    """The whole STOW-RS request: read, refuse early what cannot fit, analyse, answer."""
    gateway: Gateway = request.app.state.gateway
    settings = gateway.settings
    try:
        parts = await read_related(
            request.headers.get("content-type"), request.headers.get("content-length"),
            request.stream(),
            RelatedLimits(
                max_bytes=settings.stowrs_max_bytes,
                max_instances=settings.stowrs_max_instances,
                max_instance_bytes=settings.max_content_length,
                max_part_header_bytes=settings.multipart_max_part_header_bytes,
                idle_timeout_s=settings.http_body_idle_timeout_s,
            ),
            settings.upload_timeout_s,
        )
        per_instance = len(settings.results_objects.split(","))
        if not gateway.delivery.has_room(per_instance * len(parts)):
            raise DeliveryQueueFull(
                "the results delivery queue is full (RESULTS_QUEUE_SIZE); retry later"
            )
        spool = gateway.results
        full = spool.store.refusal(per_instance * len(parts)) if (
            spool is not None and gateway.delivery.enabled) else None
        if full:  # RESULTS_QUEUE_SIZE, RESULTS_SPOOL_MAX_BYTES or DISK_MIN_FREE_BYTES
            raise ResultSpoolFull(full)
    except ServiceError as exc:
        mark_audited(request.scope)
        return service_error_response(exc)
    deadline = time.monotonic() + settings.request_timeout_s
    results = await asyncio.gather(*(
        store_one(gateway, request, index, data, study, deadline)
        for index, data in enumerate(parts, start=1)
    ))
    status, body = store_response(list(results))
    return Response(json.dumps(body), status_code=status, media_type=DICOM_JSON)
