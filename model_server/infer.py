"""One infer request's images: read off the wire, through the batcher, outputs picked.

Anything off-protocol is an :class:`~model_server.errors.InputError` (400); a caller who
goes away has its queued images dropped; a model failure is a 500 with a request id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

import numpy as np
from starlette.datastructures import Headers

from model_server.errors import ClientGoneError, InputError, ModelFailedError, ServingError
from model_server.lifecycle import BatchedModel
from model_server.repository import Job
from model_server.served import Served
from shared import contract, oip
from shared.observability import ClientDisconnectedError, Receive, unless_disconnected

log = logging.getLogger(__name__)

MAX_IMAGE_PIXELS = 64 * 1024 * 1024
MIN_IMAGE_SIDE = 8
T = TypeVar("T")


def split_images(array: np.ndarray) -> list[np.ndarray]:
    """UINT8 ``[N,1,H,W]`` or ``[N,H,W]`` -> N contiguous ``(H, W)`` images."""
    name = contract.IMAGE.name
    if array.dtype != np.uint8:
        raise InputError(f"{name} must be UINT8, got {array.dtype}")
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 3:
        raise InputError(f"{name} must have shape [N,1,H,W] or [N,H,W], got {list(array.shape)}")
    n, height, width = array.shape
    if n < 1 or height < MIN_IMAGE_SIDE or width < MIN_IMAGE_SIDE:
        raise InputError(f"{name} shape {list(array.shape)} is too small")
    if height * width > MAX_IMAGE_PIXELS:
        raise InputError(f"{name} of {height}x{width} is too large")
    return [np.ascontiguousarray(image) for image in array]


def read_images(headers: Headers, body: bytes) -> tuple[oip.InferenceRequest, list[np.ndarray]]:
    """The infer request and its images; anything off-protocol is an InputError."""
    try:
        raw_length = headers.get(oip.HEADER_LENGTH)
        header_length = int(raw_length) if raw_length is not None else None
        infer_request, tensors = oip.decode_request(body, header_length)
        if contract.IMAGE.name not in tensors:
            raise InputError(f"missing input tensor {contract.IMAGE.name!r}")
        return infer_request, split_images(tensors[contract.IMAGE.name])
    except (ValueError, oip.OipError) as exc:
        raise InputError(str(exc)) from exc


def caller_timeout_s(parameters: dict[str, Any]) -> float | None:
    """Triton's ``timeout`` request parameter (microseconds) in seconds, if usable."""
    value = parameters.get(contract.TIMEOUT_PARAMETER)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return float(value) / 1e6


async def infer_images(
    served: Served, model: BatchedModel, images: list[np.ndarray], deadline: float,
    receive: Receive,
) -> list[dict[str, np.ndarray]]:
    """Every image through the batcher on ``model`` (the one its request leased); dropped
    if the caller goes away meanwhile."""
    jobs = [served.batcher.submit(Job(model, image), deadline=deadline) for image in images]
    try:
        results = await unless_disconnected(_all_or_none(jobs), receive)
    except ClientDisconnectedError as exc:
        log.info("caller went away; its queued images were dropped")
        raise ClientGoneError("client closed the request") from exc
    except ServingError:
        raise  # queue full, deadline passed
    except Exception as exc:  # noqa: BLE001 - a model failure is a real server error
        log.exception("inference failed")
        raise ModelFailedError("inference failed; the request id identifies it in the log") from exc
    return list(results)


async def _all_or_none(work: list[Awaitable[T]]) -> list[T]:
    """Await all; on the first failure (or cancellation) cancel the rest, so the images
    of a request that has already failed are dropped from the queue, not computed."""
    tasks = [asyncio.ensure_future(item) for item in work]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
            elif not task.cancelled():
                task.exception()  # retrieved: only the first failure is reported


def requested_outputs(
    outputs: dict[str, np.ndarray], infer_request: oip.InferenceRequest
) -> dict[str, np.ndarray]:
    """The outputs the request names (all when it names none)."""
    requested = [item.name for item in infer_request.outputs or []]
    if not requested:
        return outputs
    unknown = [item for item in requested if item not in outputs]
    if unknown:
        raise InputError(f"unknown output(s) {unknown}; available {list(outputs)}")
    return {key: outputs[key] for key in requested}
