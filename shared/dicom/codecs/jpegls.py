"""JPEG-LS (lossless and near-lossless) through pydicom's plugins.

The codestream uses JPEG's marker syntax (frame header SOF55), so its header
is read and checked by :mod:`.jpeg`.
"""

from __future__ import annotations

from pydicom import uid as pduid
from pydicom.uid import UID

from shared.dicom.codecs import jpeg, plugins
from shared.dicom.codecs.base import DecodedFrame, FrameRequest, PixelGeometry
from shared.dicom.errors import UnsupportedDicomError

__all__ = ["SYNTAXES", "check", "decode"]

SYNTAXES: tuple[UID, ...] = (pduid.JPEGLSLossless, pduid.JPEGLSNearLossless)


def check(syntax: UID, frame: bytes, geom: PixelGeometry) -> None:
    jpeg.check(syntax, frame, geom)


def decode(request: FrameRequest) -> DecodedFrame:
    sof = jpeg.read_sof(request.frame)
    if sof is not None and sof[1] < 8:
        raise UnsupportedDicomError(
            "JPEG-LS images with fewer than 8 bits per sample are not supported."
        )
    geom = jpeg.decoder_geometry(request.frame, request.geom)
    return DecodedFrame(plugins.decode(request.syntax, request.pixel_data, geom))
