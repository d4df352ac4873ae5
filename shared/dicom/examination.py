"""What the header says the image shows, read for input selection (:mod:`shared.dicom.selection`).

Part of the one pass over the header (:func:`shared.dicom.header.read_header`); a
module of its own because selection reads it from a bare dataset too. Every value
may be absent; texts are cut to a bounded length, since a hostile file may hold more.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

from shared.dicom.elements import element_value, int_value, text_value

__all__ = ["Examination", "read_examination"]


@dataclass(frozen=True)
class Examination:
    """What the header says the image is, for input selection (:mod:`shared.dicom.selection`).

    Raw header text: the descriptions are free text and may hold anything, so never
    quote them whole in a message (selection names the matched keyword only).
    ``anatomic_codes`` are the (coding scheme, code value) pairs of Anatomic Region
    Sequence.
    """

    sop_class_uid: str | None
    modality: str | None
    body_part_examined: str | None
    study_description: str | None
    series_description: str | None
    protocol_name: str | None
    view_position: str | None
    anatomic_codes: tuple[tuple[str, str], ...]
    rows: int | None
    columns: int | None


# Longest text read for selection (LO is 64 characters; a hostile file may hold more).
_MAX_TEXT = 1024
# Anatomic Region Sequence items read (one is usual).
_MAX_CODES = 8


def read_examination(ds: Dataset) -> Examination:
    """The elements input selection decides on; every one may be absent."""

    def text(source: Dataset | None, keyword: str) -> str | None:
        value = text_value(source, keyword) if source is not None else None
        return value[:_MAX_TEXT] if value else None

    # (a file without SOP Class UID in its dataset may still name it in its file meta)
    sop_class = text(ds, "SOPClassUID") or text(
        getattr(ds, "file_meta", None), "MediaStorageSOPClassUID"
    )
    return Examination(
        sop_class_uid=sop_class,
        modality=text(ds, "Modality"),
        body_part_examined=text(ds, "BodyPartExamined"),
        study_description=text(ds, "StudyDescription"),
        series_description=text(ds, "SeriesDescription"),
        protocol_name=text(ds, "ProtocolName"),
        view_position=text(ds, "ViewPosition"),
        anatomic_codes=_anatomic_codes(ds),
        rows=int_value(element_value(ds, "Rows")),
        columns=int_value(element_value(ds, "Columns")),
    )


def _anatomic_codes(ds: Dataset) -> tuple[tuple[str, str], ...]:
    """(scheme, value) of each readable Anatomic Region Sequence item."""
    sequence = element_value(ds, "AnatomicRegionSequence")
    codes: list[tuple[str, str]] = []
    try:
        items = list(sequence)[:_MAX_CODES] if sequence is not None else []
    except Exception:
        return ()
    for item in items:
        if not isinstance(item, Dataset):
            continue
        scheme, value = text_value(item, "CodingSchemeDesignator"), text_value(item, "CodeValue")
        if scheme and value:
            codes.append((scheme[:64].upper(), value[:64]))
    return tuple(codes)
