from __future__ import annotations

import asyncio
import threading
import time

import pytest

from model_server.batching import (
    BatchStats,
    DeadlineExceededError,
    DynamicBatcher,
    QueueFullError,
)


async def test_concurrent_items_share_a_batch_and_get_their_own_result() -> None:
    seen: list[list[int]] = []
    stats: list[BatchStats] = []

    def double(items: list[int]) -> list[int]:
        seen.append(list(items))
        return [item * 2 for item in items]

    batcher = DynamicBatcher(double, max_batch_size=4, max_delay_ms=50, on_batch=stats.append)
    await batcher.start()
    try:
        results = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
    finally:
        await batcher.stop()
    assert results == [i * 2 for i in range(10)]
    assert [len(batch) for batch in seen] == [4, 4, 2]
    assert sum(s.size for s in stats) == 10


async def test_full_queue_is_refused_at_once() -> None:
    release = threading.Event()

    def slow(items: list[int]) -> list[int]:
        release.wait(5)
        return items

    batcher = DynamicBatcher(slow, max_batch_size=1, max_delay_ms=0, max_queue_size=2)
    await batcher.start()
    try:
        running = []
        for i in range(3):  # the first runs (blocked), the next two fill the queue
            running.append(asyncio.create_task(batcher.submit(i)))
            await asyncio.sleep(0.05)
        started = time.perf_counter()
        with pytest.raises(QueueFullError):
            await batcher.submit(99)
        assert time.perf_counter() - started < 0.1
        release.set()
        assert await asyncio.gather(*running) == [0, 1, 2]
    finally:
        release.set()
        await batcher.stop()


async def test_expired_and_cancelled_items_are_not_computed() -> None:
    computed: list[int] = []
    gate = threading.Event()

    def record(items: list[int]) -> list[int]:
        gate.wait(5)
        computed.extend(items)
        return items

    batcher = DynamicBatcher(record, max_batch_size=1, max_delay_ms=0)
    await batcher.start()
    try:
        first = asyncio.create_task(batcher.submit(1))
        await asyncio.sleep(0.05)
        expired = asyncio.create_task(batcher.submit(2, deadline=time.perf_counter() + 0.01))
        cancelled = asyncio.create_task(batcher.submit(3))
        await asyncio.sleep(0.05)
        cancelled.cancel()
        gate.set()
        assert await first == 1
        with pytest.raises(DeadlineExceededError):
            await expired
        await asyncio.sleep(0.1)
        assert computed == [1]
    finally:
        gate.set()
        await batcher.stop()


async def test_a_failing_batch_fails_each_caller() -> None:
    def boom(items: list[int]) -> list[int]:
        raise ValueError("model exploded")

    batcher = DynamicBatcher(boom, max_batch_size=2, max_delay_ms=10)
    await batcher.start()
    try:
        results = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
    finally:
        await batcher.stop()
    assert all(isinstance(r, ValueError) for r in results)
