"""DICOM results of one analysis, written with highdicom: an SR and a presentation state.

Torch-free and web-free, so that the gateway (``POST /upload/dicom``) and ``spine
evaluate --dicom-out`` (which must not import the gateway) write the same objects.
Input: the :class:`~shared.dicom.source.SourceImage` that ``decode_dicom`` returns in
its metadata (no pixel data, no dataset kept) and an :class:`AnalysisResult`.
Both objects keep the source's Study Instance UID and patient/study attributes (the
caller may pseudonymise them first), each in a new series with new UIDs.
Not part of the ``shared.dicom`` facade on purpose: importing highdicom costs time and
memory that the decoder (and its worker processes) do not need.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite

from shared.dicom.results.common import ResultUids, ResultWriteError
from shared.dicom.results.gsps import build_gsps
from shared.dicom.results.model import NOT_FOR_DIAGNOSIS, AnalysisResult, ResultBox
from shared.dicom.results.sr import build_sr
from shared.dicom.source import SourceImage

__all__ = [
    "NOT_FOR_DIAGNOSIS",
    "AnalysisResult",
    "DicomResults",
    "ResultBox",
    "ResultUids",
    "ResultWriteError",
    "write_results",
]


@dataclass(frozen=True)
class DicomResults:
    """The two Part 10 files (bytes); None for an object that was not asked for."""

    sr: bytes | None
    gsps: bytes | None
    uids: ResultUids


def _part10(dataset: object) -> bytes:
    buffer = DicomBytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)  # type: ignore[arg-type]
    return buffer.getvalue()


def write_results(
    source: SourceImage,
    result: AnalysisResult,
    *,
    sr: bool = True,
    gsps: bool = True,
    uids: ResultUids | None = None,
) -> DicomResults:
    """The SR and/or the presentation state of one analysis as DICOM files."""
    uids = uids or ResultUids.new()
    return DicomResults(
        sr=_part10(build_sr(source, result, uids)) if sr else None,
        gsps=_part10(build_gsps(source, result, uids)) if gsps else None,
        uids=uids,
    )
