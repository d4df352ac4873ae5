"""The gateway's decode-memory budget: FIFO, never over capacity, nothing leaks on cancel."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from gateway.pipeline.budget import DecodeBudget
from shared.dicom import DicomLimitError


def test_waiters_are_served_in_order_and_capacity_is_never_exceeded() -> None:
    async def main() -> list[str]:
        budget = DecodeBudget(100)
        order: list[str] = []

        async def job(name: str, amount: int, hold_s: float) -> None:
            await budget.acquire(amount)
            assert budget.used <= budget.capacity
            order.append(name)
            await asyncio.sleep(hold_s)
            budget.release(amount)

        await asyncio.gather(
            job("a", 60, 0.05), job("big", 90, 0.01), job("small", 10, 0.01)
        )
        assert budget.used == 0
        return order

    # "small" would fit beside "a" but waits behind "big": first come, first served
    assert asyncio.run(main()) == ["a", "big", "small"]


def test_an_image_that_can_never_fit_is_refused_at_once() -> None:
    async def main() -> None:
        with pytest.raises(DicomLimitError, match="DECODE_MEMORY_BUDGET_MB"):
            await DecodeBudget(100).acquire(101)

    asyncio.run(main())


def test_a_cancelled_waiter_holds_nothing_and_blocks_nobody() -> None:
    async def main() -> None:
        budget = DecodeBudget(100)
        await budget.acquire(80)
        waiter = asyncio.create_task(budget.acquire(50))
        await asyncio.sleep(0.01)
        behind = asyncio.create_task(budget.acquire(20))
        await asyncio.sleep(0.01)
        waiter.cancel()
        await asyncio.sleep(0.01)
        assert behind.done() and budget.used == 100
        budget.release(80)
        budget.release(20)
        assert budget.used == 0 and budget.try_acquire(100) and not budget.try_acquire(1)

    asyncio.run(main())


@pytest.mark.parametrize("budget_mb", [2048, 8], ids=["room", "no_room"])
def test_the_gateway_reads_an_uploads_header_once_whatever_the_budget(
    monkeypatch: pytest.MonkeyPatch, budget_mb: int
) -> None:
    """With room for the largest image one call decodes; without it (8 MiB < 40 MP x 8
    bytes) a header step comes first, and the decode goes on from its header."""
    from concurrent.futures import ThreadPoolExecutor

    from bench.dicoms import make_dx_dicom, radiograph_pixels
    from gateway.pipeline import decode as gateway_decode
    from gateway.pipeline.context import Pipeline
    from shared import dicom
    from shared.dicom import steps
    from shared.settings import GatewaySettings

    parses: list[int] = []
    parse = steps.parse_dicom
    monkeypatch.setattr(steps, "parse_dicom", lambda *a: parses.append(1) or parse(*a))
    data = make_dx_dicom(radiograph_pixels(640, 480), compress=False)  # 2.3 MiB to decode
    settings = GatewaySettings(_env_file=None, dicom_isolate_decoders=False)  # in this process
    with ThreadPoolExecutor(1) as threads:
        pipeline = Pipeline(
            settings=settings, classifier=None, detector=None,  # type: ignore[arg-type]
            decode_pool=threads, decode_budget=DecodeBudget(budget_mb * 2**20),
        )
        canonical, _ = asyncio.run(gateway_decode.decode(pipeline, data))
    assert len(parses) == 1
    assert pipeline.decode_budget.used == 0
    assert np.array_equal(canonical.pixels, dicom.decode_dicom(data)[0].pixels)
