"""Read and validate the header once, without trusting it, into one typed value.

:func:`read_header` is the one pass over the dataset: the Image Pixel module
(refusing what we cannot analyse before any pixel is decoded), the Pixel Data
element, the transfer syntax, the rendering elements of PS3.14 and the
metadata for the response, all in one frozen :class:`ImageHeader` that
decoding and rendering take.

Every value is read through :mod:`shared.dicom.elements`, which turns pydicom
conversion errors (a mutated VR, a garbage length) into "absent", and every
number is range-checked before it sizes anything. Problems that we can work
around (an invalid window, a broken LUT) become notes that end up in the
CanonicalImage warnings; problems we cannot become DicomErrors. No message
quotes an element value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID

from shared.dicom.codecs import PixelGeometry
from shared.dicom.elements import (
    element_value,
    first_item,
    float_value,
    int_value,
    text_value,
)
from shared.dicom.errors import NotDicomError, UnsupportedDicomError
from shared.dicom.limits import PIXEL_CEILING
from shared.dicom.parse import ParsedDicom
from shared.dicom.render import LINEAR, LINEAR_EXACT, SIGMOID, Lut, RenderSpec, Window
from shared.dicom.source import SourceImage, read_source
from shared.dicom.syntax import resolve_syntax, syntax_name

__all__ = [
    "DicomMetadata",
    "Examination",
    "ImageHeader",
    "PixelData",
    "read_examination",
    "read_header",
]

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = (
    "RGB",
    "YBR_FULL",
    "YBR_FULL_422",
    "YBR_PARTIAL_422",
    "YBR_PARTIAL_420",
    "YBR_ICT",
    "YBR_RCT",
)


@dataclass(frozen=True)
class DicomMetadata:
    """Header facts for the response and logs.

    ``patient_id`` is the RAW value: pseudonymise it with gateway.pipeline.phi before it leaves.
    """

    patient_id: str | None
    study_date: str | None
    modality: str | None
    rows: int
    columns: int
    photometric_interpretation: str
    transfer_syntax_uid: str
    transfer_syntax_name: str
    bits_stored: int
    study_instance_uid: str | None
    sop_instance_uid: str | None
    # What a DICOM result (SR, presentation state) needs from the image (holds PHI).
    source: SourceImage | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class PixelData:
    """The Pixel Data element as stored: its bytes and how they are encoded."""

    value: bytes = field(repr=False)
    encapsulated: bool
    vr: str
    big_endian: bool


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


@dataclass(frozen=True)
class ImageHeader:
    """Everything decoding and rendering need from the header, read and validated once."""

    geometry: PixelGeometry
    transfer_syntax: UID
    pixel_data: PixelData
    render: RenderSpec  # PS3.14 modality LUT, VOI, inversion, padding (+ its own notes)
    metadata: DicomMetadata
    notes: tuple[str, ...]  # header problems worked around (image module, transfer syntax)
    examination: Examination  # what the image says it shows (input selection)


def read_header(parsed: ParsedDicom) -> ImageHeader:
    """The one pass over the header; raises DicomError subclasses for what we refuse."""
    ds = parsed.dataset
    geometry, notes = _read_geometry(ds)
    little_endian = parsed.deflated or ds.original_encoding[1] is not False
    pixel_data = _read_pixel_data(ds, big_endian=not little_endian)
    syntax, syntax_notes = resolve_syntax(
        ds, parsed.transfer_syntax, pixel_data.encapsulated, pixel_data.value
    )
    render = _read_render_spec(ds, geometry, little_endian)
    return ImageHeader(
        geometry=geometry,
        transfer_syntax=syntax,
        pixel_data=pixel_data,
        render=render,
        metadata=_read_metadata(ds, geometry, syntax, render),
        notes=(*notes, *syntax_notes),
        examination=read_examination(ds),
    )


# ------------------------------------------------------------- image pixel


def _read_geometry(ds: Dataset) -> tuple[PixelGeometry, list[str]]:
    """Image Pixel module -> PixelGeometry, refusing what we cannot analyse (before decoding).

    The checks run in a fixed order (pixels, colour, frames, size, bits), so a
    file with several problems always gets the same refusal.
    """
    notes: list[str] = []
    _require_pixel_data(ds)
    photometric = _greyscale_photometric(ds, notes)
    rows, columns = _single_frame_size(ds)
    bits_allocated, bits_stored, signed = _sample_format(ds, notes)
    geometry = PixelGeometry(rows, columns, bits_allocated, bits_stored, signed, photometric)
    return geometry, notes


def _require_pixel_data(ds: Dataset) -> None:
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise UnsupportedDicomError(
                "The DICOM file has floating-point pixel data, which is not supported."
            )
        raise UnsupportedDicomError(
            "The DICOM file has no Pixel Data: it is not an image (a report, a structured "
            "document or a presentation state?). Send the radiograph itself."
        )


def _greyscale_photometric(ds: Dataset, notes: list[str]) -> str:
    """MONOCHROME1 or MONOCHROME2 (assumed when missing); colour and palette are refused."""
    samples = int_value(element_value(ds, "SamplesPerPixel"))
    samples = 1 if samples is None else samples
    photometric = text_value(ds, "PhotometricInterpretation")
    photometric = photometric.upper() if photometric else None
    if photometric == "PALETTE COLOR":
        raise UnsupportedDicomError(
            "The image is PALETTE COLOR; only greyscale (MONOCHROME1/2) radiographs are analysed."
        )
    if samples != 1 or photometric in _COLOUR:
        raise UnsupportedDicomError(
            "The image is in colour; only greyscale (MONOCHROME1/2) radiographs are analysed."
        )
    if photometric is None:
        photometric = "MONOCHROME2"
        notes.append("Photometric Interpretation is missing; MONOCHROME2 was assumed.")
    elif photometric not in _MONOCHROME:
        raise UnsupportedDicomError(
            "The image's Photometric Interpretation is not MONOCHROME1 or MONOCHROME2; "
            "only greyscale radiographs are analysed."
        )
    return photometric


def _single_frame_size(ds: Dataset) -> tuple[int, int]:
    """(Rows, Columns) of a single-frame image of at most :data:`PIXEL_CEILING` (MAX_PIXELS,
    the setting, is checked once the header is read: :func:`~shared.dicom.limits.check_pixels`)."""
    frames = int_value(element_value(ds, "NumberOfFrames"))
    frames = 1 if frames is None or frames < 1 else frames
    if frames > 1:
        # (the count is not quoted: Number of Frames is free text (IS) and could hold anything)
        raise UnsupportedDicomError(
            "The file holds several frames; send a single-frame radiograph "
            "(multi-frame images are not analysed)."
        )

    rows, columns = int_value(element_value(ds, "Rows")), int_value(element_value(ds, "Columns"))
    if not rows or not columns or rows < 0 or columns < 0:
        raise UnsupportedDicomError("The image has no size: Rows or Columns is missing or zero.")
    if rows * columns > PIXEL_CEILING:
        raise UnsupportedDicomError(
            f"The image is {columns}x{rows} pixels, more than the "
            f"{PIXEL_CEILING // 1_000_000} megapixels this service accepts."
        )
    return rows, columns


def _sample_format(ds: Dataset, notes: list[str]) -> tuple[int, int, bool]:
    """(Bits Allocated, Bits Stored, signed) of a sample, refusing depths we cannot read."""
    bits_allocated = int_value(element_value(ds, "BitsAllocated"))
    if bits_allocated is None:
        raise UnsupportedDicomError("Bits Allocated is missing, so the pixels cannot be read.")
    if bits_allocated not in (8, 16):
        raise UnsupportedDicomError(
            f"Images with {bits_allocated} bits allocated per pixel are not supported "
            "(8 or 16 are)."
        )
    bits_stored = int_value(element_value(ds, "BitsStored"))
    if bits_stored is None:
        bits_stored = bits_allocated
        notes.append("Bits Stored is missing; Bits Allocated was used.")
    if not 1 <= bits_stored <= bits_allocated:
        raise NotDicomError(
            "Bits Stored is not between 1 and Bits Allocated; the header is damaged."
        )
    representation = int_value(element_value(ds, "PixelRepresentation"))
    representation = 0 if representation is None else representation
    if representation not in (0, 1):
        raise NotDicomError("Pixel Representation is neither 0 nor 1; the header is damaged.")
    return bits_allocated, bits_stored, representation == 1


def _read_pixel_data(ds: Dataset, *, big_endian: bool) -> PixelData:
    """The Pixel Data element, refusing an unreadable or empty one."""
    try:
        element = ds["PixelData"]
        data = element.value
    except Exception:
        raise NotDicomError(
            "The Pixel Data element could not be read; the file is damaged."
        ) from None
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise NotDicomError("The Pixel Data element is empty or malformed.")
    return PixelData(
        value=bytes(data),
        encapsulated=bool(element.is_undefined_length),
        vr=str(element.VR),
        big_endian=big_endian,
    )


# ---------------------------------------------------------------- metadata


def _read_metadata(
    ds: Dataset, geometry: PixelGeometry, syntax: UID, render: RenderSpec
) -> DicomMetadata:
    return DicomMetadata(
        patient_id=text_value(ds, "PatientID"),
        study_date=text_value(ds, "StudyDate"),
        modality=text_value(ds, "Modality"),
        rows=geometry.rows,
        columns=geometry.columns,
        photometric_interpretation=geometry.photometric,
        transfer_syntax_uid=str(syntax),
        transfer_syntax_name=syntax_name(syntax),
        bits_stored=geometry.bits_stored,
        study_instance_uid=text_value(ds, "StudyInstanceUID"),
        sop_instance_uid=text_value(ds, "SOPInstanceUID"),
        source=read_source(
            ds, geometry.rows, geometry.columns, geometry.photometric,
            render.slope, render.intercept,
        ),
    )


# ------------------------------------------------------------- examination

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


# ------------------------------------------------------------ render spec


def _lut_from_item(item: Dataset, little_endian: bool, signed_input: bool) -> Lut | None:
    """A Modality/VOI LUT item -> Lut (None when its descriptor or data is unusable)."""
    descriptor = element_value(item, "LUTDescriptor")
    if descriptor is None or isinstance(descriptor, (bytes, bytearray)):
        return None
    try:
        entries, first, bits = (int(v) for v in list(descriptor)[:3])
    except (TypeError, ValueError):
        return None
    entries = entries or 65536
    if signed_input and first >= 32768:  # SS value read as US
        first -= 65536
    if not 1 <= bits <= 16 or entries < 1:
        return None
    raw = element_value(item, "LUTData")
    if raw is None:
        return None
    if isinstance(raw, (bytes, bytearray)):
        data = np.frombuffer(raw[: len(raw) // 2 * 2], dtype="<u2" if little_endian else ">u2")
    else:
        try:
            data = np.asarray(list(raw) if not isinstance(raw, int) else [raw], dtype=np.int64)
        except (TypeError, ValueError, OverflowError):
            return None
    data = data[:entries]
    if data.size == 0:
        return None
    return Lut(first=first, values=data.astype(np.float64), bits=bits)


def _window(ds: Dataset, notes: list[str]) -> Window | None:
    center, width = element_value(ds, "WindowCenter"), element_value(ds, "WindowWidth")
    if center is None and width is None:
        return None
    c, w = float_value(center), float_value(width)
    function = (text_value(ds, "VOILUTFunction") or LINEAR).upper()
    if function not in (LINEAR, LINEAR_EXACT, SIGMOID):
        notes.append("Unknown VOI LUT Function; LINEAR was used.")
        function = LINEAR
    if c is None or w is None or w <= 0 or (function == LINEAR and w < 1):
        notes.append("Window Center/Width is invalid and was ignored.")
        return None
    return Window(center=c, width=w, function=function)


def _padding(ds: Dataset, bits_stored: int, signed: bool) -> tuple[int, int] | None:
    """Pixel Padding Value (and Range Limit) as an inclusive range of stored values."""
    value = int_value(element_value(ds, "PixelPaddingValue"))
    if value is None:
        return None
    limit = int_value(element_value(ds, "PixelPaddingRangeLimit"))

    def stored(v: int) -> int:
        v &= (1 << bits_stored) - 1
        if signed:
            sign = 1 << (bits_stored - 1)
            v = (v ^ sign) - sign
        return v

    lo = stored(value)
    hi = lo if limit is None else stored(limit)
    return (min(lo, hi), max(lo, hi))


def _read_render_spec(ds: Dataset, geometry: PixelGeometry, little_endian: bool) -> RenderSpec:
    """Modality LUT, VOI, inversion and padding for the first frame (PS3.14 order)."""
    notes: list[str] = []
    signed = geometry.signed

    modality_lut = None
    item = first_item(ds, "ModalityLUTSequence")
    if item is not None:
        modality_lut = _lut_from_item(item, little_endian, signed)
        if modality_lut is None:
            notes.append("The Modality LUT Sequence is invalid and was ignored.")
    slope = float_value(element_value(ds, "RescaleSlope"))
    intercept = float_value(element_value(ds, "RescaleIntercept"))
    if slope == 0:
        notes.append("Rescale Slope is 0; it was ignored.")
        slope = None
    slope = 1.0 if slope is None else slope
    intercept = 0.0 if intercept is None else intercept

    voi_lut = None
    item = first_item(ds, "VOILUTSequence")
    if item is not None:
        negative_input = signed or intercept < 0 or slope < 0
        voi_lut = _lut_from_item(item, little_endian, negative_input and modality_lut is None)
        if voi_lut is None:
            notes.append("The VOI LUT Sequence is invalid and was ignored.")
    window = None if voi_lut is not None else _window(ds, notes)

    shape = (text_value(ds, "PresentationLUTShape") or "").upper()
    invert = geometry.photometric == "MONOCHROME1" or shape == "INVERSE"
    return RenderSpec(
        bits_stored=geometry.bits_stored,
        signed=signed,
        slope=slope,
        intercept=intercept,
        modality_lut=modality_lut,
        voi_lut=voi_lut,
        window=window,
        invert=invert,
        padding=_padding(ds, geometry.bits_stored, signed),
        notes=tuple(notes),
    )
