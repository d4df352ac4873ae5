"""DICOM bytes -> the canonical image the models see. No torch, no web, no disk.

``decode_dicom`` parses once and renders once:

1. parse defensively (:mod:`shared.dicom.parse`): foreign files, missing file
   meta (transfer syntax inferred from the encoding or the codestream),
   Deflated bodies with a size bound, truncation;
2. validate the Image Pixel module before touching pixels
   (:mod:`shared.dicom.header`): greyscale only, one frame, at most
   100 megapixels, pixel data long enough / codestream header consistent;
3. decode frame 0 (:mod:`shared.dicom.codecs`; GDCM, which can abort on a
   corrupt codestream, runs in worker processes: :mod:`shared.dicom.isolate`);
4. render per PS3.14 with integer/LUT math (:mod:`shared.dicom.render`):
   modality LUT, VOI, min-max (Pixel Padding excluded), MONOCHROME1 /
   INVERSE inverted once, 8 bit;
5. shrink with cv2.INTER_AREA so the long side is at most ``long_side``.

Like pydicom, we take samples as low-bit aligned (High Bit = Bits Stored - 1,
which current IODs require) and mask everything above Bits Stored.

Refusals are :class:`DicomError` subclasses with an HTTP status and a message a
person can act on; messages never contain element values, so never PHI.
Multi-frame images are refused (422) rather than silently reduced to frame 0:
a radiograph service that analyses one frame of a cine loop or tomosynthesis
stack would report on an image nobody chose. Colour (Samples per Pixel != 1,
RGB/YBR, PALETTE COLOR) is refused for the same reason: the models were
trained on greyscale radiographs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import cv2
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID, UID_dictionary

from shared.dicom.codecs import (
    COMPRESSED_SYNTAXES,
    SUPPORTED_SYNTAXES,
    PixelGeometry,
    decode_frame,
    first_frame,
    sniff_syntax,
)
from shared.dicom.errors import DicomError, NotDicomError, UnsupportedDicomError
from shared.dicom.header import read_image_header, read_render_spec, text_value
from shared.dicom.parse import encoding_syntax, parse_dicom
from shared.dicom.render import canonical_size, render, resize_to

__all__ = [
    "CanonicalImage",
    "DicomError",
    "DicomMetadata",
    "NotDicomError",
    "UnsupportedDicomError",
    "decode_dicom",
    "encode_png",
]

_UID_RE = re.compile(r"^[0-9.]{1,64}$")

WARN_SYNTAX_INFERRED = (
    "The file has no (usable) transfer syntax in its file meta; it was inferred from the data."
)
WARN_REDUCED_J2K = (
    "The JPEG 2000 image was decoded at reduced resolution (fast path); grey levels may "
    "differ slightly from a full-resolution decode."
)


@dataclass(frozen=True)
class DicomMetadata:
    """Header facts for the response and logs.

    ``patient_id`` is the RAW value: pseudonymise it with gateway.phi before it leaves.
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


@dataclass(frozen=True)
class CanonicalImage:
    """The display-ready grey image the models see, and how it maps to the original."""

    pixels: np.ndarray  # uint8, (H, W), C-contiguous
    original_rows: int
    original_columns: int
    scale_x: float  # canonical width / original width
    scale_y: float  # canonical height / original height
    warnings: tuple[str, ...]


# ---------------------------------------------------------------- syntax


def _syntax_name(uid: UID) -> str:
    return uid.name if uid in UID_dictionary else "an unknown transfer syntax"


def _resolve_syntax(ds: Dataset, declared: UID | None, encapsulated: bool) -> tuple[UID, list[str]]:
    """The transfer syntax to decode with: declared if usable, else inferred; or a refusal."""
    if declared is not None and not _UID_RE.match(str(declared)):
        declared = None  # garbage in the meta: infer like a missing one
    if declared is not None and declared not in SUPPORTED_SYNTAXES:
        if declared in UID_dictionary:
            raise UnsupportedDicomError(
                f"The transfer syntax {_syntax_name(declared)} ({declared}) is not supported; "
                "re-export the image uncompressed, or as JPEG, JPEG-LS, JPEG 2000 or RLE."
            )
        raise UnsupportedDicomError(
            f"The transfer syntax {declared} is not a known DICOM transfer syntax; "
            "re-export the image with a standard one."
        )
    if declared is not None and (declared in COMPRESSED_SYNTAXES) == encapsulated:
        return declared, []
    if declared in COMPRESSED_SYNTAXES:
        raise NotDicomError(
            "The transfer syntax says the pixels are compressed, but the Pixel Data is not "
            "encapsulated; the file is inconsistent."
        )
    if encapsulated:
        sniffed = sniff_syntax(first_frame(ds.PixelData))
        if sniffed is None:
            raise NotDicomError(
                "The Pixel Data is compressed but the transfer syntax is missing and the "
                "compression could not be recognised."
            )
        return sniffed, [WARN_SYNTAX_INFERRED]
    if declared is not None:
        return declared, []
    inferred = encoding_syntax(ds)
    if inferred is None:
        raise NotDicomError("The transfer syntax is missing and could not be inferred.")
    return inferred, [WARN_SYNTAX_INFERRED]


