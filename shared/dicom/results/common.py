"""What the result objects share: identity, the source's stand-in, their UIDs."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset

from shared.dicom.results import codes
from shared.dicom.results.model import AnalysisResult
from shared.dicom.source import PATIENT_STUDY_KEYWORDS, SourceImage

MANUFACTURER = "spine-lesion-service"
DEVICE_SERIAL = "1"  # GSPS asks for one; a piece of software has none


class ResultKind(StrEnum):
    """The result objects (``RESULTS_OBJECTS``), in the order they are written and sent."""

    SR = "sr"  # Comprehensive SR, TID 1500
    GSPS = "gsps"  # Grayscale Softcopy Presentation State
    SC = "sc"  # Secondary Capture image, boxes burned in
    KOS = "kos"  # Key Object Selection document flagging the analysed image


DEFAULT_KINDS = (ResultKind.SR, ResultKind.GSPS)
# The namespace of our derived UIDs (a fixed random UUID: never change it, or every
# re-analysis files new copies beside the old ones).
UID_NAMESPACE = uuid.UUID("5f0c7a52-3d9e-4b8e-9a61-2c4f0e8d7b13")
SERIES_NUMBERS = {
    ResultKind.SR: 9901, ResultKind.GSPS: 9902, ResultKind.SC: 9903, ResultKind.KOS: 9904,
}


class ResultWriteError(ValueError):
    """The image lacks what a result object must reference (its UIDs)."""


@dataclass(frozen=True)
class ObjectUids:
    """Series and SOP Instance UID of one result object (each object is its own series:
    SR, PR and SC are three modalities)."""

    series: str
    instance: str


def require_uids(source: SourceImage) -> None:
    """ResultWriteError naming the UIDs a result object must reference that the image lacks."""
    missing = [
        name for name, value in (
            ("SOP Class UID", source.sop_class_uid),
            ("SOP Instance UID", source.sop_instance_uid),
            ("Series Instance UID", source.series_instance_uid),
            ("Study Instance UID", source.study_instance_uid),
        ) if not value
    ]
    if missing:
        raise ResultWriteError(
            f"The image has no valid {', '.join(missing)}; a DICOM result must reference "
            "the image and land in its study."
        )


def derived_uid(*parts: str) -> str:
    """A ``2.25.`` UID (PS3.5 B.2) from the UUIDv5 of ``parts``: the same parts, the same UID."""
    name = "\x1f".join(parts)  # unit separator: ("a.b", "c") and ("a", "b.c") differ
    return f"2.25.{uuid.uuid5(UID_NAMESPACE, name).int}"


def object_uids(source: SourceImage, result: AnalysisResult, kind: ResultKind) -> ObjectUids:
    """The UIDs of one result object: the one place every writer takes them from.

    Derived, never random: from the source's SOP Instance UID, the analysis digest (bundle
    and fusion rule, :attr:`AnalysisResult.bundle_digest`), ``kind`` and the software
    version. A re-analysis of the same image (after a crash, or a PACS sending it again)
    writes objects with the same UIDs, which a PACS stores once. Each object stays its own
    series (instance number 1), so the series UID has the same inputs, told apart.
    """
    require_uids(source)
    parts = (str(source.sop_instance_uid), result.bundle_digest, kind.value, result.version)
    return ObjectUids(
        series=derived_uid("series", *parts), instance=derived_uid("instance", *parts)
    )


def series_identity(kind: ResultKind, uids: ObjectUids) -> dict[str, object]:
    """The keyword arguments of every highdicom result object that place it: its own
    series (number by kind) and instance, and us as the manufacturer."""
    return {
        "series_instance_uid": uids.series, "series_number": SERIES_NUMBERS[kind],
        "sop_instance_uid": uids.instance, "instance_number": 1, "manufacturer": MANUFACTURER,
    }


def reference_dataset(source: SourceImage) -> Dataset:
    """A header-only stand-in for the source image: what highdicom reads from "evidence".

    It holds the identity, size and patient/study attributes of the image, never pixels.
    """
    require_uids(source)
    ds = Dataset()
    if source.specific_character_set:
        ds.SpecificCharacterSet = list(source.specific_character_set)
    for keyword in PATIENT_STUDY_KEYWORDS:
        setattr(ds, keyword, None)
    for keyword, value in source.patient_study:
        setattr(ds, keyword, value)
    ds.SOPClassUID = source.sop_class_uid
    ds.SOPInstanceUID = source.sop_instance_uid
    ds.SeriesInstanceUID = source.series_instance_uid
    ds.StudyInstanceUID = source.study_instance_uid
    ds.Rows = source.rows
    ds.Columns = source.columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = source.photometric
    if source.rescale_slope != 1.0 or source.rescale_intercept != 0.0:
        ds.RescaleSlope = source.rescale_slope
        ds.RescaleIntercept = source.rescale_intercept
        ds.RescaleType = "US"
    return ds


def coding_schemes() -> list[CodingSchemeIdentificationItem]:
    """The declaration of our private scheme, for the SOP Common module."""
    return [
        CodingSchemeIdentificationItem(
            designator=codes.PRIVATE_SCHEME,
            name=codes.PRIVATE_SCHEME_NAME,
            responsible_organization=codes.PRIVATE_SCHEME_ORGANIZATION,
        )
    ]


def series_description(result: AnalysisResult, what: str) -> str:
    """E.g. "AI SR - NOT FOR DIAGNOSTIC USE - DEMO" (LO: at most 64 characters)."""
    kind = "" if result.bundle_kind == "user" else f" - {result.bundle_kind.upper()}"
    return f"AI {what} - NOT FOR DIAGNOSTIC USE{kind}"[:64]


def rectangle(bbox: tuple[float, float, float, float]) -> list[tuple[float, float]]:
    """A closed polyline (first point repeated) around ``bbox`` (x1, y1, x2, y2)."""
    x1, y1, x2, y2 = bbox
    return [(x1, y1), (x2, y1), (x2, y2), (x1, y2), (x1, y1)]
