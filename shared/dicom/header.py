"""Read and validate the header elements the intake needs, without trusting them.

Every value is read through :func:`_value`, which turns pydicom conversion
errors (a mutated VR, a garbage length) into "absent", and every number is
range-checked before it sizes anything. Problems that we can work around
(an invalid window, a broken LUT) become notes that end up in the
CanonicalImage warnings; problems we cannot become DicomErrors. No message
quotes an element value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from shared.dicom.codecs import PixelGeometry
from shared.dicom.errors import NotDicomError, UnsupportedDicomError
from shared.dicom.render import LINEAR, LINEAR_EXACT, SIGMOID, Lut, RenderSpec, Window

__all__ = ["MAX_PIXELS", "ImageHeader", "read_image_header", "read_render_spec", "text_value"]

# Refuse images larger than this before decoding (100 megapixels).
MAX_PIXELS = 100_000_000
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
class ImageHeader:
    """Validated Image Pixel module plus where the pixels are."""

    geometry: PixelGeometry
    frames: int
    notes: tuple[str, ...]


def _value(ds: Dataset, keyword: str) -> Any:
    """Element value or None; pydicom conversion errors on hostile files count as absent."""
    try:
        elem = ds.get(keyword)
    except Exception:
        return None
    return None if elem is None or elem == "" else elem


def _first(value: Any) -> Any:
    """First value of a multi-valued element (VM > 1), the value itself otherwise."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return value[0] if len(value) else None
    return value


def _float(value: Any) -> float | None:
    value = _first(value)
    if value is None or isinstance(value, (bytes, bytearray)):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _int(value: Any) -> int | None:
    number = _float(value)
    if number is None or number != int(number):
        return None
    return int(number)


def text_value(ds: Dataset, keyword: str) -> str | None:
    """A string element as plain text (None when absent, empty or unreadable)."""
    value = _first(_value(ds, keyword))
    if value is None:
        return None
    try:
        text = str(value).strip().strip("\x00").strip()
    except Exception:
        return None
    return text or None


def read_image_header(ds: Dataset) -> ImageHeader:
    """Image Pixel module -> PixelGeometry, refusing what we cannot analyse (before decoding)."""
    notes: list[str] = []
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise UnsupportedDicomError(
                "The DICOM file has floating-point pixel data, which is not supported."
            )
        raise UnsupportedDicomError(
            "The DICOM file has no Pixel Data: it is not an image (a report, a structured "
            "document or a presentation state?). Send the radiograph itself."
        )
    samples = _int(_value(ds, "SamplesPerPixel"))
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

    frames = _int(_value(ds, "NumberOfFrames"))
    frames = 1 if frames is None or frames < 1 else frames
    if frames > 1:
        # (the count is not quoted: Number of Frames is free text (IS) and could hold anything)
        raise UnsupportedDicomError(
            "The file holds several frames; send a single-frame radiograph "
            "(multi-frame images are not analysed)."
        )

    rows, columns = _int(_value(ds, "Rows")), _int(_value(ds, "Columns"))
    if not rows or not columns or rows < 0 or columns < 0:
        raise UnsupportedDicomError("The image has no size: Rows or Columns is missing or zero.")
    if rows * columns > MAX_PIXELS:
        raise UnsupportedDicomError(
            f"The image is {columns}x{rows} pixels, more than the "
            f"{MAX_PIXELS // 1_000_000} megapixels this service accepts."
        )

    bits_allocated = _int(_value(ds, "BitsAllocated"))
    if bits_allocated is None:
        raise UnsupportedDicomError("Bits Allocated is missing, so the pixels cannot be read.")
    if bits_allocated not in (8, 16):
        raise UnsupportedDicomError(
            f"Images with {bits_allocated} bits allocated per pixel are not supported "
            "(8 or 16 are)."
        )
    bits_stored = _int(_value(ds, "BitsStored"))
    if bits_stored is None:
        bits_stored = bits_allocated
        notes.append("Bits Stored is missing; Bits Allocated was used.")
    if not 1 <= bits_stored <= bits_allocated:
        raise NotDicomError(
            "Bits Stored is not between 1 and Bits Allocated; the header is damaged."
        )
    representation = _int(_value(ds, "PixelRepresentation"))
    representation = 0 if representation is None else representation
    if representation not in (0, 1):
        raise NotDicomError("Pixel Representation is neither 0 nor 1; the header is damaged.")

    geometry = PixelGeometry(
        rows=rows,
        columns=columns,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        signed=representation == 1,
        photometric=photometric,
    )
    return ImageHeader(geometry, frames, tuple(notes))


# ----------------------------------------------------------------- render


def _lut_from_item(item: Dataset, little_endian: bool, signed_input: bool) -> Lut | None:
    """A Modality/VOI LUT item -> Lut (None when its descriptor or data is unusable)."""
    descriptor = _value(item, "LUTDescriptor")
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
    raw = _value(item, "LUTData")
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


def _first_item(ds: Dataset, keyword: str) -> Dataset | None:
    seq = _value(ds, keyword)
    try:
        return seq[0] if seq is not None and len(seq) else None
    except Exception:
        return None


def _window(ds: Dataset, notes: list[str]) -> Window | None:
    center, width = _value(ds, "WindowCenter"), _value(ds, "WindowWidth")
    if center is None and width is None:
        return None
    c, w = _float(center), _float(width)
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
    value = _int(_value(ds, "PixelPaddingValue"))
    if value is None:
        return None
    limit = _int(_value(ds, "PixelPaddingRangeLimit"))

    def stored(v: int) -> int:
        v &= (1 << bits_stored) - 1
        if signed:
            sign = 1 << (bits_stored - 1)
            v = (v ^ sign) - sign
        return v

    lo = stored(value)
    hi = lo if limit is None else stored(limit)
    return (min(lo, hi), max(lo, hi))


def read_render_spec(ds: Dataset, geometry: PixelGeometry, little_endian: bool) -> RenderSpec:
    """Modality LUT, VOI, inversion and padding for the first frame (PS3.14 order)."""
    notes: list[str] = []
    signed = geometry.signed

    modality_lut = None
    item = _first_item(ds, "ModalityLUTSequence")
    if item is not None:
        modality_lut = _lut_from_item(item, little_endian, signed)
        if modality_lut is None:
            notes.append("The Modality LUT Sequence is invalid and was ignored.")
    slope = _float(_value(ds, "RescaleSlope"))
    intercept = _float(_value(ds, "RescaleIntercept"))
    if slope == 0:
        notes.append("Rescale Slope is 0; it was ignored.")
        slope = None
    slope = 1.0 if slope is None else slope
    intercept = 0.0 if intercept is None else intercept

    voi_lut = None
    item = _first_item(ds, "VOILUTSequence")
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
