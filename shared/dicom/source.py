"""What a result object (SR, presentation state) needs from the analysed image, read once.

The decoder keeps no pydicom dataset after it has rendered the image; a writer of DICOM
results needs only the image's identity (SOP class / instance, series, study), its size,
the patient and study attributes to copy into the result, and the VOI window the models
saw. :func:`read_source` takes those from the header into a small frozen value that
travels with :class:`~shared.dicom.header.DicomMetadata`.

The values come from an untrusted upload and go into a file a PACS will store: each is
checked against its VR's syntax (UIDs, dates, times, lengths) and dropped when it does not
fit, so a hostile header cannot make the result invalid. The patient attributes are PHI:
they are kept out of ``repr`` so that a log line of the metadata never shows them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pydicom.dataset import Dataset

from shared.dicom.elements import element_value, text_value
from shared.dicom.render import Window

__all__ = ["PATIENT_STUDY_KEYWORDS", "SourceImage", "read_source"]

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_DATE = re.compile(r"^[0-9]{8}$")
_TIME = re.compile(r"^[0-9]{2}([0-9]{2}([0-9]{2}(\.[0-9]{1,6})?)?)?$")

# Patient and General Study module attributes copied into every result: keyword -> check.
PATIENT_STUDY_KEYWORDS: dict[str, str] = {
    "PatientName": "PN",
    "PatientID": "LO",
    "IssuerOfPatientID": "LO",
    "PatientBirthDate": "DA",
    "PatientSex": "CS",
    "StudyDate": "DA",
    "StudyTime": "TM",
    "AccessionNumber": "SH",
    "ReferringPhysicianName": "PN",
    "StudyID": "SH",
    "StudyDescription": "LO",
}
_MAX_LENGTH = {"PN": 64, "LO": 64, "SH": 16, "CS": 16}


@dataclass(frozen=True)
class SourceImage:
    """The analysed image as a result object references it (all values VR-checked)."""

    sop_class_uid: str | None
    sop_instance_uid: str | None
    series_instance_uid: str | None
    study_instance_uid: str | None
    rows: int
    columns: int
    photometric: str
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    # Patient / study attributes (keyword -> text) and the character set they are in: PHI.
    patient_study: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    specific_character_set: tuple[str, ...] = ()
    # The window (modality values, LINEAR) that reproduces the models' rendering; set by
    # decode_dicom once the pixels are known (None: no pixels were rendered).
    window: Window | None = None
    window_exact: bool = True  # False: a VOI LUT, sigmoid or Modality LUT was approximated
    invert: bool = False  # rendered inverted (MONOCHROME1 or Presentation LUT Shape INVERSE)

    def attributes(self) -> dict[str, str]:
        return dict(self.patient_study)


def uid_value(ds: Dataset, keyword: str) -> str | None:
    """A UID element's value when it is a valid UID (at most 64 digits and dots), else None."""
    value = text_value(ds, keyword)
    return value if value and len(value) <= 64 and _UID.match(value) else None


def _checked(value: str, vr: str) -> str | None:
    if vr == "DA":
        return value if _DATE.match(value) else None
    if vr == "TM":
        return value if _TIME.match(value) else None
    if any(ch in value for ch in "\\\r\n\f\x1b") and vr != "PN":
        return None
    if vr == "CS" and not re.match(r"^[A-Z0-9 _]*$", value):
        return None
    return value if len(value) <= _MAX_LENGTH[vr] else None


def _charset(ds: Dataset) -> tuple[str, ...]:
    value = element_value(ds, "SpecificCharacterSet")
    if value is None:
        return ()
    values = [value] if isinstance(value, str) else list(value)
    terms = tuple(str(v).strip() for v in values)
    return terms if all(re.match(r"^[A-Z0-9 _-]{0,16}$", t) for t in terms) else ()


def read_source(
    ds: Dataset, rows: int, columns: int, photometric: str, slope: float, intercept: float
) -> SourceImage:
    """The header's identity and patient/study attributes (invalid values dropped)."""
    patient_study = []
    for keyword, vr in PATIENT_STUDY_KEYWORDS.items():
        value = text_value(ds, keyword)
        checked = _checked(value, vr) if value is not None else None
        if checked is not None:
            patient_study.append((keyword, checked))
    return SourceImage(
        sop_class_uid=uid_value(ds, "SOPClassUID"),
        sop_instance_uid=uid_value(ds, "SOPInstanceUID"),
        series_instance_uid=uid_value(ds, "SeriesInstanceUID"),
        study_instance_uid=uid_value(ds, "StudyInstanceUID"),
        rows=rows,
        columns=columns,
        photometric=photometric,
        rescale_slope=slope,
        rescale_intercept=intercept,
        patient_study=tuple(patient_study),
        specific_character_set=_charset(ds),
    )
