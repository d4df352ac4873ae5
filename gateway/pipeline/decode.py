"""DICOM bytes -> canonical image, in the decoder workers, under the decode-memory budget.

Everything runs in a worker process by default (the gateway never parses an upload
itself): :mod:`shared.dicom` owns the intake; this module says how it runs for
uploads (the settings -> limits and worker pool, in one place), when it runs and how
much memory all decodes together may hold (:mod:`gateway.pipeline.budget`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import time

from gateway.pipeline.budget import DecodeBudget
from gateway.pipeline.context import Pipeline
from shared import dicom, tracing
from shared.settings import GatewaySettings


def decode_limits(settings: GatewaySettings) -> dicom.DecodeLimits:
    """The caps one upload must stay under (``MAX_PIXELS``, ``MAX_DICOM_*``)."""
    return dicom.DecodeLimits(
        max_elements=settings.max_dicom_elements,
        max_sequence_items=settings.max_dicom_sequence_items,
        max_sequence_depth=settings.max_dicom_sequence_depth,
        max_fragments=settings.max_dicom_fragments,
        max_element_bytes=settings.max_dicom_element_bytes,
        max_inflated_bytes=settings.max_dicom_inflated_bytes,
        max_pixels=settings.max_pixels,
    )


def decoder_pool(settings: GatewaySettings) -> dicom.DecoderPool | None:
    """The memory-limited worker processes uploads are parsed and decoded in; None with
    ``DICOM_ISOLATE_DECODERS=false`` (in-process, debugging only). Its owner closes it."""
    if not settings.dicom_isolate_decoders:
        return None
    return dicom.DecoderPool(
        memory_mb=settings.decode_worker_memory_mb, timeout_s=settings.dicom_decode_timeout_s
    )


def selection_rules(settings: GatewaySettings) -> dicom.SelectionRules | None:
    """The input selection rules (``INPUT_SELECTION_RULES``), or None when ``INPUT_SELECTION``
    is off. A rules file that does not load stops the start (InvalidRulesError)."""
    if not settings.input_selection:
        return None
    return dicom.load_rules(settings.input_selection_rules)


async def decode(
    pipeline: Pipeline, data: bytes
) -> tuple[dicom.CanonicalImage, dicom.DicomMetadata]:
    """:func:`decode_in_workers` in a span; the worker calls are its children (each step
    runs in a copy of this context, and the pool times its call to the worker)."""
    with tracing.span("decode", **{"spine.bytes": len(data)}):
        return await decode_in_workers(pipeline, data)


async def decode_in_workers(
    pipeline: Pipeline, data: bytes
) -> tuple[dicom.CanonicalImage, dicom.DicomMetadata]:
    """DICOM bytes -> canonical image, in a decode thread (never on the event loop).

    Everything runs in a worker process by default, under the decode-memory budget,
    which is returned when the decode has really finished. While the budget has room for
    the largest image ``MAX_PIXELS`` allows, that much is held and the upload goes to a
    worker in one call; otherwise the header step runs first (every refusal comes from
    it, in milliseconds), the decode waits until the image's own cost fits and then
    goes on from that step's header: the header is read once either way. The input
    selection rules run on it, once: what they refuse is a 422
    (``dicom.NotSelectedError``) before any pixel is decoded, for /upload and /preview.
    Each step runs in a copy of this context so its log lines carry the request id.
    """
    loop = asyncio.get_running_loop()
    settings = pipeline.settings
    limits, workers = decode_limits(settings), pipeline.decoders
    budget = pipeline.decode_budget
    started = time.perf_counter()
    inspection: dicom.Inspection | None = None  # the header step's, when there was one
    try:
        need = dicom.decode_bytes(settings.max_pixels, 1)  # the largest image allowed
        if not budget.try_acquire(need):
            inspect = functools.partial(
                dicom.inspect_dicom, data, limits=limits, selection=pipeline.selection,
                pool=workers,
            )
            inspection = await loop.run_in_executor(
                pipeline.decode_pool, contextvars.copy_context().run, inspect
            )
            need = inspection.decode_bytes
            await budget.acquire(need)
        work = functools.partial(
            dicom.decode_dicom, data, settings.canonical_long_side,
            reduced_j2k=settings.reduced_j2k, limits=limits, selection=pipeline.selection,
            pool=workers, inspection=inspection,
        )
        try:
            job = pipeline.decode_pool.submit(contextvars.copy_context().run, work)
        except BaseException:
            budget.release(need)
            raise
        job.add_done_callback(lambda _: _release_soon(loop, budget, need))
        return await asyncio.wrap_future(job)
    except dicom.DicomError as exc:
        pipeline.metrics.decode_refused(exc)
        raise
    finally:
        pipeline.metrics.decode_seconds.observe(time.perf_counter() - started)


def _release_soon(loop: asyncio.AbstractEventLoop, budget: DecodeBudget, amount: int) -> None:
    """Return budget from the decode thread, on the loop that owns the budget."""
    with contextlib.suppress(RuntimeError):  # the loop is closed: nothing waits any more
        loop.call_soon_threadsafe(budget.release, amount)
