"""DICOM bytes -> the canonical image the models see. No torch, no web, no disk.

One entry per question (:func:`decode_dicom`, :func:`inspect_dicom`,
:func:`identify_dicom`, :func:`decodable_transfer_syntaxes`), each with one
mode argument: ``pool``. Without one, the work runs in this process (trusted
files: training, bench, scripts; a native decoder that aborts takes the
caller down). With a :class:`~shared.dicom.pool.DecoderPool` every step of
it (parsing, the header, the decoders) runs in one of the pool's memory-limited
worker processes under a deadline: the gateway's mode. The work itself is
:mod:`shared.dicom.steps`, the same code either way; a decode parses once,
reads the header once and renders once. The bytes of one upload go through
the modules in this order:

1. :mod:`shared.dicom.parse`: parse defensively: foreign files, missing file
   meta, Deflated bodies with a size bound, truncation; before pydicom builds
   anything, :mod:`shared.dicom.limits` walks the bytes and refuses a file
   past a cap (elements, sequence items, depth, fragments, element length);
2. :mod:`shared.dicom.header`: read and validate the header once into an
   :class:`~shared.dicom.header.ImageHeader`, before touching pixels:
   greyscale only, one frame, at most ``MAX_PIXELS``, the transfer syntax
   (declared, or inferred from the encoding or the codestream:
   :mod:`shared.dicom.syntax`), the PS3.14 rendering elements, the metadata;
   then, when the caller passes rules, :mod:`shared.dicom.selection` decides
   whether it is a spine radiograph we analyse (still before any pixel);
3. :mod:`shared.dicom.codecs`: decode frame 0 with the backend of its transfer
   syntax, after checking pixel data length / codestream header;
4. :mod:`shared.dicom.render`: render per PS3.14 with integer/LUT math:
   modality LUT, VOI, min-max (Pixel Padding excluded), MONOCHROME1 /
   INVERSE inverted once, 8 bit; then shrink with cv2.INTER_AREA so the long
   side is at most ``long_side``.

Like pydicom, we take samples as low-bit aligned (High Bit = Bits Stored - 1,
which current IODs require) and mask everything above Bits Stored.

Refusals are :class:`DicomError` subclasses with an HTTP status and a message a
person can act on; messages never contain element values, so never PHI.
Multi-frame images are refused (422) rather than silently reduced to frame 0:
a radiograph service that analyses one frame of a cine loop or tomosynthesis
stack would report on an image nobody chose. Colour (Samples per Pixel != 1,
RGB/YBR, PALETTE COLOR) is refused for the same reason: the models were
trained on greyscale radiographs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import cv2
import numpy as np

from shared.dicom import steps
from shared.dicom.errors import DicomError
from shared.dicom.header import DicomMetadata
from shared.dicom.limits import DecodeLimits
from shared.dicom.pool import DecoderPool
from shared.dicom.probes import probe_syntaxes
from shared.dicom.selection import SelectionRules
from shared.dicom.steps import CanonicalImage, Inspection, InstanceIds

__all__ = [
    "decodable_transfer_syntaxes",
    "decode_dicom",
    "encode_png",
    "identify_dicom",
    "inspect_dicom",
]

T = TypeVar("T")

_DEFAULT_LIMITS = DecodeLimits()


def _run(pool: DecoderPool | None, step: Callable[..., T], *args: Any) -> T:
    """The mode: `step` here without a pool, else in one of its workers."""
    return step(*args) if pool is None else pool.run(step, *args)


def decode_dicom(
    data: bytes,
    long_side: int = 1024,
    *,
    reduced_j2k: bool = False,
    limits: DecodeLimits = _DEFAULT_LIMITS,
    selection: SelectionRules | None = None,
    pool: DecoderPool | None = None,
    inspection: Inspection | None = None,
) -> tuple[CanonicalImage, DicomMetadata]:
    """Parse once, render once. Raises DicomError subclasses for every bad input.

    Returns the canonical image (uint8 grey, long side <= ``long_side``, never
    upscaled) and the header metadata. Refuses with 400 (:class:`NotDicomError`)
    what is not DICOM or is damaged (truncated, inconsistent), and with 422
    (:class:`UnsupportedDicomError`) valid DICOM we cannot analyse: no Pixel
    Data, colour or palette colour, multi-frame (NumberOfFrames > 1; we do not
    pick a frame for the user), an unsupported transfer syntax or bit depth,
    or past a cap of ``limits`` (a :class:`~shared.dicom.limits.DicomLimitError`
    naming the setting: more than ``MAX_PIXELS``, too many elements, items or
    fragments...). ``selection`` rules refuse what is not a spine radiograph
    (422, :class:`NotSelectedError`) before any pixel is decoded.

    ``reduced_j2k`` lets JPEG 2000 decode at the lowest resolution level that
    still covers the canonical size (about 2-4x faster on a radiograph), at the
    price of grey levels that differ from the full-resolution rendering by
    ~0.5 on average and more at sharp edges (the wavelet low-pass is not an
    area average). Off by default: train/serve parity comes first.

    ``pool`` is the mode: None runs it all here, a pool runs it all in one of
    its workers (memory limit, deadline).

    ``inspection``, what :func:`inspect_dicom` returned for these same bytes,
    spares reading the header again (its checks and selection stand): the
    gateway inspects first when its decode-memory budget has no room yet.
    """
    if long_side < 1:
        raise ValueError("long_side must be at least 1")
    return _run(
        pool, steps.decode, data, long_side, reduced_j2k, limits, selection, inspection
    )


def inspect_dicom(
    data: bytes,
    *,
    limits: DecodeLimits = _DEFAULT_LIMITS,
    selection: SelectionRules | None = None,
    pool: DecoderPool | None = None,
) -> Inspection:
    """Every header check of :func:`decode_dicom`, no pixel decoded: refusals come from here.

    The :class:`~shared.dicom.steps.Inspection` says what the image costs to decode
    and, passed to :func:`decode_dicom` with the same bytes, spares it the header.
    """
    return _run(pool, steps.inspect, data, limits, selection)


def identify_dicom(
    data: bytes, *, limits: DecodeLimits = _DEFAULT_LIMITS, pool: DecoderPool | None = None
) -> InstanceIds:
    """The file's SOP Class, SOP Instance and Study Instance UIDs, after the same defensive
    parse (and in the same mode) as a decode; for files a decode refused."""
    return _run(pool, steps.identify, data, limits)


def decodable_transfer_syntaxes(pool: DecoderPool | None = None) -> dict[str, bool]:
    """UID name -> whether this install decodes it, proven by decoding a probe of each
    (:mod:`shared.dicom.probes`) in the mode uploads use (checked at start-up, for /health).
    A syntax whose probe crashes or outlasts a worker's deadline counts as not decodable."""

    def prove(uid: str) -> bool:
        try:
            return _run(pool, steps.probe, uid)
        except DicomError:
            return False

    return probe_syntaxes(prove)


def encode_png(pixels: np.ndarray) -> bytes:
    """8-bit grey PNG of a canonical image (for POST /preview): fast, low compression."""
    if pixels.dtype != np.uint8 or pixels.ndim != 2:
        raise ValueError("encode_png expects a 2-D uint8 array")
    ok, buffer = cv2.imencode(
        ".png", np.ascontiguousarray(pixels), [cv2.IMWRITE_PNG_COMPRESSION, 1]
    )
    if not ok:
        raise ValueError("PNG encoding failed")
    return buffer.tobytes()
