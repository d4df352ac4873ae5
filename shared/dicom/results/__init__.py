"""DICOM results of one analysis, written with highdicom: SR, presentation state, SC.

Torch-free and web-free, so that the gateway (``POST /upload/dicom``) and ``spine
evaluate --dicom-out`` (which must not import the gateway) write the same objects.
Input: the :class:`~shared.dicom.source.SourceImage` that ``decode_dicom`` returns in
its metadata (no pixel data, no dataset kept) and an :class:`AnalysisResult`.
Every object keeps the source's Study Instance UID and patient/study attributes (the
caller may pseudonymise them first), each in a new series whose UIDs come from
:func:`~shared.dicom.results.common.object_uids`. The burned-in Secondary Capture also
needs the canonical image the models saw (``image``).
Not part of the ``shared.dicom`` facade on purpose: importing highdicom costs time and
memory that the decoder (and its worker processes) do not need.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite

from shared.dicom.decode import CanonicalImage
from shared.dicom.results.common import (
    DEFAULT_KINDS,
    ObjectUids,
    ResultKind,
    ResultWriteError,
    object_uids,
)
from shared.dicom.results.gsps import build_gsps
from shared.dicom.results.model import NOT_FOR_DIAGNOSIS, AnalysisResult, ResultBox
from shared.dicom.results.sr import build_sr
from shared.dicom.source import SourceImage

__all__ = [
    "DEFAULT_KINDS",
    "NOT_FOR_DIAGNOSIS",
    "AnalysisResult",
    "DicomResults",
    "ObjectUids",
    "ResultBox",
    "ResultKind",
    "ResultWriteError",
    "parse_kinds",
    "write_results",
]


@dataclass(frozen=True)
class DicomResults:
    """The Part 10 files (bytes) that were asked for, in :class:`ResultKind` order."""

    objects: dict[ResultKind, bytes]
    uids: dict[ResultKind, ObjectUids]

    @property
    def sr(self) -> bytes | None:
        return self.objects.get(ResultKind.SR)

    @property
    def gsps(self) -> bytes | None:
        return self.objects.get(ResultKind.GSPS)

    @property
    def sc(self) -> bytes | None:
        return self.objects.get(ResultKind.SC)


def parse_kinds(text: str) -> tuple[ResultKind, ...]:
    """``"sr,gsps,sc"`` -> the kinds, in ResultKind order (ValueError naming a bad one)."""
    words = {word.strip().lower() for word in text.split(",") if word.strip()}
    unknown = sorted(words - {kind.value for kind in ResultKind})
    if unknown or not words:
        raise ValueError(
            f"result objects must be a comma-separated list of {', '.join(ResultKind)}; "
            f"not {', '.join(unknown) or 'nothing'}"
        )
    return tuple(kind for kind in ResultKind if kind.value in words)


def _part10(dataset: object) -> bytes:
    buffer = DicomBytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)  # type: ignore[arg-type]
    return buffer.getvalue()


def _build(
    kind: ResultKind, source: SourceImage, result: AnalysisResult, uids: ObjectUids,
    image: CanonicalImage | None,
) -> object:
    if kind is ResultKind.SR:
        return build_sr(source, result, uids)
    if kind is ResultKind.GSPS:
        return build_gsps(source, result, uids)
    if kind is ResultKind.KOS:
        from shared.dicom.results.kos import build_kos

        return build_kos(source, result, uids)
    if image is None:
        raise ResultWriteError("A Secondary Capture needs the analysed image's pixels.")
    from shared.dicom.results.sc import build_sc  # cv2 drawing: only when asked for

    return build_sc(source, result, image, uids)


def write_results(
    source: SourceImage,
    result: AnalysisResult,
    kinds: tuple[ResultKind, ...] = DEFAULT_KINDS,
    image: CanonicalImage | None = None,
) -> DicomResults:
    """The result objects of one analysis as DICOM files (``image``: for the SC)."""
    objects, uids = {}, {}
    for kind in ResultKind:
        if kind in kinds:
            uids[kind] = object_uids(source, result, kind)
            objects[kind] = _part10(_build(kind, source, result, uids[kind], image))
    return DicomResults(objects=objects, uids=uids)
