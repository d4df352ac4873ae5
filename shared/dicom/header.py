"""Read and validate the header once, without trusting it, into one typed value.

:func:`read_header` is the one pass over the dataset: the Image Pixel module
(refusing what we cannot analyse before any pixel is decoded), the Pixel Data
element, the transfer syntax, the rendering elements of PS3.14 and the
metadata for the response, all in one frozen :class:`ImageHeader` that
decoding and rendering take. Two parts have modules of their own: the rendering
elements (:mod:`shared.dicom.renderspec`) and what the image shows, for input
selection (:mod:`shared.dicom.examination`).

Every value is read through :mod:`shared.dicom.elements`, which turns pydicom
conversion errors (a mutated VR, a garbage length) into "absent", and every
number is range-checked before it sizes anything. Problems that we can work
around (an invalid window, a broken LUT) become notes that end up in the
CanonicalImage warnings; problems we cannot become DicomErrors. No message
quotes an element value.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from pydicom.dataset import Dataset
from pydicom.uid import UID

from shared.dicom.codecs import PixelGeometry
from shared.dicom.elements import element_value, int_value, text_value
from shared.dicom.errors import NotDicomError, UnsupportedDicomError
from shared.dicom.examination import Examination, read_examination
from shared.dicom.limits import PIXEL_CEILING
from shared.dicom.parse import ParsedDicom
from shared.dicom.render import RenderSpec
from shared.dicom.renderspec import read_render_spec
from shared.dicom.source import SourceImage, read_source
from shared.dicom.syntax import resolve_syntax, syntax_name

__all__ = ["DicomMetadata", "ImageHeader", "PixelData", "read_header"]

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = (
    "RGB",
    "YBR_FULL",
    "YBR_FULL_422",
    "YBR_PARTIAL_422",
    "YBR_PARTIAL_420",
    "YBR_ICT",
    "YBR_RCT",
)


@dataclass(frozen=True)
class DicomMetadata:
    """Header facts for the response and logs.

    ``patient_id`` is the RAW value: pseudonymise it with gateway.pipeline.phi before it leaves.
    """

    patient_id: str | None
    study_date: str | None
    modality: str | None
    rows: int
    columns: int
    photometric_interpretation: str
    transfer_syntax_uid: str
    transfer_syntax_name: str
    bits_stored: int
    study_instance_uid: str | None
    sop_instance_uid: str | None
    # What a DICOM result (SR, presentation state) needs from the image (holds PHI).
    source: SourceImage | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class PixelData:
    """The Pixel Data element as stored: its bytes and how they are encoded."""

    value: bytes = field(repr=False)  # b"" while detached (:meth:`detached`)
    encapsulated: bool
    vr: str
    big_endian: bool
    # (offset, length) of `value` in the upload's bytes; None where it is not a slice of
    # them (the body of a Deflated file is inflated first).
    span: tuple[int, int] | None = None

    def detached(self, data: bytes) -> PixelData:
        """Without its bytes where `data`, the upload, holds them at :attr:`span`: small
        enough to cross a worker pipe; :meth:`attached` takes them from the upload again."""
        if self.span is None or not self.value:
            return self
        offset, _length = self.span
        if not data.startswith(self.value, offset):  # (a memcmp: no copy)
            return self  # not where pydicom said: keep the bytes
        return replace(self, value=b"")

    def attached(self, data: bytes) -> PixelData:
        """With its bytes again, taken from `data`: the same upload it was detached from."""
        if self.value or self.span is None:
            return self
        offset, length = self.span
        return replace(self, value=data[offset : offset + length])


@dataclass(frozen=True)
class ImageHeader:
    """Everything decoding and rendering need from the header, read and validated once."""

    geometry: PixelGeometry
    transfer_syntax: UID
    pixel_data: PixelData
    render: RenderSpec  # PS3.14 modality LUT, VOI, inversion, padding (+ its own notes)
    metadata: DicomMetadata
    notes: tuple[str, ...]  # header problems worked around (image module, transfer syntax)
    examination: Examination  # what the image says it shows (input selection)


def read_header(parsed: ParsedDicom) -> ImageHeader:
    """The one pass over the header; raises DicomError subclasses for what we refuse."""
    ds = parsed.dataset
    geometry, notes = _read_geometry(ds)
    little_endian = parsed.deflated or ds.original_encoding[1] is not False
    pixel_data = _read_pixel_data(
        ds, big_endian=not little_endian, from_upload=not parsed.deflated
    )
    syntax, syntax_notes = resolve_syntax(
        ds, parsed.transfer_syntax, pixel_data.encapsulated, pixel_data.value
    )
    render = read_render_spec(ds, geometry, little_endian)
    return ImageHeader(
        geometry=geometry,
        transfer_syntax=syntax,
        pixel_data=pixel_data,
        render=render,
        metadata=_read_metadata(ds, geometry, syntax, render),
        notes=(*notes, *syntax_notes),
        examination=read_examination(ds),
    )


# ------------------------------------------------------------- image pixel


def _read_geometry(ds: Dataset) -> tuple[PixelGeometry, list[str]]:
    """Image Pixel module -> PixelGeometry, refusing what we cannot analyse (before decoding).

    The checks run in a fixed order (pixels, colour, frames, size, bits), so a
    file with several problems always gets the same refusal.
    """
    notes: list[str] = []
    _require_pixel_data(ds)
    photometric = _greyscale_photometric(ds, notes)
    rows, columns = _single_frame_size(ds)
    bits_allocated, bits_stored, signed = _sample_format(ds, notes)
    geometry = PixelGeometry(rows, columns, bits_allocated, bits_stored, signed, photometric)
    return geometry, notes


def _require_pixel_data(ds: Dataset) -> None:
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise UnsupportedDicomError(
                "The DICOM file has floating-point pixel data, which is not supported."
            )
        raise UnsupportedDicomError(
            "The DICOM file has no Pixel Data: it is not an image (a report, a structured "
            "document or a presentation state?). Send the radiograph itself."
        )


def _greyscale_photometric(ds: Dataset, notes: list[str]) -> str:
    """MONOCHROME1 or MONOCHROME2 (assumed when missing); colour and palette are refused."""
    samples = int_value(element_value(ds, "SamplesPerPixel"))
    samples = 1 if samples is None else samples
    photometric = text_value(ds, "PhotometricInterpretation")
    photometric = photometric.upper() if photometric else None
    if photometric == "PALETTE COLOR":
        raise UnsupportedDicomError(
            "The image is PALETTE COLOR; only greyscale (MONOCHROME1/2) radiographs are analysed."
        )
    if samples != 1 or photometric in _COLOUR:
        raise UnsupportedDicomError(
            "The image is in colour; only greyscale (MONOCHROME1/2) radiographs are analysed."
        )
    if photometric is None:
        photometric = "MONOCHROME2"
        notes.append("Photometric Interpretation is missing; MONOCHROME2 was assumed.")
    elif photometric not in _MONOCHROME:
        raise UnsupportedDicomError(
            "The image's Photometric Interpretation is not MONOCHROME1 or MONOCHROME2; "
            "only greyscale radiographs are analysed."
        )
    return photometric


def _single_frame_size(ds: Dataset) -> tuple[int, int]:
    """(Rows, Columns) of a single-frame image of at most :data:`PIXEL_CEILING` (MAX_PIXELS,
    the setting, is checked once the header is read: :func:`~shared.dicom.limits.check_pixels`)."""
    frames = int_value(element_value(ds, "NumberOfFrames"))
    frames = 1 if frames is None or frames < 1 else frames
    if frames > 1:
        # (the count is not quoted: Number of Frames is free text (IS) and could hold anything)
        raise UnsupportedDicomError(
            "The file holds several frames; send a single-frame radiograph "
            "(multi-frame images are not analysed)."
        )

    rows, columns = int_value(element_value(ds, "Rows")), int_value(element_value(ds, "Columns"))
    if not rows or not columns or rows < 0 or columns < 0:
        raise UnsupportedDicomError("The image has no size: Rows or Columns is missing or zero.")
    if rows * columns > PIXEL_CEILING:
        raise UnsupportedDicomError(
            f"The image is {columns}x{rows} pixels, more than the "
            f"{PIXEL_CEILING // 1_000_000} megapixels this service accepts."
        )
    return rows, columns


def _sample_format(ds: Dataset, notes: list[str]) -> tuple[int, int, bool]:
    """(Bits Allocated, Bits Stored, signed) of a sample, refusing depths we cannot read."""
    bits_allocated = int_value(element_value(ds, "BitsAllocated"))
    if bits_allocated is None:
        raise UnsupportedDicomError("Bits Allocated is missing, so the pixels cannot be read.")
    if bits_allocated not in (8, 16):
        raise UnsupportedDicomError(
            f"Images with {bits_allocated} bits allocated per pixel are not supported "
            "(8 or 16 are)."
        )
    bits_stored = int_value(element_value(ds, "BitsStored"))
    if bits_stored is None:
        bits_stored = bits_allocated
        notes.append("Bits Stored is missing; Bits Allocated was used.")
    if not 1 <= bits_stored <= bits_allocated:
        raise NotDicomError(
            "Bits Stored is not between 1 and Bits Allocated; the header is damaged."
        )
    representation = int_value(element_value(ds, "PixelRepresentation"))
    representation = 0 if representation is None else representation
    if representation not in (0, 1):
        raise NotDicomError("Pixel Representation is neither 0 nor 1; the header is damaged.")
    return bits_allocated, bits_stored, representation == 1


def _read_pixel_data(ds: Dataset, *, big_endian: bool, from_upload: bool) -> PixelData:
    """The Pixel Data element, refusing an unreadable or empty one.

    ``from_upload``: pydicom read `ds` from the upload's own bytes, so the
    element's value position there (``value_tell``) is its span in the upload.
    """
    try:
        offset = getattr(ds.get_item("PixelData"), "value_tell", None) if from_upload else None
        element = ds["PixelData"]
        data = element.value
    except Exception:
        raise NotDicomError(
            "The Pixel Data element could not be read; the file is damaged."
        ) from None
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise NotDicomError("The Pixel Data element is empty or malformed.")
    return PixelData(
        value=bytes(data),
        encapsulated=bool(element.is_undefined_length),
        vr=str(element.VR),
        big_endian=big_endian,
        span=None if offset is None else (int(offset), len(data)),
    )


# ---------------------------------------------------------------- metadata


def _read_metadata(
    ds: Dataset, geometry: PixelGeometry, syntax: UID, render: RenderSpec
) -> DicomMetadata:
    return DicomMetadata(
        patient_id=text_value(ds, "PatientID"),
        study_date=text_value(ds, "StudyDate"),
        modality=text_value(ds, "Modality"),
        rows=geometry.rows,
        columns=geometry.columns,
        photometric_interpretation=geometry.photometric,
        transfer_syntax_uid=str(syntax),
        transfer_syntax_name=syntax_name(syntax),
        bits_stored=geometry.bits_stored,
        study_instance_uid=text_value(ds, "StudyInstanceUID"),
        sop_instance_uid=text_value(ds, "SOPInstanceUID"),
        source=read_source(
            ds, geometry.rows, geometry.columns, geometry.photometric,
            render.slope, render.intercept,
        ),
    )
