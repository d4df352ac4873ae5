"""JPEG 2000 and HTJ2K: OpenJPEG bound directly (threaded, optionally reduced), else pydicom.

The fast path (:mod:`.openjpeg`) can stop the inverse wavelet transform
early and return the image at 1/2, 1/4, ... resolution when the canonical
image is smaller than that; without libopenjp2 we fall back to pydicom's
plugins.
"""

from __future__ import annotations

import struct

from pydicom import uid as pduid
from pydicom.uid import UID

from shared.dicom.codecs import openjpeg, plugins
from shared.dicom.codecs.base import DecodedFrame, FrameRequest, PixelGeometry, check_size
from shared.dicom.errors import NotDicomError, UnsupportedDicomError

__all__ = ["SYNTAXES", "check", "decode", "read_siz", "reduce_factor", "sniff"]

SYNTAXES: tuple[UID, ...] = (
    pduid.JPEG2000Lossless,
    pduid.JPEG2000,
    pduid.HTJ2KLossless,
    pduid.HTJ2KLosslessRPCL,
    pduid.HTJ2K,
)


def sniff(frame: bytes) -> UID | None:
    """JPEG2000 or HTJ2K when `frame` is a J2K codestream or a JP2 file (HTJ2K has a CAP)."""
    if frame.startswith(b"\xff\x4f\xff\x51") or frame[4:8] == b"jP  ":
        return pduid.HTJ2K if b"\xff\x50" in frame[:256] else pduid.JPEG2000
    return None


def read_siz(frame: bytes) -> tuple[int, int, int, int, bool, int] | None:
    """(rows, columns, components, precision, signed, decomposition levels) from SIZ/COD.

    Levels is 0 when the image has an offset (XOsiz/YOsiz): the reduced grid
    would then not start on a full-resolution pixel, so we never reduce it.
    """
    start = frame.find(b"\xff\x4f\xff\x51", 0, 4096)
    if start < 0 or start + 46 > len(frame):
        return None
    siz = start + 2
    xsiz, ysiz, xo, yo = struct.unpack_from(">IIII", frame, siz + 6)
    comps = struct.unpack_from(">H", frame, siz + 38)[0]
    ssiz = frame[siz + 40]
    levels = 0
    cod = frame.find(b"\xff\x52", siz, min(len(frame), siz + 4096))
    if cod >= 0 and cod + 10 <= len(frame):
        levels = frame[cod + 9]
    if xo or yo:
        levels = 0
    return ysiz - yo, xsiz - xo, comps, (ssiz & 0x7F) + 1, bool(ssiz & 0x80), levels


def check(syntax: UID, frame: bytes, geom: PixelGeometry) -> None:
    """Refuse a J2K codestream without a SIZ, with colour, or of another size."""
    siz = read_siz(frame)
    if siz is None:
        raise NotDicomError("The JPEG 2000 codestream header is missing or damaged.")
    rows, cols, comps, _precision, _signed, _levels = siz
    if comps != 1:
        raise UnsupportedDicomError(
            "The JPEG 2000 image has several components (colour); only greyscale is analysed."
        )
    check_size(rows, cols, geom)


def reduce_factor(rows: int, columns: int, target: tuple[int, int], levels: int) -> int:
    """Largest number of J2K resolution levels we can skip and still cover `target` (w, h).

    Each skipped level halves the size (rounding up); the result must stay at
    least as large as the canonical image so the final resize only shrinks.
    """
    width, height = target
    reduce = 0
    while reduce < levels:
        nxt = reduce + 1
        if -(-columns // (1 << nxt)) < width or -(-rows // (1 << nxt)) < height:
            break
        reduce = nxt
    return reduce


def decode(request: FrameRequest) -> DecodedFrame:
    """OpenJPEG (reduced when `target` allows it), falling back to pydicom's plugins."""
    frame, geom, target = request.frame, request.geom, request.target
    siz = read_siz(frame)
    reduce = 0
    if target is not None and siz is not None:
        _rows, _cols, _comps, precision, signed, levels = siz
        # A reduced image is a low-pass of the full one: values can overshoot
        # the stored range, so only do it when values are plain numbers.
        if signed == geom.signed and precision >= geom.bits_stored:
            reduce = reduce_factor(geom.rows, geom.columns, target, levels)
    if openjpeg.available():
        try:
            arr = openjpeg.decode(frame, reduce=reduce, expected_size=(geom.rows, geom.columns))
            return DecodedFrame(arr, reduce)
        except openjpeg.J2kError:
            if reduce == 0:
                raise
            arr = openjpeg.decode(frame, expected_size=(geom.rows, geom.columns))
            return DecodedFrame(arr, 0)
    return DecodedFrame(plugins.decode(request.syntax, request.pixel_data, geom), 0)
