"""Pixel Data (one frame, one sample) -> integer numpy array, per transfer syntax.

Native syntaxes are read with ``np.frombuffer`` (no copy, no pydicom pixel
handler). Compressed ones first have their codestream header checked against
Rows/Columns, so a codestream that claims a different (or gigantic) image is
refused before a decoder allocates anything; then:

* JPEG 2000 / HTJ2K: OpenJPEG through :mod:`shared.dicom.codecs.openjpeg` (threaded, and
  optionally at reduced resolution), else pydicom's plugins.
* JPEG Extended 12-bit: pydicom's pylibjpeg plugin when the opt-in GPL extra
  is installed, else GDCM called directly (pydicom refuses GDCM for 12-bit
  JPEG, but the python-gdcm wheel bundles IJG's 12-bit codec and decodes it
  bit-exactly like DCMTK's dcmdjpeg; checked by the test-suite).
* everything else (RLE, JPEG baseline/lossless, JPEG-LS): pydicom's decoders
  (pylibjpeg-rle, GDCM).

GDCM can abort the process on a corrupt codestream, so every GDCM (and
libjpeg) decode runs in a worker process (:mod:`shared.dicom.isolate`).

The arrays may hold raw bit patterns (unused high bits set, signed values not
sign-extended): :mod:`shared.dicom.render` masks and sign-extends them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cache

import numpy as np
from pydicom import uid as pduid
from pydicom.encaps import generate_frames
from pydicom.uid import UID

from shared.dicom.codecs import openjpeg as dicom_j2k
from shared.dicom.errors import DicomError, NotDicomError, UnsupportedDicomError
from shared.dicom.isolate import run_isolated

__all__ = [
    "COMPRESSED_SYNTAXES",
    "J2K_SYNTAXES",
    "NATIVE_SYNTAXES",
    "SUPPORTED_SYNTAXES",
    "DecodedFrame",
    "PixelGeometry",
    "decode_frame",
    "first_frame",
    "j2k_reduce_factor",
    "sniff_syntax",
]

NATIVE_SYNTAXES: tuple[UID, ...] = (
    pduid.ImplicitVRLittleEndian,
    pduid.ExplicitVRLittleEndian,
    pduid.ExplicitVRBigEndian,
    pduid.DeflatedExplicitVRLittleEndian,
)
J2K_SYNTAXES: tuple[UID, ...] = (
    pduid.JPEG2000Lossless,
    pduid.JPEG2000,
    pduid.HTJ2KLossless,
    pduid.HTJ2KLosslessRPCL,
    pduid.HTJ2K,
)
JPEG_SYNTAXES: tuple[UID, ...] = (
    pduid.JPEGBaseline8Bit,
    pduid.JPEGExtended12Bit,
    pduid.JPEGLossless,
    pduid.JPEGLosslessSV1,
)
JPEG_LS_SYNTAXES: tuple[UID, ...] = (pduid.JPEGLSLossless, pduid.JPEGLSNearLossless)
COMPRESSED_SYNTAXES: tuple[UID, ...] = (
    pduid.RLELossless,
    *JPEG_SYNTAXES,
    *JPEG_LS_SYNTAXES,
    *J2K_SYNTAXES,
)
SUPPORTED_SYNTAXES: tuple[UID, ...] = NATIVE_SYNTAXES + COMPRESSED_SYNTAXES

# JPEG start-of-frame markers: SOF0-3, 5-7, 9-11, 13-15 and JPEG-LS SOF55.
_SOF_MARKERS = frozenset(
    {*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC)}
    | {
        *range(0xCD, 0xD0),
        0xF7,
    }
)


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


def _gdcm_module():  # type: ignore[no-untyped-def]
    """Import python-gdcm with its console tracing off (it prints to stderr otherwise)."""
    import gdcm

    gdcm.Trace.WarningOff()
    gdcm.Trace.ErrorOff()
    gdcm.Trace.DebugOff()
    return gdcm


# --------------------------------------------------------------------- frames


def first_frame(pixel_data: bytes) -> bytes:
    """The first frame of encapsulated Pixel Data (its fragments joined)."""
    try:
        frame = next(generate_frames(pixel_data, number_of_frames=1), b"")
    except Exception as exc:  # malformed item tags / lengths
        raise NotDicomError(
            f"The encapsulated Pixel Data is malformed ({type(exc).__name__}); the file is damaged."
        ) from None
    if not frame:
        raise NotDicomError("The encapsulated Pixel Data holds no image fragment.")
    return frame


def sniff_syntax(frame: bytes) -> UID | None:
    """Guess the transfer syntax of an encapsulated frame from its codestream.

    Used for files without file meta: the dataset encoding can be inferred by
    pydicom, but the compression cannot, so we read it from the first bytes.
    """
    if frame.startswith(b"\xff\x4f\xff\x51") or frame[4:8] == b"jP  ":
        return pduid.HTJ2K if b"\xff\x50" in frame[:256] else pduid.JPEG2000
    if frame.startswith(b"\xff\xd8"):
        sof = _jpeg_sof(frame)
        if sof is None:
            return None
        marker = sof[0]
        if marker == 0xF7:
            return pduid.JPEGLSLossless
        if marker == 0xC0:
            return pduid.JPEGBaseline8Bit
        if marker in (0xC1, 0xC2):
            return pduid.JPEGExtended12Bit
        if marker == 0xC3:
            return pduid.JPEGLossless
        return None
    if len(frame) >= 64:
        segments, first = struct.unpack_from("<II", frame, 0)
        if 1 <= segments <= 15 and first == 64:
            return pduid.RLELossless
    return None


# ----------------------------------------------------------- header checks


def _jpeg_sof(frame: bytes) -> tuple[int, int, int, int, int] | None:
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


def _j2k_siz(frame: bytes) -> tuple[int, int, int, int, bool, int] | None:
    """(rows, columns, components, precision, signed, decomposition levels) from J2K SIZ/COD.

    Levels is 0 when the image has an offset (XOsiz/YOsiz): the reduced grid
    would then not start on a full-resolution pixel, so we never reduce it.
    """
    start = frame.find(b"\xff\x4f\xff\x51", 0, 4096)
    if start < 0 or start + 46 > len(frame):
        return None
    siz = start + 2
    xsiz, ysiz, xo, yo = struct.unpack_from(">IIII", frame, siz + 6)
    comps = struct.unpack_from(">H", frame, siz + 38)[0]
    ssiz = frame[siz + 40]
    levels = 0
    cod = frame.find(b"\xff\x52", siz, min(len(frame), siz + 4096))
    if cod >= 0 and cod + 10 <= len(frame):
        levels = frame[cod + 9]
    if xo or yo:
        levels = 0
    return ysiz - yo, xsiz - xo, comps, (ssiz & 0x7F) + 1, bool(ssiz & 0x80), levels


def _check_codestream(syntax: UID, frame: bytes, geom: PixelGeometry) -> None:
    """Refuse a codestream whose own header disagrees with Rows/Columns/samples."""
    if syntax in J2K_SYNTAXES:
        siz = _j2k_siz(frame)
        if siz is None:
            raise NotDicomError("The JPEG 2000 codestream header is missing or damaged.")
        rows, cols, comps, precision, _signed, _levels = siz
        if comps != 1:
            raise UnsupportedDicomError(
                "The JPEG 2000 image has several components (colour); only greyscale is analysed."
            )
    elif syntax in JPEG_SYNTAXES or syntax in JPEG_LS_SYNTAXES:
        sof = _jpeg_sof(frame)
        if sof is None:
            raise NotDicomError("The JPEG codestream header is missing or damaged.")
        _marker, precision, rows, cols, comps = sof
        if comps != 1:
            raise UnsupportedDicomError(
                "The JPEG image has several components (colour); only greyscale is analysed."
            )
        if precision < 2 or precision > 16:
            raise NotDicomError("The JPEG codestream declares an invalid sample precision.")
    elif syntax == pduid.RLELossless:
        if len(frame) < 64:
            raise NotDicomError("The RLE frame header is truncated.")
        segments = struct.unpack_from("<I", frame, 0)[0]
        if segments != geom.bits_allocated // 8:
            raise NotDicomError("The RLE frame does not have one segment per byte of a sample.")
        return
    else:
        return
    if (rows, cols) != (geom.rows, geom.columns):
        raise NotDicomError(
            f"The compressed image is {cols}x{rows} pixels but the header says "
            f"{geom.columns}x{geom.rows}; the file is inconsistent."
        )


# ------------------------------------------------------------------ native


def _decode_native(pixel_data: bytes, geom: PixelGeometry, big_endian: bool, vr: str) -> np.ndarray:
    """A zero-copy view of native Pixel Data (byte-swapped copy for big endian)."""
    count = geom.rows * geom.columns
    if geom.bits_allocated == 8:
        if big_endian and vr == "OW":
            # 8-bit samples in big-endian OW words are stored byte-swapped in pairs
            words = np.frombuffer(pixel_data, dtype=">u2", count=(count + 1) // 2)
            flat = words.astype("<u2").view(np.uint8)[:count]
        else:
            flat = np.frombuffer(pixel_data, dtype=np.uint8, count=count)
        arr = flat.view(np.int8) if geom.signed else flat
    else:
        kind = "i2" if geom.signed else "u2"
        arr = np.frombuffer(pixel_data, dtype=(">" if big_endian else "<") + kind, count=count)
        if big_endian:
            arr = arr.astype(kind)
    return arr.reshape(geom.rows, geom.columns)


# --------------------------------------------------------------- compressed


def _pydicom_decode(syntax: UID, pixel_data: bytes, geom: PixelGeometry) -> np.ndarray:
    """Decode frame 0 with pydicom's decoder for `syntax` (plugins as installed)."""
    from pydicom.pixels import get_decoder

    if syntax != pduid.RLELossless and gdcm_available():
        _gdcm_module()  # tracing off before pydicom's GDCM plugin runs

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


