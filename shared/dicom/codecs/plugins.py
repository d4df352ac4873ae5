"""pydicom's own decoders (pylibjpeg-*, python-gdcm plugins) for frame 0 of a syntax.

The fallback of every compressed backend we do not decode ourselves. With
the GDCM or libjpeg plugins it can abort the process (the gateway runs it in
a worker process: :mod:`shared.dicom.pool`); RLE's decoders are pure
Rust/numpy and raise rather than abort.
"""

from __future__ import annotations

import numpy as np
from pydicom import uid as pduid
from pydicom.uid import UID

from shared.dicom.codecs import gdcm
from shared.dicom.codecs.base import PixelGeometry

__all__ = ["decode", "has_plugin"]


def decode(syntax: UID, pixel_data: bytes, geom: PixelGeometry) -> np.ndarray:
    """Decode frame 0 with pydicom's decoder for `syntax` (plugins as installed)."""
    from pydicom.pixels import get_decoder

    if syntax != pduid.RLELossless and gdcm.available():
        gdcm.load()  # tracing off before pydicom's GDCM plugin runs

    arr, _meta = get_decoder(syntax).as_array(
        pixel_data,
        index=0,
        raw=True,
        rows=geom.rows,
        columns=geom.columns,
        samples_per_pixel=1,
        bits_allocated=geom.bits_allocated,
        bits_stored=geom.bits_stored,
        pixel_representation=int(geom.signed),
        photometric_interpretation=geom.photometric,
        number_of_frames=1,
        pixel_keyword="PixelData",
    )
    return arr.reshape(geom.rows, geom.columns)


def has_plugin(syntax: UID, plugin: str) -> bool:
    """Whether pydicom's decoder for `syntax` has the named plugin installed."""
    from pydicom.pixels import get_decoder

    try:
        return plugin in get_decoder(syntax).available_plugins
    except Exception:
        return False
