"""Builders for files the intake must refuse (or survive), shared by the hostile and PHI tests."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import JPEG2000Lossless

from shared.dicom import NotDicomError, UnsupportedDicomError
from tests.dicom.corpus import (
    base_dataset,
    plant_sentinels,
    pydicom_data_file,
    synthetic_dx,
    to_bytes,
)

SMALL = synthetic_dx(rows=64, columns=48)


def small_ds() -> Dataset:
    ds = base_dataset(SMALL, bits_stored=12)
    ds.WindowCenter, ds.WindowWidth = 1800, 1200
    return ds


def raw_file(
    ds: Dataset,
    transfer_syntax: str | None,
    *,
    implicit: bool = False,
    little: bool = True,
    with_meta: bool = True,
) -> bytes:
    """Write `ds` body in the given encoding under a file meta that says `transfer_syntax`.

    Lets a test declare any transfer syntax (unknown, unsupported, missing)
    regardless of how the body is really encoded.
    """
    out = DicomBytesIO()
    if with_meta:
        out.write(b"\x00" * 128 + b"DICM")
        meta = pydicom.dataset.FileMetaDataset(ds.file_meta)
        if transfer_syntax is None:
            del meta.TransferSyntaxUID
        else:
            meta.TransferSyntaxUID = transfer_syntax
        write_file_meta_info(out, meta, enforce_standard=False)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = little, implicit
    write_dataset(body, ds)
    return out.getvalue() + body.getvalue()


def j2k_small() -> bytes:
    ds = small_ds()
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    return to_bytes(ds)


def _patch_siz(data: bytes, rows: int, columns: int) -> bytes:
    at = data.index(b"\xff\x4f\xff\x51") + 2
    return data[: at + 6] + struct.pack(">II", columns, rows) + data[at + 14 :]


def huge_header(rows: int, columns: int) -> bytes:
    ds = small_ds()
    ds.Rows, ds.Columns = rows, columns
    return to_bytes(ds)


def huge_j2k_header(rows: int, columns: int) -> bytes:
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(j2k_small()))
    ds.Rows, ds.Columns = rows, columns
    return to_bytes(ds)


def j2k_codestream_claims(rows: int, columns: int) -> bytes:
    """Header says 64x48; the J2K SIZ marker claims another size."""
    return _patch_siz(j2k_small(), rows, columns)


def edit(**changes: object) -> Callable[[], bytes]:
    def make() -> bytes:
        ds = small_ds()
        for keyword, value in changes.items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        return to_bytes(ds)

    return make


def real(name: str) -> Callable[[], bytes]:
    def make() -> bytes:
        ds = pydicom.dcmread(pydicom_data_file(name))
        plant_sentinels(ds)
        return to_bytes(ds)

    return make


def truncated(fraction: float, maker: Callable[[], bytes]) -> Callable[[], bytes]:
    def make() -> bytes:
        data = maker()
        return data[: int(len(data) * fraction)]

    return make


def corrupt_j2k_header() -> bytes:
    """A JPEG 2000 file whose codestream main header (after SIZ) is zeroed."""
    data = bytearray(j2k_small())
    at = data.index(b"\xff\x4f\xff\x51") + 45
    data[at : at + 40] = b"\x00" * 40
    return bytes(data)


def big_endian_no_meta() -> bytes:
    """Explicit VR Big Endian without file meta (pixel words byte-swapped as the syntax says)."""
    ds = small_ds()
    ds.PixelData = SMALL.astype(">u2").tobytes()
    return raw_file(ds, None, little=False, with_meta=False)


def no_pixel_data() -> bytes:
    ds = small_ds()
    del ds.PixelData
    return to_bytes(ds)


def float_pixels() -> bytes:
    ds = small_ds()
    del ds.PixelData
    ds.FloatPixelData = np.zeros(16, dtype=np.float32).tobytes()
    return to_bytes(ds)


def compressed_syntax_native_pixels() -> bytes:
    return raw_file(small_ds(), "1.2.840.10008.1.2.4.90")


def deflated(body: bytes) -> bytes:
    """A Deflated file whose (raw-deflate) body is `body`."""
    out = DicomBytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    meta = pydicom.dataset.FileMetaDataset(small_ds().file_meta)
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    write_file_meta_info(out, meta, enforce_standard=False)
    return out.getvalue() + body


def deflate_raw(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def deflate_bomb(inflated_size: int) -> bytes:
    """A Deflated DICOM whose body inflates to `inflated_size` bytes of one long element."""
    header = struct.pack("<HH2sHI", 0x0009, 0x0010, b"UN", 0, inflated_size - 12)
    chunk = bytes(1 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [compressor.compress(header)]
    remaining = inflated_size - len(header)
    while remaining > 0:
        parts.append(compressor.compress(chunk[: min(remaining, len(chunk))]))
        remaining -= len(chunk)
    parts.append(compressor.flush())
    return deflated(b"".join(parts))


def png_bytes() -> bytes:
    return cv2.imencode(".png", (SMALL >> 4).astype(np.uint8))[1].tobytes()


def jpeg_bytes() -> bytes:
    return cv2.imencode(".jpg", (SMALL >> 4).astype(np.uint8))[1].tobytes()


# name -> (maker, expected exception class)
HOSTILE: dict[str, tuple[Callable[[], bytes], type[Exception]]] = {
    "empty": (lambda: b"", NotDicomError),
    "random_bytes": (lambda: np.random.default_rng(1).bytes(20_000), NotDicomError),
    "random_with_dicm": (
        lambda: b"\x00" * 128 + b"DICM" + np.random.default_rng(2).bytes(5000),
        NotDicomError,
    ),
    "png": (png_bytes, NotDicomError),
    "jpeg": (jpeg_bytes, NotDicomError),
    "html": (
        lambda: b"<!DOCTYPE html><html><body>Patient portal</body></html>" * 20,
        NotDicomError,
    ),
    "json": (lambda: b'{"status": "ok", "image": null}', NotDicomError),
    "pdf": (lambda: b"%PDF-1.7\n" + bytes(2000), NotDicomError),
    "zip": (lambda: b"PK\x03\x04" + bytes(2000), NotDicomError),
    "one_byte": (lambda: b"\x08", NotDicomError),
    "headerless_garbage": (
        lambda: b"\x08\x00\x05\x00" + np.random.default_rng(3).bytes(3000),
        NotDicomError,
    ),
    "truncated_native": (truncated(0.6, lambda: to_bytes(small_ds())), NotDicomError),
    "truncated_j2k": (truncated(0.7, j2k_small), NotDicomError),
    "corrupt_j2k_header": (corrupt_j2k_header, NotDicomError),
    "no_pixel_data": (no_pixel_data, UnsupportedDicomError),
    "structured_report": (real("test-SR.dcm"), UnsupportedDicomError),
    "float_pixel_data": (float_pixels, UnsupportedDicomError),
    "unknown_syntax": (lambda: raw_file(small_ds(), "1.2.3.4.5.6.7"), UnsupportedDicomError),
    "mpeg2_syntax": (
        lambda: raw_file(small_ds(), "1.2.840.10008.1.2.4.100"),
        UnsupportedDicomError,
    ),
    "jpip_syntax": (lambda: raw_file(small_ds(), "1.2.840.10008.1.2.4.94"), UnsupportedDicomError),
    "compressed_syntax_native_pixels": (compressed_syntax_native_pixels, NotDicomError),
    "rows_zero": (edit(Rows=0), UnsupportedDicomError),
    "columns_missing": (edit(Columns=None), UnsupportedDicomError),
    "absurd_60000x60000": (lambda: huge_header(60000, 60000), UnsupportedDicomError),
    "absurd_j2k_60000x60000": (lambda: huge_j2k_header(60000, 60000), UnsupportedDicomError),
    "9000x9000_tiny_pixels": (lambda: huge_header(9000, 9000), NotDicomError),
    "j2k_codestream_claims_60000": (lambda: j2k_codestream_claims(60000, 60000), NotDicomError),
    "j2k_codestream_other_size": (lambda: j2k_codestream_claims(48, 64), NotDicomError),
    "palette_colour": (real("OBXXXX1A.dcm"), UnsupportedDicomError),
    "palette_colour_16bit": (real("gdcm-US-ALOKA-16.dcm"), UnsupportedDicomError),
    "rgb": (real("SC_rgb.dcm"), UnsupportedDicomError),
    "ybr_jpeg": (real("SC_rgb_jpeg_gdcm.dcm"), UnsupportedDicomError),
    "rgb_j2k": (real("US1_J2KR.dcm"), UnsupportedDicomError),
    "colour_declared_grey_j2k": (
        lambda: _grey_label_on_colour_j2k(),
        UnsupportedDicomError,
    ),
    "multi_frame": (real("emri_small.dcm"), UnsupportedDicomError),
    "multi_frame_1bit": (real("liver.dcm"), UnsupportedDicomError),
    "multi_frame_j2k": (real("emri_small_jpeg_2k_lossless.dcm"), UnsupportedDicomError),
    "bits_allocated_32": (real("rtdose_1frame.dcm"), UnsupportedDicomError),
    "bits_stored_above_allocated": (edit(BitsStored=17), NotDicomError),
    "pixel_representation_2": (edit(PixelRepresentation=2), NotDicomError),
    "monochrome3": (edit(PhotometricInterpretation="MONOCHROME3"), UnsupportedDicomError),
    "deflate_corrupt": (lambda: deflated(b"\xff\xfe\xfd" + bytes(100)), NotDicomError),
    "j2k_embedded_delimiter": (real("JPEG2000-embedded-sequence-delimiter.dcm"), NotDicomError),
}


def _grey_label_on_colour_j2k() -> bytes:
    """A colour JPEG 2000 codestream in a file whose header claims one greyscale sample."""
    ds = pydicom.dcmread(pydicom_data_file("US1_J2KR.dcm"))
    plant_sentinels(ds)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsStored = 8
    return to_bytes(ds)


def encapsulated_no_meta() -> bytes:
    """A J2K image written as a bare dataset: no preamble, no file meta."""
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(j2k_small()))
    return raw_file(ds, None, with_meta=False)


# ------------------------------------------------------------------ resource bombs
# Small files that cost pydicom far more than their size (issue 12): each one must be
# refused by a cap of shared.dicom.limits in milliseconds, before pydicom builds anything.

_EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _explicit_body(ds: Dataset) -> bytes:
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    return body.getvalue()


def _with_meta(body: bytes, transfer_syntax: str = _EXPLICIT_LE) -> bytes:
    out = DicomBytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    meta = pydicom.dataset.FileMetaDataset(small_ds().file_meta)
    meta.TransferSyntaxUID = transfer_syntax
    write_file_meta_info(out, meta, enforce_standard=False)
    return out.getvalue() + body


def _split_at_pixel_data(body: bytes) -> tuple[bytes, bytes]:
    at = body.index(b"\xe0\x7f\x10\x00")
    return body[:at], body[at:]


def _item_bomb_body(items: int) -> bytes:
    """An explicit LE body whose VOI LUT Sequence (0028,3010) holds `items` empty items."""
    head, pixels = _split_at_pixel_data(_explicit_body(small_ds()))
    sequence = (
        struct.pack("<HH2sHI", 0x0028, 0x3010, b"SQ", 0, 0xFFFFFFFF)
        + struct.pack("<HHI", 0xFFFE, 0xE000, 0) * items
        + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    )
    return head + sequence + pixels


def sequence_item_bomb(items: int = 1_000_000) -> bytes:
    """Explicit VR LE, a VOI LUT Sequence of `items` empty items (8 bytes each)."""
    return _with_meta(_item_bomb_body(items))


def deflated_sequence_item_bomb(items: int = 1_000_000) -> bytes:
    """The same, Deflated: 1,000,000 items in about 12 KB."""
    return deflated(deflate_raw(_item_bomb_body(items)))


def flat_element_bomb(elements: int = 1_000_000) -> bytes:
    """`elements` empty private elements (0009,xxxx) LO before the pixels (8 bytes each)."""
    head, pixels = _split_at_pixel_data(_explicit_body(small_ds()))
    one = b"".join(struct.pack("<HH2sH", 0x0009, 0x1000 + i, b"LO", 0) for i in range(0x1000))
    flat = one * (elements // 0x1000)
    return _with_meta(head + flat + pixels)


def fragment_bomb(fragments: int = 1_000_000) -> bytes:
    """A JPEG 2000 file whose Pixel Data has `fragments` empty fragments after frame 0."""
    body = _explicit_body(pydicom.dcmread(DicomBytesIO(j2k_small())))
    head, pixels = _split_at_pixel_data(body)
    end = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    assert pixels.endswith(end)
    extra = struct.pack("<HHI", 0xFFFE, 0xE000, 0) * fragments
    return _with_meta(head + pixels[: -len(end)] + extra + end, str(JPEG2000Lossless))


def j2k_claiming(rows: int = 10_000, columns: int = 10_000) -> bytes:
    """A tiny JPEG 2000 file whose header and codestream both claim `columns` x `rows`."""
    ds = pydicom.dcmread(DicomBytesIO(j2k_codestream_claims(rows, columns)))
    ds.Rows, ds.Columns = rows, columns
    return to_bytes(ds)


# name -> maker; each is refused with 422 naming its cap (tests/dicom, tests/ops).
BOMBS: dict[str, tuple[Callable[[], bytes], str]] = {
    "sequence_items": (sequence_item_bomb, "MAX_DICOM_SEQUENCE_ITEMS"),
    "sequence_items_deflated": (deflated_sequence_item_bomb, "MAX_DICOM_SEQUENCE_ITEMS"),
    "flat_elements": (flat_element_bomb, "MAX_DICOM_ELEMENTS"),
    "fragments": (fragment_bomb, "MAX_DICOM_FRAGMENTS"),
    "j2k_claims_10000x10000": (j2k_claiming, "MAX_PIXELS"),
}
