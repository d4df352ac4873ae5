"""The decode-memory budget: how much pixel memory all uploads together may hold.

Every worker process has its own address-space limit, but N workers each
decoding a 40-megapixel image still add up. The gateway reserves an upload's
decode cost (rows x columns x :data:`shared.dicom.limits.DECODE_BYTES_PER_PIXEL`,
known from the header before any pixel is decoded) here first, and the
reservation is returned when the decode has really finished, not when the
request gave up waiting for it. Waiters are served first come, first
served, so a large image is not starved by a stream of small ones; the wait
is bounded by the request deadline (504). An image that could never fit is
refused at once (422 naming ``DECODE_MEMORY_BUDGET_MB``).
"""

from __future__ import annotations

import asyncio
import collections

from shared.dicom import DicomLimitError

__all__ = ["DecodeBudget"]


class DecodeBudget:
    """A FIFO byte semaphore on one event loop."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = capacity_bytes
        self.used = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    async def acquire(self, amount: int) -> None:
        """Wait until `amount` bytes fit, then hold them (call :meth:`release` after)."""
        if amount > self.capacity:
            raise DicomLimitError(
                f"Decoding this image needs {amount // 2**20} MiB, more than the "
                f"{self.capacity // 2**20} MiB all decodes together may use "
                "(limit DECODE_MEMORY_BUDGET_MB).",
                "DECODE_MEMORY_BUDGET_MB",
            )
        if not self._waiters and self.used + amount <= self.capacity:
            self.used += amount
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((amount, future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(amount)  # granted, then cancelled before it resumed
            else:
                self._wake()  # a cancelled head of the line must not block the others
            raise

    def try_acquire(self, amount: int) -> bool:
        """Hold `amount` bytes if they fit now and nobody waits; never blocks."""
        if self._waiters or self.used + amount > self.capacity:
            return False
        self.used += amount
        return True

    def release(self, amount: int) -> None:
        """Return `amount` bytes and grant them to the waiters first in line."""
        self.used = max(0, self.used - amount)
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            amount, future = self._waiters[0]
            if future.done():
                self._waiters.popleft()
                continue
            if self.used + amount > self.capacity:
                return
            self._waiters.popleft()
            self.used += amount
            future.set_result(None)
