"""Caps on what one upload may cost, checked before pydicom builds anything.

pydicom turns every element into a Python object (about 39x its size for
small flat elements), every sequence item into a Dataset, and keeps a list of
every fragment; a 12 KB Deflated file with a million empty items took 34 s
and half a gigabyte. :func:`prescan` walks the (inflated) byte stream the way
pydicom's reader does (tags and lengths only, no objects) and refuses a file
past any cap in :class:`DecodeLimits` within milliseconds: the walk stops at
the first cap crossed, so its own cost is bounded by the caps.

The walk mirrors pydicom's rules where they decide what gets parsed: the VR
peek at the start of each dataset (an item of an explicit-VR sequence may be
implicit), per-element fallback to implicit VR on an invalid VR, any 8-byte
header in a sequence counting as an item, undefined lengths (sequence, or
fragments in encapsulated Pixel Data), defined-length sequences (parsed by
pydicom when the element is first read, e.g. the VOI LUT Sequence), and UN
elements whose dictionary VR is SQ. Where the bytes stop making sense the
walk stops quietly: pydicom refuses such a file anyway, and whatever the
walk misses is still bounded by the worker's memory limit and deadline
(:mod:`shared.dicom.pool`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache

from shared.dicom.errors import UnsupportedDicomError

__all__ = [
    "DECODE_BYTES_PER_PIXEL",
    "PIXEL_CEILING",
    "DecodeLimits",
    "DicomLimitError",
    "check_pixels",
    "decode_bytes",
    "prepare_prescan",
    "prescan",
]

# Peak decode memory per pixel (stored samples, the decoder's int32 output, the
# rendering's intermediates): what the gateway's decode-memory budget counts.
DECODE_BYTES_PER_PIXEL = 8

# The hard ceiling on image size, whatever MAX_PIXELS says (100 megapixels, 800 MB of
# decode memory): a header that claims more is refused at once, with the other Image
# Pixel checks, before its Pixel Data is looked at (:mod:`shared.dicom.header`). Under
# it, MAX_PIXELS (``DecodeLimits.max_pixels``) is checked after the header is read, so
# that native Pixel Data too short for the image is reported first as the damage it is.
PIXEL_CEILING = 100_000_000

_U16_LE = struct.Struct("<H")
_U32_LE = struct.Struct("<I")
_UNDEFINED = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_LONG_VR_NAMES = (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                  b"UR", b"UT", b"UV")  # fmt: skip


def _code(vr: bytes) -> int:
    return vr[0] << 8 | vr[1]


# VRs as 16-bit integers (first letter high): the walk compares ints, allocating nothing.
_LONG = frozenset(_code(vr) for vr in _LONG_VR_NAMES)
_SQ, _UN, _OB, _OW = _code(b"SQ"), _code(b"UN"), _code(b"OB"), _code(b"OW")


class DicomLimitError(UnsupportedDicomError):
    """An upload past one of the configured caps (422); ``limit`` names its setting."""

    def __init__(self, message: str, limit: str) -> None:
        super().__init__(message)
        self.limit = limit

    def __reduce__(self) -> tuple[object, ...]:  # picklable across the worker pipe
        return (type(self), (self.message, self.limit))


@dataclass(frozen=True)
class DecodeLimits:
    """The caps one upload must stay under; the gateway fills them from its Settings.

    The defaults fit every radiograph we know of by a wide margin (a DX header
    has a few hundred elements, a handful of sequences, one to a few hundred
    fragments) and refuse the bombs in milliseconds.

    ``max_pixels`` is the image-size cap (``MAX_PIXELS``), checked once the
    header is read (:func:`check_pixels`); no setting lets an image past
    :data:`PIXEL_CEILING`.
    """

    max_elements: int = 50_000  # MAX_DICOM_ELEMENTS (nested ones included)
    max_sequence_items: int = 10_000  # MAX_DICOM_SEQUENCE_ITEMS (all sequences together)
    max_sequence_depth: int = 16  # MAX_DICOM_SEQUENCE_DEPTH
    max_fragments: int = 10_000  # MAX_DICOM_FRAGMENTS (encapsulated Pixel Data)
    max_element_bytes: int = 128 * 1024 * 1024  # MAX_DICOM_ELEMENT_BYTES
    max_inflated_bytes: int = 128 * 1024 * 1024  # MAX_DICOM_INFLATED_BYTES (Deflated bodies)
    max_pixels: int = 40_000_000  # MAX_PIXELS (Rows x Columns)


def check_pixels(rows: int, columns: int, limits: DecodeLimits) -> None:
    """Refuse an image larger than ``limits.max_pixels`` before any pixel is decoded."""
    if rows * columns > limits.max_pixels:
        raise DicomLimitError(
            f"The image is {columns}x{rows} pixels, more than the "
            f"{limits.max_pixels / 1_000_000:g} megapixels this service accepts "
            "(limit MAX_PIXELS).",
            "MAX_PIXELS",
        )


def decode_bytes(rows: int, columns: int) -> int:
    """What decoding and rendering one frame of this size costs, for the memory budget."""
    return rows * columns * DECODE_BYTES_PER_PIXEL


def prepare_prescan() -> None:
    """Build the prescan's lookup table now (worker start-up), not during the first upload."""
    _sequence_tags()