def _gdcm_decode(syntax: UID, frame: bytes, geom: PixelGeometry) -> np.ndarray:
    """Decode one JPEG-family frame with GDCM directly (used for 12-bit JPEG Extended)."""
    gdcm = _gdcm_module()
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


def _jpeg_decoder_geometry(syntax: UID, frame: bytes, geom: PixelGeometry) -> PixelGeometry:
    """Sample container sizes for the JPEG decoders, taken from the codestream's precision.

    GDCM aborts the whole process (a C++ assertion, not an exception) when an
    8-bit JPEG is described with Bits Stored below 8, which a damaged or
    hostile header can do. The codestream's own precision P is what the
    decoder produces, so we describe the frame with it: P <= 8 -> 8 allocated
    and 8 stored, else 16 allocated and P stored. Rendering masks to the
    header's Bits Stored afterwards, as for every other syntax.
    """
    sof = _jpeg_sof(frame)
    if sof is None:  # _check_codestream already refused this; keep the type checker honest
        raise NotDicomError("The JPEG codestream header is missing or damaged.")
    precision = sof[1]
    if precision <= 8:
        if syntax in JPEG_LS_SYNTAXES and precision < 8:
            raise UnsupportedDicomError(
                "JPEG-LS images with fewer than 8 bits per sample are not supported."
            )
        allocated, stored = 8, 8
    else:
        if geom.bits_allocated == 8:
            raise NotDicomError(
                "The JPEG codestream holds more than 8 bits per sample but Bits Allocated is 8; "
                "the file is inconsistent."
            )
        allocated, stored = 16, precision
    return PixelGeometry(
        rows=geom.rows,
        columns=geom.columns,
        bits_allocated=allocated,
        bits_stored=stored,
        signed=geom.signed,
        photometric=geom.photometric,
    )


