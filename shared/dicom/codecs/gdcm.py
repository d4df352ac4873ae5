"""GDCM called directly, for 12-bit JPEG Extended.

pydicom refuses GDCM for 12-bit JPEG, but the python-gdcm wheel bundles IJG's
12-bit codec and decodes it bit-exactly like DCMTK's dcmdjpeg (checked by the
test-suite). GDCM can abort the process on a corrupt codestream: it only gets
codestreams whose header :mod:`.jpeg` checked, and the gateway runs it in a
worker process (:mod:`shared.dicom.pool`).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
from pydicom.uid import UID

from shared.dicom.codecs.base import PixelGeometry

__all__ = ["available", "decode", "load"]


def load() -> Any:
    """Import python-gdcm with its console tracing off (it prints to stderr otherwise)."""
    import gdcm

    gdcm.Trace.WarningOff()
    gdcm.Trace.ErrorOff()
    gdcm.Trace.DebugOff()
    return gdcm


@cache
def available() -> bool:
    """Whether python-gdcm imports (it backs JPEG Lossless, JPEG-LS and 12-bit JPEG)."""
    try:
        load()
    except ImportError:
        return False
    return True


def decode(syntax: UID, frame: bytes, geom: PixelGeometry) -> np.ndarray:
    """Decode one JPEG-family frame with GDCM."""
    gdcm = load()
    fragment = gdcm.Fragment()
    fragment.SetByteStringValue(frame)
    fragments = gdcm.SequenceOfFragments.New()
    fragments.AddFragment(fragment)
    element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    element.SetValue(fragments.__ref__())
    image = gdcm.Image()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((geom.columns, geom.rows, 1))
    image.SetDataElement(element)
    image.SetPhotometricInterpretation(
        gdcm.PhotometricInterpretation(gdcm.PhotometricInterpretation.GetPIType(geom.photometric))
    )
    image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(str(syntax))))
    bits = geom.bits_stored
    image.SetPixelFormat(gdcm.PixelFormat(1, geom.bits_allocated, bits, bits - 1, 0))
    buffer = image.GetBuffer()
    if buffer is None:
        raise RuntimeError("GDCM returned no pixels")
    raw = buffer.encode("utf-8", "surrogateescape")
    dtype = np.uint8 if geom.bits_allocated == 8 else np.dtype("<u2")
    count = geom.rows * geom.columns
    if len(raw) < count * np.dtype(dtype).itemsize:
        raise RuntimeError("GDCM returned too few pixels")
    return np.frombuffer(raw, dtype=dtype, count=count).reshape(geom.rows, geom.columns)
