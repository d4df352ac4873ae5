"""What every codec backend shares: the frame description in, the decoded frame out.

A backend module (``native``, ``rle``, ``jpeg``, ``jpegls``, ``j2k``) names
the transfer syntaxes it decodes in ``SYNTAXES``; a compressed one also
checks the codestream's own header against the DICOM header (``check``)
before anything is allocated, then decodes frame 0 (``decode``). The
registry in :mod:`shared.dicom.codecs` picks the backend by transfer syntax.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from pydicom.uid import UID

from shared.dicom.errors import NotDicomError

__all__ = ["CompressedBackend", "DecodedFrame", "FrameRequest", "PixelGeometry", "check_size"]


@dataclass(frozen=True)
class PixelGeometry:
    """The Image Pixel module values that decoding depends on (already validated)."""

    rows: int
    columns: int
    bits_allocated: int  # 8 or 16
    bits_stored: int  # 1..bits_allocated
    signed: bool
    photometric: str


@dataclass(frozen=True)
class DecodedFrame:
    """A decoded 2-D frame of stored values (or raw bit patterns)."""

    pixels: np.ndarray
    reduce: int = 0  # JPEG 2000 resolution levels skipped (0 = full resolution)


@dataclass(frozen=True)
class FrameRequest:
    """What a compressed backend decodes: frame 0 of one transfer syntax, and how."""

    syntax: UID
    pixel_data: bytes  # the whole encapsulated Pixel Data element
    frame: bytes  # frame 0's codestream
    geom: PixelGeometry
    target: tuple[int, int] | None  # canonical (width, height) a reduced decode must cover


class CompressedBackend(Protocol):
    """The interface of a compressed-syntax backend module."""

    SYNTAXES: tuple[UID, ...]

    def check(self, syntax: UID, frame: bytes, geom: PixelGeometry) -> None:
        """Refuse a codestream whose own header disagrees with the DICOM header."""

    def decode(self, request: FrameRequest) -> DecodedFrame:
        """Decode frame 0 of the request."""


def check_size(rows: int, cols: int, geom: PixelGeometry) -> None:
    """Refuse a codestream that declares another image size than Rows/Columns."""
    if (rows, cols) != (geom.rows, geom.columns):
        raise NotDicomError(
            f"The compressed image is {cols}x{rows} pixels but the header says "
            f"{geom.columns}x{geom.rows}; the file is inconsistent."
        )