def _has_plugin(syntax: UID, plugin: str) -> bool:
    from pydicom.pixels import get_decoder

    try:
        return plugin in get_decoder(syntax).available_plugins
    except Exception:
        return False


def j2k_reduce_factor(rows: int, columns: int, target: tuple[int, int], levels: int) -> int:
    """Largest number of J2K resolution levels we can skip and still cover `target` (w, h).

    Each skipped level halves the size (rounding up); the result must stay at
    least as large as the canonical image so the final resize only shrinks.
    """
    width, height = target
    reduce = 0
    while reduce < levels:
        nxt = reduce + 1
        if -(-columns // (1 << nxt)) < width or -(-rows // (1 << nxt)) < height:
            break
        reduce = nxt
    return reduce


def _decode_j2k(
    syntax: UID,
    pixel_data: bytes,
    frame: bytes,
    geom: PixelGeometry,
    target: tuple[int, int] | None,
) -> DecodedFrame:
    """JPEG 2000 through OpenJPEG (optionally reduced), falling back to pydicom's plugins."""
    siz = _j2k_siz(frame)
    reduce = 0
    if target is not None and siz is not None:
        _rows, _cols, _comps, precision, signed, levels = siz
        # A reduced image is a low-pass of the full one: values can overshoot
        # the stored range, so only do it when values are plain numbers.
        if signed == geom.signed and precision >= geom.bits_stored:
            reduce = j2k_reduce_factor(geom.rows, geom.columns, target, levels)
    if dicom_j2k.available():
        try:
            arr = dicom_j2k.decode(frame, reduce=reduce, expected_size=(geom.rows, geom.columns))
            return DecodedFrame(arr, reduce)
        except dicom_j2k.J2kError:
            if reduce == 0:
                raise
            arr = dicom_j2k.decode(frame, expected_size=(geom.rows, geom.columns))
            return DecodedFrame(arr, 0)
    return DecodedFrame(run_isolated(_pydicom_decode, syntax, pixel_data, geom), 0)


def decode_frame(
    syntax: UID,
    pixel_data: bytes,
    geom: PixelGeometry,
    *,
    big_endian: bool = False,
    vr: str = "OW",
    j2k_target: tuple[int, int] | None = None,
) -> DecodedFrame:
    """Decode frame 0 of `pixel_data` encoded with `syntax`.

    ``j2k_target`` (canonical width, height) allows a reduced-resolution JPEG
    2000 decode that still covers that size; None decodes at full resolution.
    Every decoder failure becomes a DicomError without the library's message.
    """
    if syntax in NATIVE_SYNTAXES:
        return DecodedFrame(_decode_native(pixel_data, geom, big_endian, vr))
    if syntax not in COMPRESSED_SYNTAXES:
        raise UnsupportedDicomError(f"The transfer syntax {syntax.name} is not supported.")
    frame = first_frame(pixel_data)
    _check_codestream(syntax, frame, geom)
    try:
        if syntax in J2K_SYNTAXES:
            return _decode_j2k(syntax, pixel_data, frame, geom, j2k_target)
        if syntax in JPEG_SYNTAXES or syntax in JPEG_LS_SYNTAXES:
            geom = _jpeg_decoder_geometry(syntax, frame, geom)
        if syntax == pduid.RLELossless:  # pure Rust/numpy decoders: they raise, never abort
            return DecodedFrame(_pydicom_decode(syntax, pixel_data, geom))
        if syntax == pduid.JPEGExtended12Bit and geom.bits_stored > 8:
            if _has_plugin(syntax, "pylibjpeg"):
                return DecodedFrame(run_isolated(_pydicom_decode, syntax, pixel_data, geom))
            return DecodedFrame(run_isolated(_gdcm_decode, syntax, frame, geom))
        return DecodedFrame(run_isolated(_pydicom_decode, syntax, pixel_data, geom))
    except DicomError:
        raise
    except MemoryError:
        raise UnsupportedDicomError("The image is too large to decode.") from None
    except (ImportError, NotImplementedError):
        raise UnsupportedDicomError(
            f"This installation has no decoder for {syntax.name}."
        ) from None
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - Rust decoders panic with pyo3's BaseException
        if type(exc).__name__ == "CancelledError":
            raise
        raise NotDicomError(
            f"The {syntax.name} pixel data could not be decoded ({type(exc).__name__}); "
            "it is corrupt or truncated."
        ) from None


@cache
def gdcm_available() -> bool:
    """Whether python-gdcm imports (it backs JPEG Lossless, JPEG-LS and 12-bit JPEG)."""
    try:
        _gdcm_module()
    except ImportError:
        return False
    return True
