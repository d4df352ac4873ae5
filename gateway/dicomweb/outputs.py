"""``POST /upload/dicom``: the analysis as DICOM objects a PACS or viewer can file.

The objects themselves are written by :mod:`shared.dicom.results` (shared with ``spine
evaluate --dicom-out``) from the findings and the decoder's
:class:`~shared.dicom.source.SourceImage`; the values go through the same functions as
the ``/upload`` JSON (:mod:`gateway.pipeline.response`), so they say exactly what the
JSON says. This module picks the parts (``parts``: all = ``RESULTS_OBJECTS``, or a list
of sr, gsps, sc, kos), applies ``DICOM_RESULT_PATIENT``, writes off the event loop, and
packs the answer as ``multipart/related; type="application/dicom"`` (the SR, the
presentation state, the Secondary Capture, the Key Object Selection, then the JSON), or
one bare ``application/dicom`` object when the client asks for one part and accepts only
that.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import time

from gateway.pipeline import phi
from gateway.pipeline.analyze import Findings
from gateway.pipeline.context import Pipeline
from gateway.pipeline.response import bundle_summary, detections, member_probabilities
from gateway.schemas import UploadResponse
from shared import tracing
from shared.dicom.results import (
    AnalysisResult,
    DicomResults,
    ResultBox,
    ResultKind,
    ResultWriteError,
    parse_kinds,
    write_results,
)
from shared.dicom.source import SourceImage
from shared.errors import ServiceError
from shared.settings import GatewaySettings, PhiMode, ResultPatientMode
from shared.version import SOFTWARE_VERSION

DICOM = "application/dicom"
MULTIPART = f'multipart/related; type="{DICOM}"'
# Patient attributes a pseudonymised result drops (the study attributes stay: it must
# still land in the source's study).
_DROPPED = ("PatientBirthDate", "PatientSex", "IssuerOfPatientID")


ALL = "all"


class BadParts(ServiceError):
    """``parts`` names an object this service does not write."""

    status_code = 422


def requested_kinds(parts: str, settings: GatewaySettings) -> tuple[ResultKind, ...]:
    """The objects ``parts`` asks for: ``all`` is ``RESULTS_OBJECTS`` (SR + GSPS unless
    the operator says otherwise), else a comma-separated list of sr, gsps, sc, kos."""
    try:
        return parse_kinds(settings.results_objects if parts.strip() == ALL else parts)
    except ValueError as exc:
        raise BadParts(f"parts: {exc}") from exc


class ResultNotWritable(ServiceError):
    """The image lacks what a DICOM result must reference (its UIDs)."""

    status_code = 422


@dataclasses.dataclass(frozen=True)
class DicomAnswer:
    body: bytes
    media_type: str
    write_ms: float
    filename: str | None = None


def result_source(source: SourceImage, settings: GatewaySettings) -> SourceImage:
    """The source as the results may show its patient (``DICOM_RESULT_PATIENT``)."""
    if settings.dicom_result_patient is ResultPatientMode.COPY:
        return source
    attributes = source.attributes()
    pseudonym = phi.public_patient_id(
        attributes.get("PatientID"), PhiMode.PSEUDONYMIZE, settings.pseudonym_secret
    )
    for keyword in ("PatientID", "PatientName", *_DROPPED):
        attributes.pop(keyword, None)
    if pseudonym:
        attributes.update(PatientID=pseudonym, PatientName=f"{pseudonym}^")  # family name only
    return dataclasses.replace(source, patient_study=tuple(attributes.items()))


def analysis_result(findings: Findings, settings: GatewaySettings) -> AnalysisResult:
    """What the DICOM objects state, from the findings by the ``/upload`` JSON's own rules
    (rounding, boxes in original pixels)."""
    classified, detected = findings.classified, findings.detected
    bundle = bundle_summary(classified.facts, detected.facts if detected else None)
    boxes = detections(findings)
    return AnalysisResult(
        diagnosis=findings.fused.diagnosis,
        abnormal_probability=round(findings.fused.probability, 6),
        threshold=classified.facts.threshold,
        members=member_probabilities(findings),
        boxes=None if boxes is None else tuple(
            ResultBox(box.class_name, box.confidence, _corners(box.bbox)) for box in boxes
        ),
        bundle_name=bundle.name,
        bundle_kind=bundle.kind,
        checkpoints=dict(bundle.checkpoints),
        version=SOFTWARE_VERSION,
        fusion_mode=settings.fusion_mode.value,
    )


def _corners(bbox: list[float]) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = bbox
    return x1, y1, x2, y2


async def write(
    pipeline: Pipeline, findings: Findings, kinds: tuple[ResultKind, ...]
) -> tuple[DicomResults, float]:
    """The objects asked for, written in the decode pool; (results, milliseconds)."""
    source = findings.metadata.source
    if source is None:
        raise ResultNotWritable("The image's header could not be kept for a DICOM result.")
    source = result_source(source, pipeline.settings)
    result = analysis_result(findings, pipeline.settings)
    started = time.perf_counter()

    def work() -> DicomResults:
        return write_results(source, result, kinds, image=findings.canonical)

    try:
        parts = ",".join(kind.value for kind in kinds)
        with tracing.span("write results", **{"spine.parts": parts}):
            results = await asyncio.get_running_loop().run_in_executor(
                pipeline.decode_pool, work
            )
    except ResultWriteError as exc:
        raise ResultNotWritable(str(exc)) from exc
    return results, (time.perf_counter() - started) * 1000


def _part(content_type: str, name: str, data: bytes) -> bytes:
    head = f"Content-Type: {content_type}\r\nContent-ID: <{name}>\r\nContent-Description: {name}"
    return head.encode() + b"\r\n\r\n" + data + b"\r\n"


def multipart_related(results: DicomResults, answer: UploadResponse) -> tuple[bytes, str]:
    """``(body, content type)``: the DICOM parts first (the root is the SR when present)."""
    boundary = secrets.token_hex(16)
    delimiter = f"--{boundary}\r\n".encode()
    body = b""
    for kind, data in results.objects.items():
        body += delimiter + _part(DICOM, kind.value, data)
    analysis = json.dumps(answer.model_dump(by_alias=True)).encode()
    body += delimiter + _part("application/json", "analysis", analysis)
    body += f"--{boundary}--\r\n".encode()
    return body, f"{MULTIPART}; boundary={boundary}"


def wants_bare_object(accept: str | None, kinds: tuple[ResultKind, ...]) -> bool:
    """One object asked for by a client that accepts ``application/dicom`` and not multipart."""
    if len(kinds) != 1 or not accept:
        return False
    types = {item.split(";")[0].strip().lower() for item in accept.split(",")}
    return DICOM in types and not any(t.startswith("multipart/") or t == "*/*" for t in types)


async def dicom_answer(
    pipeline: Pipeline, findings: Findings, answer: UploadResponse,
    kinds: tuple[ResultKind, ...], accept: str | None,
) -> DicomAnswer:
    """The whole ``/upload/dicom`` body for one finished analysis."""
    results, write_ms = await write(pipeline, findings, kinds)
    if wants_bare_object(accept, kinds):
        ((kind, data),) = results.objects.items()
        return DicomAnswer(data, DICOM, write_ms, f"{answer.request_id or 'result'}-{kind}.dcm")
    body, media_type = multipart_related(results, answer)
    return DicomAnswer(body, media_type, write_ms)
