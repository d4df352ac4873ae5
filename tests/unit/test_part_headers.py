"""Multipart part headers are capped the same way in both readers (form-data and STOW-RS):
a client cannot make the gateway hold unbounded header bytes or count, and a good body
still reads."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.http.multipart import (
    MAX_PART_HEADERS,
    MultipartLimits,
    RelatedLimits,
    UploadError,
    _read_field,
    read_related,
)

BOUNDARY = b"XyZ"


async def chunks(body: bytes) -> AsyncIterator[bytes]:
    yield body


def body(headers: list[bytes], data: bytes = b"DICM") -> bytes:
    lines = b"".join(h + b"\r\n" for h in headers)
    return b"--" + BOUNDARY + b"\r\n" + lines + b"\r\n" + data + b"\r\n--" + BOUNDARY + b"--\r\n"


FORM = b'Content-Disposition: form-data; name="file"; filename="x.dcm"'
DICOM = b"Content-Type: application/dicom"
LIMITS = MultipartLimits(max_parts=4, max_part_header_bytes=256)
RELATED = RelatedLimits(max_bytes=10_000, max_instances=4, max_instance_bytes=1000,
                        max_part_header_bytes=256)
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY.decode()}'


async def read_form(raw: bytes) -> tuple[bytes, str | None] | None:
    return await _read_field(BOUNDARY, chunks(raw), 1000, b"file", LIMITS)


async def read_stow(raw: bytes) -> list[bytes]:
    return await read_related(CONTENT_TYPE, str(len(raw)), chunks(raw), RELATED, 10.0)


async def test_good_bodies_read_in_both_readers() -> None:
    assert await read_form(body([FORM])) == (b"DICM", "x.dcm")
    assert await read_stow(body([DICOM])) == [b"DICM"]


@pytest.mark.parametrize("reader", [read_form, read_stow])
async def test_part_header_bytes_are_capped(reader) -> None:  # type: ignore[no-untyped-def]
    huge = b"X-Padding: " + b"a" * 400
    with pytest.raises(UploadError, match="part headers over 256 bytes"):
        await reader(body([FORM if reader is read_form else DICOM, huge]))


@pytest.mark.parametrize("reader", [read_form, read_stow])
async def test_part_header_count_is_capped(reader) -> None:  # type: ignore[no-untyped-def]
    many = [b"X-%d: 1" % n for n in range(MAX_PART_HEADERS)]
    first = FORM if reader is read_form else DICOM
    # python-multipart's own header limit may refuse first; either way a clear 400.
    with pytest.raises(UploadError, match=r"(?i)more than 16 headers|header count") as refused:
        await reader(body([first, *many]))
    assert refused.value.status_code == 400


async def test_stow_parts_must_be_dicom() -> None:
    with pytest.raises(UploadError, match="application/dicom") as refused:
        await read_stow(body([b"Content-Type: text/plain"]))
    assert refused.value.status_code == 415
