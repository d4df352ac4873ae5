"""Pixel Data (one frame, one sample) -> integer numpy array: transfer syntax -> backend.

One backend module per family, pydicom-style (``pixels/decoders/*.py``):

* :mod:`.native`: the four uncompressed syntaxes, ``np.frombuffer`` (no copy);
* :mod:`.rle`: RLE Lossless (pydicom's pylibjpeg-rle / numpy decoders);
* :mod:`.jpeg`: JPEG Baseline, Extended (12-bit: pylibjpeg if the GPL extra
  is installed, else :mod:`.gdcm` directly), Lossless;
* :mod:`.jpegls`: JPEG-LS lossless and near-lossless;
* :mod:`.j2k`: JPEG 2000 and HTJ2K through OpenJPEG (:mod:`.openjpeg`,
  optionally at reduced resolution), else pydicom's plugins.

Compressed frames first have their codestream header checked against
Rows/Columns, so a codestream that claims a different (or gigantic) image is
refused before a decoder allocates anything. GDCM and libjpeg can abort the
process on a corrupt codestream; the codecs do not guard against that
themselves: the gateway runs the whole intake in a worker process
(:mod:`shared.dicom.pool`).

The arrays may hold raw bit patterns (unused high bits set, signed values not
sign-extended): :mod:`shared.dicom.render` masks and sign-extends them.
"""

from __future__ import annotations

from pydicom import uid as pduid
from pydicom.encaps import generate_frames
from pydicom.uid import UID

from shared.dicom.codecs import j2k, jpeg, jpegls, native, rle
from shared.dicom.codecs.base import CompressedBackend, DecodedFrame, FrameRequest, PixelGeometry
from shared.dicom.errors import DicomError, NotDicomError, UnsupportedDicomError

__all__ = [
    "COMPRESSED_SYNTAXES",
    "NATIVE_SYNTAXES",
    "SUPPORTED_SYNTAXES",
    "DecodedFrame",
    "PixelGeometry",
    "decode_frame",
    "first_frame",
    "sniff_syntax",
]

_COMPRESSED_BACKENDS: tuple[CompressedBackend, ...] = (rle, jpeg, jpegls, j2k)
_BACKEND: dict[UID, CompressedBackend] = {
    uid: backend for backend in _COMPRESSED_BACKENDS for uid in backend.SYNTAXES
}

NATIVE_SYNTAXES: tuple[UID, ...] = native.SYNTAXES
COMPRESSED_SYNTAXES: tuple[UID, ...] = tuple(_BACKEND)
SUPPORTED_SYNTAXES: tuple[UID, ...] = NATIVE_SYNTAXES + COMPRESSED_SYNTAXES


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
    j2k_syntax = j2k.sniff(frame)
    if j2k_syntax is not None:
        return j2k_syntax
    if frame.startswith(b"\xff\xd8"):
        sof = jpeg.read_sof(frame)
        if sof is None:
            return None
        return {
            0xF7: pduid.JPEGLSLossless,
            0xC0: pduid.JPEGBaseline8Bit,
            0xC1: pduid.JPEGExtended12Bit,
            0xC2: pduid.JPEGExtended12Bit,
            0xC3: pduid.JPEGLossless,
        }.get(sof[0])
    return pduid.RLELossless if rle.sniff(frame) else None


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
        return native.decode(pixel_data, geom, big_endian=big_endian, vr=vr)
    backend = _BACKEND.get(syntax)
    if backend is None:
        raise UnsupportedDicomError(f"The transfer syntax {syntax.name} is not supported.")
    frame = first_frame(pixel_data)
    backend.check(syntax, frame, geom)
    try:
        decoded = backend.decode(
            FrameRequest(syntax, pixel_data, frame, geom, target=j2k_target)
        )
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
    if decoded.pixels.shape != (geom.rows, geom.columns) and decoded.reduce == 0:
        raise NotDicomError("The decoded image does not have the size the header declares.")
    return decoded
