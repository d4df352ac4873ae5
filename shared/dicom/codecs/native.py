"""Uncompressed (native) Pixel Data: a zero-copy ``np.frombuffer`` view, no pydicom handler."""

from __future__ import annotations

import numpy as np
from pydicom import uid as pduid
from pydicom.uid import UID

from shared.dicom.codecs.base import DecodedFrame, PixelGeometry
from shared.dicom.errors import NotDicomError

__all__ = ["SYNTAXES", "check_length", "decode"]

SYNTAXES: tuple[UID, ...] = (
    pduid.ImplicitVRLittleEndian,
    pduid.ExplicitVRLittleEndian,
    pduid.ExplicitVRBigEndian,
    pduid.DeflatedExplicitVRLittleEndian,
)


def check_length(pixel_data: bytes, geom: PixelGeometry) -> None:
    """Refuse native Pixel Data shorter than the image the header declares (400)."""
    expected = geom.rows * geom.columns * (geom.bits_allocated // 8)
    if len(pixel_data) < expected:
        raise NotDicomError(
            f"The Pixel Data is truncated: {len(pixel_data)} bytes where a "
            f"{geom.columns}x{geom.rows} image needs {expected}."
        )


def decode(pixel_data: bytes, geom: PixelGeometry, *, big_endian: bool, vr: str) -> DecodedFrame:
    """A view of native Pixel Data (byte-swapped copy for big endian), refusing a short one."""
    check_length(pixel_data, geom)
    count = geom.rows * geom.columns
    if geom.bits_allocated == 8:
        if big_endian and vr == "OW":
            # 8-bit samples in big-endian OW words are stored byte-swapped in pairs
            words = np.frombuffer(pixel_data, dtype=">u2", count=(count + 1) // 2)
            flat = words.astype("<u2").view(np.uint8)[:count]
        else:
            flat = np.frombuffer(pixel_data, dtype=np.uint8, count=count)
        arr = flat.view(np.int8) if geom.signed else flat
    else:
        kind = "i2" if geom.signed else "u2"
        arr = np.frombuffer(pixel_data, dtype=(">" if big_endian else "<") + kind, count=count)
        if big_endian:
            arr = arr.astype(kind)
    return DecodedFrame(arr.reshape(geom.rows, geom.columns))
