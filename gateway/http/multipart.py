"""Multipart request bodies read into memory, bounded: one reader for both kinds.

Starlette's form parser spools uploads over 1 MB to a temporary file; DICOMs carry PHI
and must never touch the disk, and a huge body must be refused before it is read whole.
So the gateway streams bodies itself, through one incremental, bounded parser
(:func:`_feed`): a declared Content-Length over the limit is refused at once, the
stream is cut off as soon as it passes the limit, a body that stalls for
``HTTP_BODY_IDLE_TIMEOUT_S`` is refused (408), and every part has at most
``MULTIPART_MAX_PART_HEADER_BYTES`` of headers and MAX_PART_HEADERS headers (400).
What is kept differs by kind:

- ``multipart/form-data`` (``/upload``, ``/preview``, ``/upload/dicom``): only the file
  field's bytes, other parts skipped as they stream by; at most ``MULTIPART_MAX_PARTS``
  parts; the file at most ``MAX_CONTENT_LENGTH`` (413).
- ``multipart/related; type="application/dicom"`` (STOW-RS): every part, each an
  ``application/dicom`` instance (else 415), at most ``STOWRS_MAX_INSTANCES`` of them
  (413), each at most ``MAX_CONTENT_LENGTH``, the whole body at most ``STOWRS_MAX_BYTES``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from python_multipart.multipart import MultipartParser, parse_options_header

from shared.bodies import BodyRefusedError, capped_chunks, declared_length
from shared.errors import ServiceError

# Room for the multipart boundaries and part headers around the file itself.
ENVELOPE_BYTES = 64 * 1024
MAX_PART_HEADERS = 16
# The python-multipart events a reader may handle (a method of the same name).
PARSER_EVENTS = (
    "on_part_begin", "on_header_field", "on_header_value", "on_header_end",
    "on_headers_finished", "on_part_data", "on_part_end",
)
DICOM = b"application/dicom"


@dataclass(frozen=True)
class MultipartLimits:
    """How much of a form-data body the gateway reads besides the file itself."""

    max_parts: int = 4
    max_part_header_bytes: int = 8192
    idle_timeout_s: float = 10.0


@dataclass(frozen=True)
class RelatedLimits:
    """What one STOW-RS body may hold."""

    max_bytes: int  # the whole body (STOWRS_MAX_BYTES)
    max_instances: int  # parts (STOWRS_MAX_INSTANCES)
    max_instance_bytes: int  # one part (MAX_CONTENT_LENGTH)
    max_part_header_bytes: int = 8192
    idle_timeout_s: float = 10.0


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
    limits: MultipartLimits = MultipartLimits(),
) -> bytes:
    """The uploaded file's bytes, received within ``timeout_s`` (408) and not empty (400)."""
    try:
        async with asyncio.timeout(timeout_s):
            data, _filename = await read_file_field(
                content_type, content_length, body, limit, limits=limits
            )
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
    limits: MultipartLimits = MultipartLimits(),
) -> tuple[bytes, str | None]:
    """``(file bytes, client filename)`` of the multipart field ``field_name``."""
    boundary = _form_boundary(content_type, content_length, limit)
    found = await _read_field(boundary, body, limit, field_name.encode(), limits)
    if found is None:
        raise UploadError(f"no file in the multipart field {field_name!r}")
    return found


def declared_size(content_length: str | None) -> int | None:
    """``Content-Length`` as a number (None when absent); a 400 UploadError when malformed."""
    try:
        return declared_length(content_length)
    except BodyRefusedError as exc:
        raise UploadError(exc.message) from exc


def boundary_option(options: dict[bytes, bytes]) -> bytes:
    """The ``boundary`` of a multipart Content-Type's options; 400 without one."""
    boundary = options.get(b"boundary")
    if not boundary:
        raise UploadError("multipart body without a boundary")
    return boundary


def _form_boundary(content_type: str | None, content_length: str | None, limit: int) -> bytes:
    """The form-data boundary, after refusing what the headers alone show is unwanted."""
    declared = declared_size(content_length)
    if declared is not None and declared > limit + ENVELOPE_BYTES:
        raise _too_large(limit)
    media_type, options = parse_options_header(content_type or "")
    if media_type != b"multipart/form-data":
        raise UploadError(
            "send the DICOM as multipart/form-data with the file in the field 'file'",
            status_code=415,
        )
    return boundary_option(options)


