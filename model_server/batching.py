"""Dynamic batching: gather concurrent requests into one forward pass.

A model service receives requests one image at a time from many clients. Running each
alone wastes the accelerator; this batcher queues them, waits at most ``max_delay_ms``
for up to ``max_batch_size`` items, runs one batch in a worker thread (torch releases
the GIL) and hands each caller its own result. The queue is bounded: when it is full,
``submit`` fails at once with :class:`QueueFullError` so the service can answer 503
instead of letting latency grow without limit. Items whose caller has gone away (a
cancelled future) or whose deadline has passed are dropped, not computed.
Torch-free (asyncio and a thread); it lives in ``model_server`` because only the model
server runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from model_server.errors import DeadlineExceededError, QueueFullError
from shared import tracing

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass
class BatchStats:
    """What one batch cost; passed to the ``on_batch`` observer (metrics)."""

    size: int
    queue_seconds: list[float]
    compute_seconds: float


@dataclass
class _Pending(Generic[In, Out]):
    item: In
    future: asyncio.Future[Out]
    enqueued_at: float = field(default_factory=time.perf_counter)
    deadline: float | None = None
    trace: tracing.Carrier = field(default_factory=dict)  # the request's span, when tracing
    enqueued_ns: int = field(default_factory=time.time_ns)


class DynamicBatcher(Generic[In, Out]):
    """Collects items into batches for ``run_batch`` (a blocking function)."""

    def __init__(
        self,
        run_batch: Callable[[list[In]], Sequence[Out]],
        *,
        max_batch_size: int = 8,
        max_delay_ms: float = 5.0,
        max_queue_size: int = 64,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay_ms / 1000.0
        self.max_queue_size = max_queue_size
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Pending[In, Out]] | None = None
        self._worker: asyncio.Task[None] | None = None
        # One thread: batches run one after another on the device, never interleaved.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch")

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        if self._worker is None:
            self._queue = asyncio.Queue(maxsize=self.max_queue_size)
            self._worker = asyncio.create_task(self._loop(), name="dynamic-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def submit(self, item: In, *, deadline: float | None = None) -> Out:
        """Queue one item and wait for its result (``deadline`` is a perf_counter time)."""
        if self._queue is None:
            raise RuntimeError("batcher not started")
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(
                _Pending(item, future, deadline=deadline, trace=tracing.carrier())
            )
        except asyncio.QueueFull as exc:
            raise QueueFullError(
                f"inference queue is full ({self.max_queue_size} waiting)"
            ) from exc
        return await future

    async def _collect(self) -> list[_Pending[In, Out]]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        closes_at = time.perf_counter() + self.max_delay
        while len(batch) < self.max_batch_size:
            remaining = closes_at - time.perf_counter()
            if remaining <= 0:
                while len(batch) < self.max_batch_size and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    def _still_wanted(self, pending: _Pending[In, Out], now: float) -> bool:
        if pending.future.done():  # caller cancelled (client disconnected)
            return False
        if pending.deadline is not None and now > pending.deadline:
            pending.future.set_exception(
                DeadlineExceededError("request deadline passed while queued")
            )
            return False
        return True

    async def _loop(self) -> None:
        while True:
            # The batch lives in _run's frame only: once run, nothing here holds its
            # items (a swapped-out model is freed without waiting for the next batch).
            await self._run(await self._collect())

    async def _run(self, collected: list[_Pending[In, Out]]) -> None:
        started, started_ns = time.perf_counter(), time.time_ns()
        batch = [pending for pending in collected if self._still_wanted(pending, started)]
        if not batch:
            return
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._run_batch, [pending.item for pending in batch]
            )
            if len(results) != len(batch):
                raise RuntimeError(
                    f"run_batch returned {len(results)} results for {len(batch)} items"
                )
        except Exception as exc:  # noqa: BLE001 - every caller must hear about it
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        finished = time.perf_counter()
        _trace(batch, started_ns, time.time_ns())
        for pending, result in zip(batch, results, strict=True):
            if not pending.future.done():
                pending.future.set_result(result)
        if self._on_batch is not None:
            self._on_batch(
                BatchStats(
                    size=len(batch),
                    queue_seconds=[started - p.enqueued_at for p in batch],
                    compute_seconds=finished - started,
                )
            )


def _trace(batch: Sequence[_Pending[In, Out]], started_ns: int, finished_ns: int) -> None:
    """Each request's wait in the queue and its share of the batch, as spans of its trace
    (the batch ran once for all of them, on the batch thread)."""
    for pending in batch:
        if pending.trace:
            tracing.record("queue wait", pending.trace, pending.enqueued_ns, started_ns)
            tracing.record("inference", pending.trace, started_ns, finished_ns,
                           **{"spine.batch_size": len(batch)})
