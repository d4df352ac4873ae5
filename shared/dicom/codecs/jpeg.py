"""JPEG Baseline, Extended (12-bit) and Lossless: the codestream header, then a decoder.

The frame header (SOF) is read and checked against Rows/Columns before any
decoder sees the codestream: GDCM aborts the process on some malformed
headers, so it only gets structurally sound ones. 12-bit JPEG Extended goes
to pydicom's pylibjpeg plugin when the opt-in GPL extra is installed, else to
GDCM directly (:mod:`.gdcm`).
"""

from __future__ import annotations

import struct
from dataclasses import replace

from pydicom import uid as pduid
from pydicom.uid import UID

from shared.dicom.codecs import gdcm, plugins
from shared.dicom.codecs.base import DecodedFrame, FrameRequest, PixelGeometry, check_size
from shared.dicom.errors import NotDicomError, UnsupportedDicomError

__all__ = ["SYNTAXES", "check", "decode", "decoder_geometry", "read_sof"]

SYNTAXES: tuple[UID, ...] = (
    pduid.JPEGBaseline8Bit,
    pduid.JPEGExtended12Bit,
    pduid.JPEGLossless,
    pduid.JPEGLosslessSV1,
)

# JPEG start-of-frame markers: SOF0-3, 5-7, 9-11, 13-15 and JPEG-LS SOF55.
_SOF_MARKERS = frozenset(
    {*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC)}
    | {
        *range(0xCD, 0xD0),
        0xF7,
    }
)


def read_sof(frame: bytes) -> tuple[int, int, int, int, int] | None:
    """(marker, precision, rows, columns, components) of a well-formed JPEG/JPEG-LS header.

    Walks the marker segments from SOI to the first SOS and returns None
    unless there is exactly one frame header, every segment starts with a
    marker and fits in the frame, and a scan follows. GDCM aborts the process
    on some malformed headers, so we only hand it structurally sound ones.
    """
    if not frame.startswith(b"\xff\xd8"):
        return None
    pos, end = 2, min(len(frame), 1 << 20)
    sof: tuple[int, int, int, int, int] | None = None
    while pos + 4 <= end:
        if frame[pos] != 0xFF:
            return None
        marker = frame[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD9:  # TEM, RSTn, SOI, EOI: no length
            return None
        length = struct.unpack_from(">H", frame, pos + 2)[0]
        if length < 2 or pos + 2 + length > len(frame):
            return None
        if marker in _SOF_MARKERS:
            if sof is not None or length < 8:
                return None
            precision, rows, cols, comps = struct.unpack_from(">BHHB", frame, pos + 4)
            sof = (marker, precision, rows, cols, comps)
        elif marker == 0xDA:  # start of scan: the header is complete
            return sof
        pos += 2 + length
    return None


def check(syntax: UID, frame: bytes, geom: PixelGeometry) -> None:
    """Refuse a JPEG/JPEG-LS header that is damaged, colour, or disagrees with Rows/Columns."""
    sof = read_sof(frame)
    if sof is None:
        raise NotDicomError("The JPEG codestream header is missing or damaged.")
    _marker, precision, rows, cols, comps = sof
    if comps != 1:
        raise UnsupportedDicomError(
            "The JPEG image has several components (colour); only greyscale is analysed."
        )
    if precision < 2 or precision > 16:
        raise NotDicomError("The JPEG codestream declares an invalid sample precision.")
    check_size(rows, cols, geom)


def decoder_geometry(frame: bytes, geom: PixelGeometry) -> PixelGeometry:
    """Sample container sizes for the JPEG decoders, taken from the codestream's precision.

    GDCM aborts the whole process (a C++ assertion, not an exception) when an
    8-bit JPEG is described with Bits Stored below 8, which a damaged or
    hostile header can do. The codestream's own precision P is what the
    decoder produces, so we describe the frame with it: P <= 8 -> 8 allocated
    and 8 stored, else 16 allocated and P stored. Rendering masks to the
    header's Bits Stored afterwards, as for every other syntax.
    """
    sof = read_sof(frame)
    if sof is None:  # check() already refused this; keep the type checker honest
        raise NotDicomError("The JPEG codestream header is missing or damaged.")
    precision = sof[1]
    if precision <= 8:
        allocated, stored = 8, 8
    else:
        if geom.bits_allocated == 8:
            raise NotDicomError(
                "The JPEG codestream holds more than 8 bits per sample but Bits Allocated is 8; "
                "the file is inconsistent."
            )
        allocated, stored = 16, precision
    return replace(geom, bits_allocated=allocated, bits_stored=stored)


def decode(request: FrameRequest) -> DecodedFrame:
    """pydicom's plugins, or GDCM itself for 12-bit Extended."""
    syntax = request.syntax
    geom = decoder_geometry(request.frame, request.geom)
    if syntax == pduid.JPEGExtended12Bit and geom.bits_stored > 8 and not plugins.has_plugin(
        syntax, "pylibjpeg"
    ):
        return DecodedFrame(gdcm.decode(syntax, request.frame, geom))
    return DecodedFrame(plugins.decode(syntax, request.pixel_data, geom))