def related_boundary(content_type: str | None, content_length: str | None,
                     limits: RelatedLimits) -> bytes:
    """The boundary, after refusing what the headers alone show is unwanted (413, 415, 400)."""
    declared = declared_size(content_length)
    if declared is not None and declared > limits.max_bytes:
        raise UploadError(f"request body exceeds {limits.max_bytes} bytes (STOWRS_MAX_BYTES)",
                          status_code=413)
    media_type, options = parse_options_header(content_type or "")
    kind = options.get(b"type")
    if media_type != b"multipart/related" or (kind is not None and kind.lower() != DICOM):
        raise UploadError(
            'send instances as multipart/related; type="application/dicom" (PS3.18 10.5)',
            status_code=415,
        )
    return boundary_option(options)


class PartHeaders:
    """The part-header callbacks both multipart readers share, under the same caps: at
    most ``max_part_header_bytes`` of names and values and MAX_PART_HEADERS headers a part."""

    def __init__(self, max_part_header_bytes: int) -> None:
        self.max_part_header_bytes = max_part_header_bytes
        self.header_bytes = 0
        self.header_count = 0
        self.header_field = bytearray()
        self.header_value = bytearray()

    def callbacks(self) -> dict[str, object]:
        """python-multipart's callbacks: every ``on_*`` event this reader handles."""
        return {name: getattr(self, name) for name in PARSER_EVENTS if hasattr(self, name)}

    def start_headers(self) -> None:
        self.header_bytes = self.header_count = 0

    def _count_header_bytes(self, size: int) -> None:
        self.header_bytes += size
        if self.header_bytes > self.max_part_header_bytes:
            raise UploadError(
                f"multipart part headers over {self.max_part_header_bytes} bytes "
                "(MULTIPART_MAX_PART_HEADER_BYTES)"
            )

    def on_header_field(self, chunk: bytes, start: int, end: int) -> None:
        self._count_header_bytes(end - start)
        self.header_field.extend(chunk[start:end])

    def on_header_value(self, chunk: bytes, start: int, end: int) -> None:
        self._count_header_bytes(end - start)
        self.header_value.extend(chunk[start:end])

    def finish_header(self) -> tuple[bytes, bytes]:
        """The header just read (name lower-cased, value), counted; ready for the next."""
        self.header_count += 1
        if self.header_count > MAX_PART_HEADERS:
            raise UploadError(f"more than {MAX_PART_HEADERS} headers in a multipart part")
        header = bytes(self.header_field).strip().lower(), bytes(self.header_value)
        self.header_field.clear()
        self.header_value.clear()
        return header


class _FieldReader(PartHeaders):
    """python-multipart callbacks that keep only the first part named ``field``."""

    def __init__(self, field: bytes, limit: int, limits: MultipartLimits) -> None:
        super().__init__(limits.max_part_header_bytes)
        self.field = field
        self.limit = limit
        self.limits = limits
        self.parts = 0
        self.disposition = b""
        self.keeping = False
        self.data = bytearray()
        self.found: tuple[bytes, str | None] | None = None


    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > self.limits.max_parts:
            raise UploadError(
                f"more than {self.limits.max_parts} multipart parts (MULTIPART_MAX_PARTS)"
            )
        self.start_headers()
        self.disposition = b""
        self.keeping = False

    def on_header_end(self) -> None:
        name, value = self.finish_header()
        if name == b"content-disposition":
            self.disposition = value

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.disposition)
        self.keeping = self.found is None and options.get(b"name") == self.field
        if self.keeping:
            filename = options.get(b"filename")
            self.found = (b"", filename.decode("utf-8", "replace") if filename else None)

    def on_part_data(self, chunk: bytes, start: int, end: int) -> None:
        if not self.keeping:
            return  # another field: skipped as it streams by, never stored
        self.data.extend(chunk[start:end])
        if len(self.data) > self.limit:
            raise _too_large(self.limit)

    def on_part_end(self) -> None:
        if self.keeping and self.found is not None:
            self.found = (bytes(self.data), self.found[1])
            self.data = bytearray()
        self.keeping = False


