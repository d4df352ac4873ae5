"""RLE Lossless through pydicom's decoders (pylibjpeg-rle or numpy).

Those decoders are pure Rust/numpy: they raise on a corrupt frame, never abort.
"""

from __future__ import annotations

import struct

from pydicom import uid as pduid
from pydicom.uid import UID

from shared.dicom.codecs import plugins
from shared.dicom.codecs.base import DecodedFrame, FrameRequest, PixelGeometry
from shared.dicom.errors import NotDicomError

__all__ = ["SYNTAXES", "check", "decode", "sniff"]

SYNTAXES: tuple[UID, ...] = (pduid.RLELossless,)


def sniff(frame: bytes) -> bool:
    """Whether `frame` starts like an RLE frame header (segment count, first offset 64)."""
    if len(frame) < 64:
        return False
    segments, first = struct.unpack_from("<II", frame, 0)
    return 1 <= segments <= 15 and first == 64


def check(syntax: UID, frame: bytes, geom: PixelGeometry) -> None:
    """The RLE header must hold one segment per byte of a sample."""
    if len(frame) < 64:
        raise NotDicomError("The RLE frame header is truncated.")
    segments = struct.unpack_from("<I", frame, 0)[0]
    if segments != geom.bits_allocated // 8:
        raise NotDicomError("The RLE frame does not have one segment per byte of a sample.")


def decode(request: FrameRequest) -> DecodedFrame:
    """pydicom's RLE decoder for frame 0."""
    return DecodedFrame(plugins.decode(request.syntax, request.pixel_data, request.geom))