# -------------------------------------------------------------- metadata


def _metadata(ds: Dataset, geometry: PixelGeometry, syntax: UID) -> DicomMetadata:
    return DicomMetadata(
        patient_id=text_value(ds, "PatientID"),
        study_date=text_value(ds, "StudyDate"),
        modality=text_value(ds, "Modality"),
        rows=geometry.rows,
        columns=geometry.columns,
        photometric_interpretation=geometry.photometric,
        transfer_syntax_uid=str(syntax),
        transfer_syntax_name=_syntax_name(syntax),
        bits_stored=geometry.bits_stored,
        study_instance_uid=text_value(ds, "StudyInstanceUID"),
        sop_instance_uid=text_value(ds, "SOPInstanceUID"),
    )


def _pixel_data(ds: Dataset) -> tuple[bytes, bool, str]:
    """(Pixel Data bytes, encapsulated?, VR), refusing an unreadable element."""
    try:
        element = ds["PixelData"]
        value = element.value
    except Exception:
        raise NotDicomError(
            "The Pixel Data element could not be read; the file is damaged."
        ) from None
    if not isinstance(value, (bytes, bytearray)) or not value:
        raise NotDicomError("The Pixel Data element is empty or malformed.")
    return bytes(value), bool(element.is_undefined_length), str(element.VR)


# ----------------------------------------------------------------- decode


def decode_dicom(
    data: bytes, long_side: int = 1024, *, reduced_j2k: bool = False
) -> tuple[CanonicalImage, DicomMetadata]:
    """Parse once, render once. Raises DicomError subclasses for every bad input.

    Returns the canonical image (uint8 grey, long side <= ``long_side``, never
    upscaled) and the header metadata. Refuses with 400 (:class:`NotDicomError`)
    what is not DICOM or is damaged (truncated, inconsistent), and with 422
    (:class:`UnsupportedDicomError`) valid DICOM we cannot analyse: no Pixel
    Data, colour or palette colour, multi-frame (NumberOfFrames > 1; we do not
    pick a frame for the user), more than 100 megapixels, an unsupported
    transfer syntax or bit depth.

    ``reduced_j2k`` lets JPEG 2000 decode at the lowest resolution level that
    still covers the canonical size (about 2-4x faster on a radiograph), at the
    price of grey levels that differ from the full-resolution rendering by
    ~0.5 on average and more at sharp edges (the wavelet low-pass is not an
    area average). Off by default: train/serve parity comes first.
    """
    if long_side < 1:
        raise ValueError("long_side must be at least 1")
    parsed = parse_dicom(data)
    ds = parsed.dataset
    header = read_image_header(ds)
    geometry = header.geometry
    pixel_data, encapsulated, vr = _pixel_data(ds)
    syntax, notes = _resolve_syntax(ds, parsed.transfer_syntax, encapsulated)
    little_endian = parsed.deflated or ds.original_encoding[1] is not False
    size = canonical_size(geometry.rows, geometry.columns, long_side)
    decoded = decode_frame(
        syntax,
        pixel_data,
        geometry,
        big_endian=not little_endian,
        vr=vr,
        j2k_target=size if reduced_j2k else None,
    )
    spec = read_render_spec(ds, geometry, little_endian)
    grey, render_warnings = render(decoded.pixels, spec, approximate=decoded.reduce > 0)
    pixels = resize_to(grey, size, j2k_reduce=decoded.reduce)
    if decoded.reduce:
        notes.append(WARN_REDUCED_J2K)
    canonical = CanonicalImage(
        pixels=pixels,
        original_rows=geometry.rows,
        original_columns=geometry.columns,
        scale_x=size[0] / geometry.columns,
        scale_y=size[1] / geometry.rows,
        warnings=(*header.notes, *notes, *render_warnings),
    )
    return canonical, _metadata(ds, geometry, syntax)


def encode_png(pixels: np.ndarray) -> bytes:
    """8-bit grey PNG of a canonical image (for POST /preview): fast, low compression."""
    if pixels.dtype != np.uint8 or pixels.ndim != 2:
        raise ValueError("encode_png expects a 2-D uint8 array")
    ok, buffer = cv2.imencode(
        ".png", np.ascontiguousarray(pixels), [cv2.IMWRITE_PNG_COMPRESSION, 1]
    )
    if not ok:
        raise ValueError("PNG encoding failed")
    return buffer.tobytes()
