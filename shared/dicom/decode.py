"""DICOM bytes -> the canonical image the models see. No torch, no web, no disk.

``decode_dicom`` parses once, reads the header once and renders once; the
bytes of one upload go through the modules in this order:

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
   syntax, after checking pixel data length / codestream header (GDCM, which
   can abort on a corrupt codestream, runs in worker processes:
   :mod:`shared.dicom.isolate`);
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

from dataclasses import dataclass, replace

import cv2
import numpy as np

from shared.dicom.codecs import decode_frame, native
from shared.dicom.header import DicomMetadata, ImageHeader, read_header
from shared.dicom.isolate import DecodeOptions, run_isolated
from shared.dicom.limits import check_pixels, decode_bytes
from shared.dicom.parse import parse_dicom
from shared.dicom.render import canonical_size, display_window, render, resize_to
from shared.dicom.selection import Selection, SelectionRules, require_selected
from shared.dicom.source import uid_value

__all__ = [
    "WARN_REDUCED_J2K",
    "CanonicalImage",
    "ImageFacts",
    "decode_dicom",
    "InstanceIds",
    "decode_local",
    "encode_png",
    "identify_dicom",
    "identify_local",
    "inspect_dicom",
    "inspect_local",
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


def _read(data: bytes, options: DecodeOptions) -> ImageHeader:
    """Parse (after the prescan) and read the header; refuse an image over MAX_PIXELS.

    Native Pixel Data shorter than the declared image is reported first as the
    damage it is (400), as the native decoder would (it costs nothing to check).
    """
    header = read_header(parse_dicom(data, options.limits))
    if header.transfer_syntax in native.SYNTAXES and not header.pixel_data.encapsulated:
        native.check_length(header.pixel_data.value, header.geometry)
    check_pixels(header.geometry.rows, header.geometry.columns, options.limits)
    return header


def inspect_dicom(
    data: bytes,
    *,
    options: DecodeOptions = DecodeOptions(),
    selection: SelectionRules | None = None,
) -> ImageFacts:
    """Every header check of :func:`decode_dicom`, no pixel decoded: refusals come from here.

    With ``options.isolate`` it runs in a worker process, like the decode.
    """
    if options.isolate:
        return run_isolated(inspect_local, data, options.in_worker(), selection, options=options)
    return inspect_local(data, options, selection)


def inspect_local(
    data: bytes, options: DecodeOptions, selection: SelectionRules | None = None
) -> ImageFacts:
    """:func:`inspect_dicom` in this process (what a worker runs)."""
    header = _read(data, options)
    if selection is not None:
        require_selected(header, selection)
    geometry = header.geometry
    return ImageFacts(
        geometry.rows, geometry.columns, geometry.bits_allocated, str(header.transfer_syntax)
    )


@dataclass(frozen=True)
class InstanceIds:
    """The UIDs of a file, valid ones only (None otherwise): what a failure report names."""

    sop_class_uid: str | None
    sop_instance_uid: str | None
    study_instance_uid: str | None


def identify_dicom(data: bytes, *, options: DecodeOptions = DecodeOptions()) -> InstanceIds:
    """The file's SOP Class, SOP Instance and Study Instance UIDs, after the same defensive
    parse (and in the same worker process) as a decode; for files a decode refused."""
    if options.isolate:
        return run_isolated(identify_local, data, options.in_worker(), options=options)
    return identify_local(data, options)


def identify_local(data: bytes, options: DecodeOptions) -> InstanceIds:
    """:func:`identify_dicom` in this process (what a worker runs)."""
    ds = parse_dicom(data, options.limits).dataset
    return InstanceIds(
        uid_value(ds, "SOPClassUID"), uid_value(ds, "SOPInstanceUID"),
        uid_value(ds, "StudyInstanceUID"),
    )


def decode_dicom(
    data: bytes,
    long_side: int = 1024,
    *,
    reduced_j2k: bool = False,
    options: DecodeOptions = DecodeOptions(),
    selection: SelectionRules | None = None,
) -> tuple[CanonicalImage, DicomMetadata]:
    """Parse once, render once. Raises DicomError subclasses for every bad input.

    Returns the canonical image (uint8 grey, long side <= ``long_side``, never
    upscaled) and the header metadata. Refuses with 400 (:class:`NotDicomError`)
    what is not DICOM or is damaged (truncated, inconsistent), and with 422
    (:class:`UnsupportedDicomError`) valid DICOM we cannot analyse: no Pixel
    Data, colour or palette colour, multi-frame (NumberOfFrames > 1; we do not
    pick a frame for the user), an unsupported transfer syntax or bit depth,
    or past a cap (:class:`~shared.dicom.limits.DecodeLimits`: more than
    ``MAX_PIXELS``, too many elements, items or fragments...).

    ``reduced_j2k`` lets JPEG 2000 decode at the lowest resolution level that
    still covers the canonical size (about 2-4x faster on a radiograph), at the
    price of grey levels that differ from the full-resolution rendering by
    ~0.5 on average and more at sharp edges (the wavelet low-pass is not an
    area average). Off by default: train/serve parity comes first.

    ``options`` says where the work runs and under which caps: the gateway
    passes ``isolate=True`` (everything in a memory-limited worker process
    with a deadline) and its limits; other callers keep the in-process
    default, where only crash-prone decoders run in workers. Past a cap of
    ``options.limits`` the refusal is a :class:`~shared.dicom.limits.DicomLimitError`
    (422) naming the setting.
    """
    if long_side < 1:
        raise ValueError("long_side must be at least 1")
    if options.isolate:
        return run_isolated(
            decode_local, data, long_side, reduced_j2k, options.in_worker(), selection,
            options=options,
        )
    return decode_local(data, long_side, reduced_j2k, options, selection)


def decode_local(
    data: bytes,
    long_side: int,
    reduced_j2k: bool,
    options: DecodeOptions,
    selection: SelectionRules | None = None,
) -> tuple[CanonicalImage, DicomMetadata]:
    """:func:`decode_dicom` in this process (what a worker runs)."""
    header = _read(data, options)
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
        options=options,
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
