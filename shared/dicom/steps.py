"""The work of the intake, as plain functions of bytes: what runs here or in a worker.

:mod:`shared.dicom.decode` decides where (in this process, or in a worker of a
:class:`~shared.dicom.pool.DecoderPool`); this module is what runs, the same
code either way, and the only intake module a worker calls into
(:mod:`shared.dicom.worker`). Every argument and result crosses the worker pipe,
so they are plain data: bytes, limits, rules, frozen dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from shared.dicom import probes
from shared.dicom.codecs import decode_frame, native
from shared.dicom.header import DicomMetadata, ImageHeader, read_header
from shared.dicom.limits import DecodeLimits, check_pixels, decode_bytes
from shared.dicom.parse import parse_dicom
from shared.dicom.render import canonical_size, display_window, render, resize_to
from shared.dicom.selection import Selection, SelectionRules, require_selected
from shared.dicom.source import uid_value

__all__ = [
    "WARN_REDUCED_J2K",
    "CanonicalImage",
    "ImageFacts",
    "InstanceIds",
    "decode",
    "identify",
    "inspect",
    "probe",
]

WARN_REDUCED_J2K = (
    "The JPEG 2000 image was decoded at reduced resolution (fast path); grey levels may "
    "differ slightly from a full-resolution decode."
)


@dataclass(frozen=True)
class CanonicalImage:
    """The display-ready grey image the models see, and how it maps to the original."""

    pixels: np.ndarray  # uint8, (H, W), C-contiguous
    original_rows: int
    original_columns: int
    scale_x: float  # canonical width / original width
    scale_y: float  # canonical height / original height
    warnings: tuple[str, ...]
    selection: Selection | None = None  # which input selection rule accepted it (or None)


@dataclass(frozen=True)
class ImageFacts:
    """What the gateway learns of an upload before its pixels are decoded (for the budget)."""

    rows: int
    columns: int
    bits_allocated: int
    transfer_syntax_uid: str

    @property
    def decode_bytes(self) -> int:
        """Peak memory decoding and rendering this image costs (the decode-memory budget)."""
        return decode_bytes(self.rows, self.columns)


@dataclass(frozen=True)
class InstanceIds:
    """The UIDs of a file, valid ones only (None otherwise): what a failure report names."""

    sop_class_uid: str | None
    sop_instance_uid: str | None
    study_instance_uid: str | None


def _read(data: bytes, limits: DecodeLimits) -> ImageHeader:
    """Parse (after the prescan) and read the header; refuse an image over MAX_PIXELS.

    Native Pixel Data shorter than the declared image is reported first as the
    damage it is (400), as the native decoder would (it costs nothing to check).
    """
    header = read_header(parse_dicom(data, limits))
    if header.transfer_syntax in native.SYNTAXES and not header.pixel_data.encapsulated:
        native.check_length(header.pixel_data.value, header.geometry)
    check_pixels(header.geometry.rows, header.geometry.columns, limits)
    return header


def inspect(data: bytes, limits: DecodeLimits, selection: SelectionRules | None) -> ImageFacts:
    """Every header check of :func:`decode`, no pixel decoded: refusals come from here."""
    header = _read(data, limits)
    if selection is not None:
        require_selected(header, selection)
    geometry = header.geometry
    return ImageFacts(
        geometry.rows, geometry.columns, geometry.bits_allocated, str(header.transfer_syntax)
    )


def identify(data: bytes, limits: DecodeLimits) -> InstanceIds:
    """The file's SOP Class, SOP Instance and Study Instance UIDs, after the defensive parse."""
    ds = parse_dicom(data, limits).dataset
    return InstanceIds(
        uid_value(ds, "SOPClassUID"), uid_value(ds, "SOPInstanceUID"),
        uid_value(ds, "StudyInstanceUID"),
    )


def decode(
    data: bytes,
    long_side: int,
    reduced_j2k: bool,
    limits: DecodeLimits,
    selection: SelectionRules | None,
) -> tuple[CanonicalImage, DicomMetadata]:
    """Parse, read the header, select, decode frame 0, render: the canonical image."""
    header = _read(data, limits)
    selected = None if selection is None else require_selected(header, selection)
    geometry, pixel_data = header.geometry, header.pixel_data
    size = canonical_size(geometry.rows, geometry.columns, long_side)
    decoded = decode_frame(
        header.transfer_syntax,
        pixel_data.value,
        geometry,
        big_endian=pixel_data.big_endian,
        vr=pixel_data.vr,
        j2k_target=size if reduced_j2k else None,
    )
    grey, render_warnings = render(decoded.pixels, header.render, approximate=decoded.reduce > 0)
    pixels = resize_to(grey, size, j2k_reduce=decoded.reduce)
    reduced = (WARN_REDUCED_J2K,) if decoded.reduce else ()
    canonical = CanonicalImage(
        pixels=pixels,
        original_rows=geometry.rows,
        original_columns=geometry.columns,
        scale_x=size[0] / geometry.columns,
        scale_y=size[1] / geometry.rows,
        warnings=(
            *header.notes, *reduced, *render_warnings, *(selected.warnings if selected else ()),
        ),
        selection=selected,
    )
    metadata = header.metadata
    if metadata.source is not None:  # the window a presentation state shows (see source.py)
        window, exact = display_window(decoded.pixels, header.render)
        source = replace(
            metadata.source, window=window, window_exact=exact, invert=header.render.invert
        )
        metadata = replace(metadata, source=source)
    return canonical, metadata


def probe(uid: str) -> bool:
    """Whether this install decodes transfer syntax `uid` (:mod:`shared.dicom.probes`)."""
    return probes.probe(uid)
