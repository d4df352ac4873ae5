"""The work of the intake, as plain functions of bytes: what runs here or in a worker.

:mod:`shared.dicom.decode` decides where (in this process, or in a worker of a
:class:`~shared.dicom.pool.DecoderPool`); this module is what runs, the same
code either way, and the only intake module a worker calls into
(:mod:`shared.dicom.worker`). Every argument and result crosses the worker pipe,
so they are plain data: bytes, limits, rules, frozen dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

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
    "InstanceIds",
    "Inspection",
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
class Inspection:
    """An upload's header, read, checked and selected once, before any pixel is decoded.

    What the gateway learns for its decode-memory budget (:attr:`decode_bytes`), and what
    :func:`decode` goes on from, so the header is never read twice. Without the Pixel
    Data where the upload holds it (:meth:`~shared.dicom.header.PixelData.detached`):
    it crosses the worker pipe in a few hundred bytes, and the decode takes the pixels
    from the same upload again.
    """

    header: ImageHeader = field(repr=False)  # its metadata holds PHI
    selected: Selection | None  # which input selection rule accepted it (None: no rules)

    @property
    def rows(self) -> int:
        return self.header.geometry.rows

    @property
    def columns(self) -> int:
        return self.header.geometry.columns

    @property
    def decode_bytes(self) -> int:
        """Peak memory decoding and rendering this image costs (the decode-memory budget)."""
        return decode_bytes(self.rows, self.columns)

    def detached(self, data: bytes) -> Inspection:
        """Without the Pixel Data that `data`, the upload, holds (to cross a pipe small)."""
        pixel_data = self.header.pixel_data.detached(data)
        return replace(self, header=replace(self.header, pixel_data=pixel_data))


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


def inspect(data: bytes, limits: DecodeLimits, selection: SelectionRules | None) -> Inspection:
    """Every header check of :func:`decode`, no pixel decoded: refusals come from here."""
    return _inspect(data, limits, selection).detached(data)


def _inspect(data: bytes, limits: DecodeLimits, selection: SelectionRules | None) -> Inspection:
    header = _read(data, limits)
    return Inspection(header, None if selection is None else require_selected(header, selection))


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
    inspection: Inspection | None = None,
) -> tuple[CanonicalImage, DicomMetadata]:
    """Parse, read the header, select (or go on from the `inspection` of these same
    bytes, which did that), decode frame 0, render: the canonical image."""
    if inspection is None:
        inspection = _inspect(data, limits, selection)  # its Pixel Data attached
    header, selected = inspection.header, inspection.selected
    geometry, pixel_data = header.geometry, header.pixel_data.attached(data)
    size = canonical_size(geometry.rows, geometry.columns, long_side)
    decoded = decode_frame(
        header.transfer_syntax,
        pixel_data.value,
        geometry,
        big_endian=pixel_data.big_endian,
        vr=pixel_data.vr,
        j2k_target=size if reduced_j2k else None,
    )
    rendered = render(decoded.pixels, header.render, approximate=decoded.reduce > 0)
    pixels = resize_to(rendered.pixels, size, j2k_reduce=decoded.reduce)
    reduced = (WARN_REDUCED_J2K,) if decoded.reduce else ()
    canonical = CanonicalImage(
        pixels=pixels,
        original_rows=geometry.rows,
        original_columns=geometry.columns,
        scale_x=size[0] / geometry.columns,
        scale_y=size[1] / geometry.rows,
        warnings=(
            *header.notes, *reduced, *rendered.warnings, *(selected.warnings if selected else ()),
        ),
        selection=selected,
    )
    metadata = header.metadata
    if metadata.source is not None:  # the window a presentation state shows (see source.py)
        window, exact = display_window(rendered.modality_range, header.render)
        source = replace(
            metadata.source, window=window, window_exact=exact, invert=header.render.invert
        )
        metadata = replace(metadata, source=source)
    return canonical, metadata


def probe(uid: str) -> bool:
    """Whether this install decodes transfer syntax `uid` (:mod:`shared.dicom.probes`)."""
    return probes.probe(uid)
