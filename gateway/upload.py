"""Read one multipart file field into memory, refusing oversize bodies early.

Starlette's form parser spools uploads over 1 MB to a temporary file; DICOMs carry PHI
and must never touch the disk, and a huge body must be refused before it is read whole.
So the gateway streams the body itself: a declared Content-Length over the limit is
refused at once, and the stream is cut off as soon as it passes the limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from python_multipart.multipart import MultipartParser, parse_options_header

from shared.errors import ServiceError

# Room for the multipart boundaries and part headers around the file itself.
ENVELOPE_BYTES = 64 * 1024


class UploadError(ServiceError):
    """A request body we will not read: 400 unless said otherwise (408, 413, 415)."""

    status_code = 400


def _too_large(limit: int) -> UploadError:
    megabytes = limit // (1024 * 1024)
    return UploadError(
        f"upload exceeds the {megabytes} MB limit (MAX_CONTENT_LENGTH)", status_code=413
    )


async def receive_upload(
    content_type: str | None,
    content_length: str | None,
    body: AsyncIterator[bytes],
    limit: int,
    timeout_s: float,
) -> bytes:
    """The uploaded file's bytes, received within ``timeout_s`` (408) and not empty (400)."""
    try:
        async with asyncio.timeout(timeout_s):
            data, _filename = await read_file_field(content_type, content_length, body, limit)
    except TimeoutError as exc:
        raise UploadError(
            f"the upload was not received within {timeout_s:g} s", status_code=408
        ) from exc
    if not data:
        raise UploadError("the uploaded file is empty")
    return data


async def read_file_field(
    content_type: str | None,
    content_length: str | None,
    body: AsyncIterator[bytes],
    limit: int,
    field_name: str = "file",
) -> tuple[bytes, str | None]:
    """``(file bytes, client filename)`` of the multipart field ``field_name``."""
    boundary = _boundary(content_type, content_length, limit)
    parts = await _read_parts(boundary, body, limit)
    for headers, data in parts:
        _, disposition = parse_options_header(headers.get(b"content-disposition", b""))
        if disposition.get(b"name") == field_name.encode():
            filename = disposition.get(b"filename")
            return bytes(data), filename.decode("utf-8", "replace") if filename else None
    raise UploadError(f"no file in the multipart field {field_name!r}")


def _boundary(content_type: str | None, content_length: str | None, limit: int) -> bytes:
    """The multipart boundary, after refusing what the headers alone show is unwanted."""
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError as exc:
            raise UploadError("invalid Content-Length header") from exc
        if declared > limit + ENVELOPE_BYTES:
            raise _too_large(limit)
    media_type, options = parse_options_header(content_type or "")
    if media_type != b"multipart/form-data":
        raise UploadError(
            "send the DICOM as multipart/form-data with the file in the field 'file'",
            status_code=415,
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise UploadError("multipart body without a boundary")
    return boundary


async def _read_parts(
    boundary: bytes, body: AsyncIterator[bytes], limit: int
) -> list[tuple[dict[bytes, bytes], bytearray]]:
    """Every part of the body as ``(headers, data)``, in memory, cut off past ``limit``."""
    parts: list[tuple[dict[bytes, bytes], bytearray]] = []
    headers: dict[bytes, bytes] = {}
    data = bytearray()
    header_field = bytearray()
    header_value = bytearray()

    def on_part_begin() -> None:
        nonlocal headers, data
        headers, data = {}, bytearray()

    def on_header_field(chunk: bytes, start: int, end: int) -> None:
        header_field.extend(chunk[start:end])

    def on_header_value(chunk: bytes, start: int, end: int) -> None:
        header_value.extend(chunk[start:end])

    def on_header_end() -> None:
        headers[bytes(header_field).lower()] = bytes(header_value)
        header_field.clear()
        header_value.clear()

    def on_part_data(chunk: bytes, start: int, end: int) -> None:
        data.extend(chunk[start:end])
        if len(data) > limit:
            raise _too_large(limit)

    def on_part_end() -> None:
        parts.append((headers, data))

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    received = 0
    try:
        async for chunk in body:
            received += len(chunk)
            if received > limit + ENVELOPE_BYTES:
                raise _too_large(limit)
            parser.write(chunk)
        parser.finalize()
    except UploadError:
        raise
    except Exception as exc:  # noqa: BLE001 - python-multipart raises several types
        raise UploadError(f"malformed multipart body: {exc}") from exc
    return parts
