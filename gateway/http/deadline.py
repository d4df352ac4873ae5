"""Each analysis has a deadline and stops when its client goes away."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

from shared.errors import ServiceError
from shared.observability import unless_disconnected

T = TypeVar("T")


class DeadlineError(ServiceError):
    """The request's deadline passed before the answer was ready (504)."""

    status_code = 504


async def within(work: Awaitable[T], request: Request, seconds: float) -> T:
    """``work`` bounded by ``seconds`` and cancelled if the client goes away.

    Raises :class:`DeadlineError` past the deadline and
    :class:`shared.observability.ClientDisconnectedError` (499) when the client has gone.
    """
    try:
        async with asyncio.timeout(seconds):
            return await unless_disconnected(work, request.receive)
    except TimeoutError as exc:
        raise DeadlineError(
            f"no answer within the {seconds:g} s deadline; no diagnosis was made"
        ) from exc
