"""Read a ``multipart/related; type="application/dicom"`` body (STOW-RS) into memory, bounded.

Like :mod:`gateway.http.multipart` (the same chunk reader, caps and timeouts): the body stays in
memory (DICOMs carry PHI and never touch the disk), a declared ``Content-Length`` over
``STOWRS_MAX_BYTES`` is refused before a byte is read (413), the stream is cut off as
soon as it passes it, at most ``STOWRS_MAX_INSTANCES`` parts are read (413), each at
most ``MAX_CONTENT_LENGTH`` bytes (413) with at most ``MULTIPART_MAX_PART_HEADER_BYTES``
of headers (400). A part of another media type than ``application/dicom`` is a 415.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from python_multipart.multipart import MultipartParser, parse_options_header

from gateway.http.multipart import PartHeaders, UploadError, boundary_option, declared_size
from shared.bodies import BodyRefusedError, capped_chunks
from shared.errors import ServiceError

DICOM = b"application/dicom"


@dataclass(frozen=True)
class RelatedLimits:
    """What one STOW-RS body may hold."""

    max_bytes: int  # the whole body (STOWRS_MAX_BYTES)
    max_instances: int  # parts (STOWRS_MAX_INSTANCES)
    max_instance_bytes: int  # one part (MAX_CONTENT_LENGTH)
    max_part_header_bytes: int = 8192
    idle_timeout_s: float = 10.0


def _too_large(message: str) -> UploadError:
    return UploadError(message, status_code=413)


def related_boundary(content_type: str | None, content_length: str | None,
                     limits: RelatedLimits) -> bytes:
    """The boundary, after refusing what the headers alone show is unwanted (413, 415, 400)."""
    declared = declared_size(content_length)
    if declared is not None and declared > limits.max_bytes:
        raise _too_large(f"request body exceeds {limits.max_bytes} bytes (STOWRS_MAX_BYTES)")
    media_type, options = parse_options_header(content_type or "")
    kind = options.get(b"type")
    if media_type != b"multipart/related" or (kind is not None and kind.lower() != DICOM):
        raise UploadError(
            'send instances as multipart/related; type="application/dicom" (PS3.18 10.5)',
            status_code=415,
        )
    return boundary_option(options)


class _PartsReader(PartHeaders):
    """python-multipart callbacks that keep every part's bytes, under the limits."""

    def __init__(self, limits: RelatedLimits) -> None:
        super().__init__(limits.max_part_header_bytes)
        self.limits = limits
        self.parts: list[bytes] = []
        self.data = bytearray()

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def on_part_begin(self) -> None:
        if len(self.parts) >= self.limits.max_instances:
            raise _too_large(
                f"more than {self.limits.max_instances} instances in one request "
                "(STOWRS_MAX_INSTANCES)"
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
            raise _too_large(f"an instance exceeds the {megabytes} MB limit (MAX_CONTENT_LENGTH)")

    def on_part_end(self) -> None:
        self.parts.append(bytes(self.data))
        self.data = bytearray()


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
    parser = MultipartParser(boundary, reader.callbacks())  # type: ignore[arg-type]
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in capped_chunks(
                body, limit=limits.max_bytes, setting="STOWRS_MAX_BYTES",
                idle_timeout_s=limits.idle_timeout_s,
            ):
                parser.write(chunk)
        parser.finalize()
    except TimeoutError as exc:
        raise UploadError(
            f"the request was not received within {timeout_s:g} s", status_code=408
        ) from exc
    except BodyRefusedError as exc:
        raise UploadError(exc.message, status_code=exc.status_code) from exc
    except ServiceError:
        raise
    except Exception as exc:  # noqa: BLE001 - python-multipart raises several types
        raise UploadError(f"malformed multipart body: {exc}") from exc
    if not reader.parts:
        raise UploadError("no instance in the multipart/related body")
    return reader.parts