class _PartsReader(PartHeaders):
    """python-multipart callbacks that keep every part's bytes, under the limits."""

    def __init__(self, limits: RelatedLimits) -> None:
        super().__init__(limits.max_part_header_bytes)
        self.limits = limits
        self.parts: list[bytes] = []
        self.data = bytearray()


    def on_part_begin(self) -> None:
        if len(self.parts) >= self.limits.max_instances:
            raise UploadError(
                f"more than {self.limits.max_instances} instances in one request "
                "(STOWRS_MAX_INSTANCES)", status_code=413,
            )
        self.start_headers()
        self.data = bytearray()

    def on_header_end(self) -> None:
        name, value = self.finish_header()
        if name == b"content-type":
            media_type, _ = parse_options_header(value)
            if media_type != DICOM:
                raise UploadError(
                    "every part must be application/dicom (a PS3.10 instance); "
                    "metadata + bulk data requests are not supported",
                    status_code=415,
                )

    def on_part_data(self, chunk: bytes, start: int, end: int) -> None:
        self.data.extend(chunk[start:end])
        if len(self.data) > self.limits.max_instance_bytes:
            megabytes = self.limits.max_instance_bytes // (1024 * 1024)
            raise UploadError(
                f"an instance exceeds the {megabytes} MB limit (MAX_CONTENT_LENGTH)",
                status_code=413,
            )

    def on_part_end(self) -> None:
        self.parts.append(bytes(self.data))
        self.data = bytearray()


async def _feed(
    boundary: bytes, callbacks: dict[str, object], body: AsyncIterator[bytes], *, cap: int,
    setting: str, idle_timeout_s: float, too_large: Callable[[BodyRefusedError], UploadError],
) -> None:
    """Stream ``body`` through one multipart parser, cut off past ``cap`` bytes; every
    failure an :class:`UploadError` (``too_large`` words the 413)."""
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    try:
        async for chunk in capped_chunks(
            body, limit=cap, setting=setting, idle_timeout_s=idle_timeout_s
        ):
            parser.write(chunk)
        parser.finalize()
    except BodyRefusedError as exc:
        if exc.status_code == 413:
            raise too_large(exc) from exc
        raise UploadError(exc.message, status_code=exc.status_code) from exc
    except ServiceError:
        raise  # ours, or the admission's "at capacity" raised as the body completes
    except Exception as exc:  # noqa: BLE001 - python-multipart raises several types
        raise UploadError(f"malformed multipart body: {exc}") from exc


async def _read_field(
    boundary: bytes, body: AsyncIterator[bytes], limit: int, field: bytes,
    limits: MultipartLimits,
) -> tuple[bytes, str | None] | None:
    """The first part named ``field`` as ``(data, filename)``, cut off past ``limit``."""
    reader = _FieldReader(field, limit, limits)
    await _feed(
        boundary, reader.callbacks(), body, cap=limit + ENVELOPE_BYTES,
        setting="MAX_CONTENT_LENGTH", idle_timeout_s=limits.idle_timeout_s,
        too_large=lambda _: _too_large(limit),
    )
    return reader.found


async def read_related(
    content_type: str | None,
    content_length: str | None,
    body: AsyncIterator[bytes],
    limits: RelatedLimits,
    timeout_s: float,
) -> list[bytes]:
    """The instances of a STOW-RS body, in order; at least one (400 otherwise)."""
    boundary = related_boundary(content_type, content_length, limits)
    reader = _PartsReader(limits)
    try:
        async with asyncio.timeout(timeout_s):
            await _feed(
                boundary, reader.callbacks(), body, cap=limits.max_bytes,
                setting="STOWRS_MAX_BYTES", idle_timeout_s=limits.idle_timeout_s,
                too_large=lambda exc: UploadError(exc.message, status_code=413),
            )
    except TimeoutError as exc:
        raise UploadError(
            f"the request was not received within {timeout_s:g} s", status_code=408
        ) from exc
    if not reader.parts:
        raise UploadError("no instance in the multipart/related body")
    return reader.parts
