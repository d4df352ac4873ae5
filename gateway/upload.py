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

    parts: list[dict[str, object]] = []
    current: dict[str, object] = {}
    header_field = bytearray()
    header_value = bytearray()

    def on_part_begin() -> None:
        current.clear()
        current["headers"] = {}
        current["data"] = bytearray()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        headers = current["headers"]
        assert isinstance(headers, dict)
        headers[bytes(header_field).lower()] = bytes(header_value)
        header_field.clear()
        header_value.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        buffer = current["data"]
        assert isinstance(buffer, bytearray)
        buffer.extend(data[start:end])
        if len(buffer) > limit:
            raise _too_large(limit)

    def on_part_end() -> None:
        parts.append(dict(current))

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

    for part in parts:
        headers = part["headers"]
        assert isinstance(headers, dict)
        _, disposition = parse_options_header(headers.get(b"content-disposition", b""))
        if disposition.get(b"name") == field_name.encode():
            filename = disposition.get(b"filename")
            data = part["data"]
            assert isinstance(data, bytearray)
            return bytes(data), filename.decode("utf-8", "replace") if filename else None
    raise UploadError(f"no file in the multipart field {field_name!r}")
