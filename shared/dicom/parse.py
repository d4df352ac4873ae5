"""Bytes -> pydicom Dataset, defensively.

pydicom with ``force=True`` accepts almost anything (random bytes parse as one
bogus element), inflates a Deflated body without a size limit, and may warn
with element values in the message. This module puts guards around it:
recognise common non-DICOM uploads, bound the inflated size, infer the
transfer syntax when the file meta is missing, and tell "truncated" apart
from "not DICOM". Everything here is pure: bytes in, dataset out, no disk.
"""

from __future__ import annotations

import io
import logging
import struct
import warnings
import zlib
from dataclasses import dataclass

import pydicom
import pydicom.config
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from shared.dicom.errors import NotDicomError, UnsupportedDicomError
from shared.dicom.limits import DecodeLimits, DicomLimitError, prescan

__all__ = ["ParsedDicom", "parse_dicom"]

_PIXEL_DATA_LE = b"\xe0\x7f\x10\x00"
_PIXEL_DATA_BE = b"\x7f\xe0\x00\x10"

# Signatures of files people upload by mistake, for an actionable message.
_FOREIGN_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"BM", "a BMP image"),
)
_TEXT_STARTS = (b"<!doctype", b"<html", b"<?xml", b"{", b"[")


def _quiet_pydicom() -> None:
    """Stop pydicom from warning or logging about bad values.

    Its messages may quote element values (patient name, IDs...), and PHI must
    never reach the logs; we report problems through DicomError messages of
    our own instead.
    """
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
    warnings.filterwarnings("ignore", module=r"openjpeg(\.|$)")
    warnings.filterwarnings("ignore", module=r"rle(\.|$)")
    logging.getLogger("pydicom").setLevel(logging.CRITICAL + 1)


_quiet_pydicom()


@dataclass(frozen=True)
class ParsedDicom:
    """A parsed dataset and how its bytes were encoded."""

    dataset: Dataset
    transfer_syntax: UID | None  # from the file meta; None when absent
    deflated: bool
    has_file_meta: bool


def _foreign_kind(data: bytes) -> str | None:
    """Name the file type of an obviously non-DICOM upload, if we recognise it."""
    for signature, kind in _FOREIGN_SIGNATURES:
        if data.startswith(signature):
            return kind
    head = data[:64].lstrip().lower()
    if head.startswith(_TEXT_STARTS):
        return "a text (HTML, XML or JSON) document"
    return None


def _scan_file_meta(data: bytes, max_elements: int) -> tuple[int, str | None]:
    """Walk the group 0002 elements after 'DICM'; return (end offset, transfer syntax).

    File meta is always Explicit VR Little Endian. We need the transfer syntax
    before pydicom reads the body (to bound a Deflated body ourselves) and the
    offset where the body starts. Malformed meta returns what was found so far;
    more than ``max_elements`` elements stop the walk (the prescan refuses the file).
    """
    pos, end, count = 132, len(data), 0
    ts: str | None = None
    long_vrs = {
        b"OB",
        b"OD",
        b"OF",
        b"OL",
        b"OV",
        b"OW",
        b"SQ",
        b"SV",
        b"UC",
        b"UN",
        b"UR",
        b"UT",
        b"UV",
    }
    while pos + 8 <= end:
        group, elem = struct.unpack_from("<HH", data, pos)
        count += 1
        if group != 0x0002 or count > max_elements:
            break
        vr = data[pos + 4 : pos + 6]
        if vr in long_vrs:
            if pos + 12 > end:
                break
            length = struct.unpack_from("<I", data, pos + 8)[0]
            value_at = pos + 12
        else:
            length = struct.unpack_from("<H", data, pos + 6)[0]
            value_at = pos + 8
        if length == 0xFFFFFFFF or value_at + length > end:
            break
        if elem == 0x0010:
            ts = data[value_at : value_at + length].rstrip(b"\x00 ").decode("ascii", "replace")
        pos = value_at + length
    return pos, ts


def _inflate(body: bytes, limit: int) -> bytes:
    """Inflate a Deflated dataset body, refusing one that inflates past `limit` (zip bomb)."""
    for wbits in (
        -zlib.MAX_WBITS,
        zlib.MAX_WBITS,
    ):  # raw deflate per PS3.5; some writers add a zlib header
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(body, limit)
        except zlib.error:
            continue
        if inflater.unconsumed_tail:
            raise DicomLimitError(
                "The deflated DICOM dataset inflates to more than "
                f"{limit // (1024 * 1024)} MiB; this service does not accept it "
                "(limit MAX_DICOM_INFLATED_BYTES).",
                "MAX_DICOM_INFLATED_BYTES",
            )
        return out
    raise NotDicomError("The deflated DICOM dataset is corrupt and could not be inflated.")


def _plausible_headerless(data: bytes) -> bool:
    """Whether bytes without a preamble look like a raw DICOM dataset.

    A dataset without file meta starts with a low-numbered group (0008 usually,
    0002 when the preamble alone is missing), in either byte order. Random
    bytes or text almost never do, so this keeps ``force=True`` from turning
    garbage into a one-element "dataset".
    """
    if len(data) < 8:
        return False
    group_le, elem_le = struct.unpack_from("<HH", data, 0)
    group_be = struct.unpack_from(">H", data, 0)[0]
    low_groups = {0x0000, 0x0002, 0x0004, 0x0008}
    return (group_le in low_groups and elem_le < 0x1000) or group_be in {0x0002, 0x0008}


