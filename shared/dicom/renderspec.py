"""The header's PS3.14 rendering elements -> :class:`~shared.dicom.render.RenderSpec`.

Part of the one pass over the header (:func:`shared.dicom.header.read_header`):
Modality LUT Sequence or Rescale Slope/Intercept, VOI LUT Sequence or Window
Center/Width with its VOI LUT Function, Presentation LUT Shape and Pixel Padding,
for the first frame, in the order PS3.14 applies them. What is broken but can be
worked around (an invalid window, an unusable LUT) is ignored with a note for the
CanonicalImage warnings; nothing here refuses a file, and no note quotes a value.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset

from shared.dicom.codecs import PixelGeometry
from shared.dicom.elements import element_value, first_item, float_value, int_value, text_value
from shared.dicom.render import LINEAR, LINEAR_EXACT, SIGMOID, Lut, RenderSpec, Window

__all__ = ["read_render_spec"]


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


def read_render_spec(ds: Dataset, geometry: PixelGeometry, little_endian: bool) -> RenderSpec:
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