@lru_cache(maxsize=1)
def _sequence_tags() -> frozenset[int]:
    """Tags whose dictionary VR is SQ: pydicom parses them as sequences even when UN/implicit."""
    from pydicom.datadict import DicomDictionary

    return frozenset(tag for tag, entry in DicomDictionary.items() if entry[0] == "SQ")


def _refuse_over(value: int, limit: int, what: str, setting: str) -> None:
    """Past ``limit``: a 422 whose message says what was too much and which setting caps it."""
    if value > limit:
        raise DicomLimitError(f"{what} (limit {setting}).", setting)


_NOUNS = {
    "MAX_DICOM_ELEMENTS": "data elements",
    "MAX_DICOM_SEQUENCE_ITEMS": "sequence items",
    "MAX_DICOM_FRAGMENTS": "fragments",
}


class _Walk:
    """One pass over a byte stream; raises DicomLimitError at the first cap crossed."""

    def __init__(self, data: bytes, little: bool, limits: DecodeLimits) -> None:
        self.data = data
        self.end = len(data)
        self.limits = limits
        prefix = "<" if little else ">"
        self.tag_len = struct.Struct(prefix + "HHI")
        self.short_len = struct.Struct(prefix + "H")
        self.long_len = struct.Struct(prefix + "I")
        self.item_tag = b"\xfe\xff\x00\xe0" if little else b"\xff\xfe\xe0\x00"
        self.elements = self.items = self.fragments = 0
        self.sequence_tags = _sequence_tags()

    # -- counters -------------------------------------------------------------

    def _count(self, counter: str, limit: int, what: str, setting: str) -> None:
        """Add one to ``counter``; past ``limit`` the file is refused, naming the setting."""
        value = getattr(self, counter) + 1
        setattr(self, counter, value)
        _refuse_over(
            value, limit, f"The DICOM {what} more than {limit} {_NOUNS[setting]}", setting
        )

    def _element(self) -> None:
        self._count("elements", self.limits.max_elements, "file has", "MAX_DICOM_ELEMENTS")

    def _item(self) -> None:
        self._count(
            "items", self.limits.max_sequence_items, "file has", "MAX_DICOM_SEQUENCE_ITEMS"
        )

    def _fragment(self) -> None:
        self._count(
            "fragments", self.limits.max_fragments, "Pixel Data has", "MAX_DICOM_FRAGMENTS"
        )

    def _depth(self, depth: int) -> None:
        limit = self.limits.max_sequence_depth
        what = f"The DICOM file nests sequences more than {limit} deep"
        _refuse_over(depth, limit, what, "MAX_DICOM_SEQUENCE_DEPTH")

    def _length(self, length: int) -> None:
        limit = self.limits.max_element_bytes
        what = f"A DICOM element is longer than {limit // 2**20} MiB"
        _refuse_over(length, limit, what, "MAX_DICOM_ELEMENT_BYTES")

    # -- structure ------------------------------------------------------------

    def file_meta(self, pos: int) -> int:
        """Count the group 0002 elements at ``pos``; returns where they end."""
        data, end = self.data, self.end
        while pos + 8 <= end and data[pos] == 0x02 and data[pos + 1] == 0x00:
            self._element()
            if (data[pos + 4] << 8 | data[pos + 5]) in _LONG:
                if pos + 12 > end:
                    return end
                pos += 12 + _U32_LE.unpack_from(data, pos + 8)[0]
            else:
                pos += 8 + _U16_LE.unpack_from(data, pos + 6)[0]
        return min(pos, end)

    def _implicit_at(self, pos: int, end: int, assumed: bool, nested: bool) -> bool:
        """pydicom's VR peek at the start of a dataset (``_is_implicit_vr``)."""
        if nested and assumed:
            return True
        if pos + 6 > end:
            return assumed
        a, b = self.data[pos + 4], self.data[pos + 5]
        return not (0x40 < a < 0x5B and 0x40 < b < 0x5B)

    def dataset(self, pos: int, end: int, implicit: bool, depth: int, nested: bool) -> int:
        """Walk one dataset; returns the position after it (after its item delimiter)."""
        implicit = self._implicit_at(pos, end, implicit, nested)
        data, tag_len, long_len, short_len = self.data, self.tag_len, self.long_len, self.short_len
        while pos + 8 <= end:
            group, elem, length = tag_len.unpack_from(data, pos)
            tag = group << 16 | elem
            if group == 0xFFFE:
                return pos + 8 if tag == _ITEM_DELIMITER else end
            self._element()
            vr = 0  # implicit: the VR comes from the dictionary
            value = pos + 8
            if not implicit:
                a, b = data[pos + 4], data[pos + 5]
                code = a << 8 | b
                if code in _LONG:
                    if pos + 12 > end:
                        return end
                    vr, value = code, pos + 12
                    length = long_len.unpack_from(data, pos + 8)[0]
                elif 0x41 <= a <= 0x5A and 0x41 <= b <= 0x5A:
                    vr, length = code, short_len.unpack_from(data, pos + 6)[0]
                # else: an invalid VR, read as implicit (pydicom's assume_implicit_vr_switch)
            if length == _UNDEFINED:
                if tag == _PIXEL_DATA or vr in (_OB, _OW):
                    pos = self.fragments_at(value, end)
                else:
                    pos = self.sequence(value, end, None, implicit or vr == _UN, depth + 1)
                continue
            if value + length > end:
                return end  # truncated: pydicom refuses or stops here too
            if length > self.limits.max_element_bytes:
                self._length(length)
            if length >= 8 and tag != _PIXEL_DATA and self._is_sequence(tag, vr, value):
                self.sequence(value, value + length, length, implicit or vr == _UN, depth + 1)
            pos = value + length
        return pos

    def _is_sequence(self, tag: int, vr: int, value: int) -> bool:
        if vr == _SQ:
            return True
        if vr in (0, _UN) and tag in self.sequence_tags:
            return True
        return self.data[value : value + 4] == self.item_tag

    def sequence(self, pos: int, end: int, length: int | None, implicit: bool, depth: int) -> int:
        """Walk the items of a sequence; returns the position after it."""
        self._depth(depth)
        while pos + 8 <= end:
            group, elem, item_length = self.tag_len.unpack_from(self.data, pos)
            if (group << 16 | elem) == _SEQUENCE_DELIMITER:
                return pos + 8
            self._item()  # pydicom takes any other 8-byte header as an item
            if item_length == _UNDEFINED:
                pos = self.dataset(pos + 8, end, implicit, depth, nested=True)
                continue
            if pos + 8 + item_length > end:
                return end
            self.dataset(pos + 8, pos + 8 + item_length, implicit, depth, nested=True)
            pos += 8 + item_length
        return end if length is None else pos

    def fragments_at(self, pos: int, end: int) -> int:
        """Count the fragments of encapsulated Pixel Data; returns the position after them."""
        while pos + 8 <= end:
            group, elem, length = self.tag_len.unpack_from(self.data, pos)
            if (group << 16 | elem) == _SEQUENCE_DELIMITER:
                return pos + 8
            self._fragment()
            if length == _UNDEFINED or pos + 8 + length > end:
                return end
            pos += 8 + length
        return end


def prescan(
    data: bytes,
    start: int,
    *,
    implicit: bool,
    little: bool,
    limits: DecodeLimits,
    file_meta: bool = True,
) -> None:
    """Walk the dataset in ``data[start:]``; raise DicomLimitError past any cap.

    ``implicit`` is the encoding pydicom will assume (it peeks and may switch,
    and so does the walk); ``little`` the byte order. With ``file_meta``, group
    0002 elements at ``start`` (always explicit little endian) are walked first.
    """
    walk = _Walk(data, little, limits)
    body = walk.file_meta(start) if file_meta else start
    walk.dataset(body, walk.end, implicit, 0, nested=False)