def _dcmread(buffer: bytes, stop_before_pixels: bool = False) -> Dataset:
    """pydicom read with every library exception turned into a PHI-free NotDicomError."""
    try:
        return pydicom.dcmread(
            io.BytesIO(buffer), force=True, stop_before_pixels=stop_before_pixels
        )
    except MemoryError:
        raise UnsupportedDicomError("The DICOM file is too large to read.") from None
    except Exception as exc:  # pydicom raises many types on hostile input
        raise NotDicomError(
            f"The file could not be parsed as DICOM ({type(exc).__name__}); it may be damaged."
        ) from None


def _looks_truncated(data: bytes, ds: Dataset) -> bool:
    """A header that parsed, a Pixel Data tag in the bytes, but no Pixel Data element."""
    if "PixelData" in ds:
        return False
    return _PIXEL_DATA_LE in data or _PIXEL_DATA_BE in data


def _body_encoding(data: bytes, start: int, ts: str | None) -> tuple[bool, bool]:
    """(implicit, little) as pydicom will first assume them for the body at ``start``.

    pydicom then peeks at the first element and may switch to explicit/implicit;
    the prescan peeks the same way. Without a transfer syntax the byte order is
    sniffed from the first group number, as pydicom does.
    """
    if ts is not None:
        ts = ts.strip("\x00 ")
        if ts == ImplicitVRLittleEndian:
            return True, True
        if ts == ExplicitVRBigEndian:
            return False, False
        return False, True
    group_le = struct.unpack_from("<H", data, start)[0] if start + 2 <= len(data) else 0
    big = group_le in (0x0200, 0x0800)
    return not big, not big


def parse_dicom(data: bytes, limits: DecodeLimits = DecodeLimits()) -> ParsedDicom:
    """Parse an upload into a dataset, or raise NotDicomError / UnsupportedDicomError.

    Before pydicom sees the bytes, :func:`shared.dicom.limits.prescan` refuses
    a file past any of `limits` (element, item, fragment counts, nesting depth,
    element length) and a Deflated body past ``limits.max_inflated_bytes``.
    """
    if not data:
        raise NotDicomError("The upload is empty; send a DICOM file.")
    has_preamble = len(data) >= 132 and data[128:132] == b"DICM"
    if not has_preamble:
        kind = _foreign_kind(data)
        if kind is not None:
            raise NotDicomError(f"The upload is {kind}, not a DICOM file.")
        if not _plausible_headerless(data):
            raise NotDicomError(
                "The upload is not a DICOM file (no 'DICM' marker and no recognisable dataset)."
            )

    ts: str | None = None
    meta_end = 0
    deflated = False
    if has_preamble:
        meta_end, ts = _scan_file_meta(data, limits.max_elements)
        if meta_end == 132 and not _plausible_headerless(data[132:]):
            raise NotDicomError(
                "The upload has a 'DICM' marker but no readable DICOM header after it; "
                "the file is damaged."
            )
        if ts is not None and ts.strip() == DeflatedExplicitVRLittleEndian:
            deflated = True
            prescan(data[:meta_end], 132, implicit=False, little=True, limits=limits)
            body = _inflate(data[meta_end:], limits.max_inflated_bytes)
            prescan(body, 0, implicit=False, little=True, limits=limits, file_meta=False)
            ds = _dcmread(body)
            if len(ds) == 0 and body:
                raise NotDicomError("The inflated DICOM dataset could not be parsed.")
            return ParsedDicom(ds, DeflatedExplicitVRLittleEndian, True, True)

    start = 132 if has_preamble else 0
    implicit, little = _body_encoding(data, meta_end, ts)
    prescan(data, start, implicit=implicit, little=little, limits=limits)
    ds = _dcmread(data)
    if _looks_truncated(data, ds):
        header = _dcmread(data, stop_before_pixels=True)
        if "Rows" in header or "Columns" in header:
            raise NotDicomError(
                "The DICOM file is truncated: its Pixel Data ends before the image does."
            )
    if len(ds) == 0 or not _has_dataset_elements(ds):
        raise NotDicomError("The upload is not a DICOM file (no data elements could be read).")

    meta_ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    uid = UID(str(meta_ts).strip("\x00 ")) if meta_ts else None
    return ParsedDicom(ds, uid, deflated, has_preamble)


def _has_dataset_elements(ds: Dataset) -> bool:
    """Whether anything beyond group 0000/0002 was read: zero bytes parse as (0000,0000)."""
    try:
        return any(tag.group >= 0x0008 for tag in ds.keys())  # noqa: SIM118 (tags, not elements)
    except Exception:  # noqa: BLE001 - a dataset too broken to list is not DICOM either
        return False


def encoding_syntax(ds: Dataset) -> UID | None:
    """The native transfer syntax matching how pydicom actually read the body."""
    implicit, little = ds.original_encoding
    if implicit is None or little is None:
        return None
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian
