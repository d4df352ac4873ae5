"""What the SR and the presentation state share: identity, the source's stand-in, UIDs."""

from __future__ import annotations

from dataclasses import dataclass

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from shared.dicom.results import codes
from shared.dicom.results.model import AnalysisResult
from shared.dicom.source import PATIENT_STUDY_KEYWORDS, SourceImage

MANUFACTURER = "spine-lesion-service"
DEVICE_SERIAL = "1"  # GSPS asks for one; a piece of software has none
SR_SERIES_NUMBER = 9901
PR_SERIES_NUMBER = 9902


class ResultWriteError(ValueError):
    """The image lacks what a result object must reference (its UIDs)."""


@dataclass(frozen=True)
class ResultUids:
    """New UIDs of one result pair: one series per object (SR and PR are two modalities)."""

    sr_series: str
    sr_instance: str
    pr_series: str
    pr_instance: str

    @classmethod
    def new(cls) -> ResultUids:
        return cls(generate_uid(), generate_uid(), generate_uid(), generate_uid())


def reference_dataset(source: SourceImage) -> Dataset:
    """A header-only stand-in for the source image: what highdicom reads from "evidence".

    It holds the identity, size and patient/study attributes of the image, never pixels.
    """
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
