"""Request bodies read chunk by chunk under a size cap and two deadlines.

``await request.body()`` waits for as long as the client takes and holds whatever it
sends. Every body a service reads goes through :func:`capped_chunks` instead: a
declared ``Content-Length`` over the cap is refused before a byte is read, the stream
is cut off as soon as it passes the cap, the next chunk must come within
``idle_timeout_s`` and the whole body within ``total_timeout_s``. Torch-free.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from shared.errors import ServiceError


class BodyRefusedError(ServiceError):
    """A body we will not read on: too large (413) or too slow (408)."""

    status_code = 413


def declared_length(content_length: str | None) -> int | None:
    """The ``Content-Length`` header as a number (None when absent); 400 when malformed."""
    if content_length is None:
        return None
    try:
        value = int(content_length)
    except ValueError as exc:
        raise BodyRefusedError("invalid Content-Length header", status_code=400) from exc
    if value < 0:
        raise BodyRefusedError("invalid Content-Length header", status_code=400)
    return value


def too_large(limit: int, setting: str) -> BodyRefusedError:
    return BodyRefusedError(f"request body exceeds the {limit} byte limit ({setting})")


async def capped_chunks(
    chunks: AsyncIterator[bytes],
    *,
    limit: int,
    setting: str,
    idle_timeout_s: float,
    total_timeout_s: float | None = None,
) -> AsyncIterator[bytes]:
    """The chunks of ``chunks``, refused (413/408) past ``limit`` bytes or a deadline."""
    iterator = aiter(chunks)
    received = 0
    ends_at = None if total_timeout_s is None else time.monotonic() + total_timeout_s
    while True:
        wait = idle_timeout_s
        if ends_at is not None:
            wait = min(wait, ends_at - time.monotonic())
        try:
            chunk = await asyncio.wait_for(anext(iterator), max(wait, 0.0))
        except StopAsyncIteration:
            return
        except TimeoutError as exc:
            total = ends_at is not None and time.monotonic() >= ends_at
            raise BodyRefusedError(
                f"the request body was not received within {total_timeout_s:g} s"
                if total else f"no body data for {idle_timeout_s:g} s (HTTP_BODY_IDLE_TIMEOUT_S)",
                status_code=408,
            ) from exc
        received += len(chunk)
        if received > limit:
            raise too_large(limit, setting)
        yield chunk


async def read_capped(
    chunks: AsyncIterator[bytes],
    content_length: str | None,
    *,
    limit: int,
    setting: str,
    idle_timeout_s: float,
    total_timeout_s: float | None = None,
) -> bytes:
    """The whole body, after refusing a declared length over ``limit`` at once."""
    declared = declared_length(content_length)
    if declared is not None and declared > limit:
        raise too_large(limit, setting)
    body = bytearray()
    async for chunk in capped_chunks(
        chunks, limit=limit, setting=setting,
        idle_timeout_s=idle_timeout_s, total_timeout_s=total_timeout_s,
    ):
        body.extend(chunk)
    return bytes(body)
