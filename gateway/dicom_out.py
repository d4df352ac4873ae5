"""``POST /upload/dicom``: the analysis as DICOM objects a PACS or viewer can file.

The objects themselves are written by :mod:`shared.dicom.results` (shared with ``spine
evaluate --dicom-out``) from the ``/upload`` answer and the decoder's
:class:`~shared.dicom.source.SourceImage`, so they say exactly what the JSON says. This
module picks the parts, applies ``DICOM_RESULT_PATIENT``, writes off the event loop, and
packs the answer as ``multipart/related; type="application/dicom"`` (the SR, the
presentation state, then the JSON), or one bare ``application/dicom`` object when the
client asks for one part and accepts only that.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import time
from enum import StrEnum

from gateway import phi
from gateway.analysis import Findings, Gateway
from gateway.schemas import UploadResponse
from shared.dicom.results import AnalysisResult, DicomResults, ResultWriteError, write_results
from shared.dicom.source import SourceImage
from shared.errors import ServiceError
from shared.settings import PhiMode, ResultPatientMode, Settings

DICOM = "application/dicom"
MULTIPART = f'multipart/related; type="{DICOM}"'
VERSION = "0.1.0"
# Patient attributes a pseudonymised result drops (the study attributes stay: it must
# still land in the source's study).
_DROPPED = ("PatientBirthDate", "PatientSex", "IssuerOfPatientID")


class Parts(StrEnum):
    """Which objects ``/upload/dicom`` answers with."""

    ALL = "all"
    SR = "sr"
    GSPS = "gsps"


class ResultNotWritable(ServiceError):
    """The image lacks what a DICOM result must reference (its UIDs)."""

    status_code = 422


@dataclasses.dataclass(frozen=True)
class DicomAnswer:
    body: bytes
    media_type: str
    write_ms: float
    filename: str | None = None


def result_source(source: SourceImage, settings: Settings) -> SourceImage:
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


async def write(
    gateway: Gateway, findings: Findings, answer: UploadResponse, parts: Parts
) -> tuple[DicomResults, float]:
    """The objects asked for, written in the decode pool; (results, milliseconds)."""
    source = findings.metadata.source
    if source is None:
        raise ResultNotWritable("The image's header could not be kept for a DICOM result.")
    source = result_source(source, gateway.settings)
    result = AnalysisResult.from_upload_json(answer.model_dump(by_alias=True), VERSION)
    started = time.perf_counter()

    def work() -> DicomResults:
        return write_results(
            source, result, sr=parts is not Parts.GSPS, gsps=parts is not Parts.SR
        )

    try:
        results = await asyncio.get_running_loop().run_in_executor(gateway.decode_pool, work)
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
    for name, data in (("sr", results.sr), ("gsps", results.gsps)):
        if data is not None:
            body += delimiter + _part(DICOM, name, data)
    analysis = json.dumps(answer.model_dump(by_alias=True)).encode()
    body += delimiter + _part("application/json", "analysis", analysis)
    body += f"--{boundary}--\r\n".encode()
    return body, f"{MULTIPART}; boundary={boundary}"


def wants_bare_object(accept: str | None, parts: Parts) -> bool:
    """One object asked for by a client that accepts ``application/dicom`` and not multipart."""
    if parts is Parts.ALL or not accept:
        return False
    types = {item.split(";")[0].strip().lower() for item in accept.split(",")}
    return DICOM in types and not any(t.startswith("multipart/") or t == "*/*" for t in types)


async def dicom_answer(
    gateway: Gateway, findings: Findings, answer: UploadResponse, parts: Parts,
    accept: str | None,
) -> DicomAnswer:
    """The whole ``/upload/dicom`` body for one finished analysis."""
    results, write_ms = await write(gateway, findings, answer, parts)
    if wants_bare_object(accept, parts):
        data = results.sr if parts is Parts.SR else results.gsps
        assert data is not None
        return DicomAnswer(data, DICOM, write_ms, f"{answer.request_id or 'result'}-{parts}.dcm")
    body, media_type = multipart_related(results, answer)
    return DicomAnswer(body, media_type, write_ms)
