"""What the routes of one model server share: the model repository, the batcher, metrics
and limits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import Request

from model_server.batching import DynamicBatcher
from model_server.errors import (
    ModelNotReadyError,
    QueueFullError,
    RequestTooLargeError,
    UnknownModelError,
)
from model_server.metrics import ModelMetrics
from model_server.repository import Job, ModelRepository
from shared import contract
from shared.bodies import BodyRefusedError, read_capped
from shared.settings import ModelServerSettings

# MODEL_MAX_BODY_BYTES by default: N images of 4096 x 4096 UINT8 (binary tensor data)
# plus room for the JSON header.
DEFAULT_IMAGE_BYTES = 4096 * 4096
BODY_ENVELOPE_BYTES = 1024 * 1024

# Images carry the model their request leased (a swap drains the old one meanwhile).
Batcher = DynamicBatcher[Job, dict[str, np.ndarray]]


@dataclass(frozen=True)
class BodyLimits:
    """What one infer request may cost before a byte of it reaches the model."""

    max_images: int = 8
    max_bytes: int = 8 * DEFAULT_IMAGE_BYTES + BODY_ENVELOPE_BYTES
    timeout_s: float = 30.0
    idle_timeout_s: float = 10.0

    @classmethod
    def from_settings(cls, settings: ModelServerSettings) -> BodyLimits:
        images = settings.model_max_images_per_request or settings.max_batch_size
        return cls(
            max_images=images,
            max_bytes=settings.model_max_body_bytes
            or images * DEFAULT_IMAGE_BYTES + BODY_ENVELOPE_BYTES,
            timeout_s=settings.model_body_timeout_s,
            idle_timeout_s=settings.http_body_idle_timeout_s,
        )


@dataclass
class Served:
    """What the routes share: the model repository, the batcher and metrics, the limits."""

    title: str
    repository: ModelRepository
    batcher: Batcher
    metrics: ModelMetrics
    request_timeout_s: float
    limits: BodyLimits = BodyLimits()

    def check_name(self, name: str) -> None:
        if name != self.repository.name:
            raise UnknownModelError(
                f"unknown model {name!r}; this server serves {self.repository.name!r}"
            )

    def admit(self) -> None:
        """Refuse before the body is read: the queue already full (an infer has leased a
        ready model from the repository first)."""
        if self.batcher.queue_depth >= self.batcher.max_queue_size:
            raise QueueFullError("inference queue is full")

    def admit_images(self, count: int) -> None:
        """Refuse a request over the batch limit, or one the queue has no room for."""
        if count > self.limits.max_images:
            raise RequestTooLargeError(
                f"{count} images in one request; the limit is {self.limits.max_images} "
                "(MODEL_MAX_IMAGES_PER_REQUEST)"
            )
        if self.batcher.queue_depth + count > self.batcher.max_queue_size:
            raise QueueFullError("inference queue is full")

    def model_config(self) -> dict[str, Any]:
        """Triton's JSON model configuration of the loaded model: its tensors, batching
        limits and the bundle facts as ``parameters`` (what the gateway reads)."""
        model = self.repository.current()
        if not model.ready:
            raise ModelNotReadyError(f"model {model.name} is not ready")
        metadata = model.metadata()
        return contract.model_configuration(
            model.name,
            inputs=metadata.inputs,
            outputs=metadata.outputs,
            parameters=model.config_parameters(),
            max_batch_size=self.batcher.max_batch_size,
            max_queue_delay_us=round(self.batcher.max_delay * 1e6),
            instance_kind=model.instance_kind(),
            platform=metadata.platform,
        )

    async def read_body(self, request: Request) -> bytes:
        """The body under MODEL_MAX_BODY_BYTES and MODEL_BODY_TIMEOUT_S, read chunk by chunk."""
        try:
            return await read_capped(
                request.stream(), request.headers.get("content-length"),
                limit=self.limits.max_bytes, setting="MODEL_MAX_BODY_BYTES",
                idle_timeout_s=self.limits.idle_timeout_s, total_timeout_s=self.limits.timeout_s,
            )
        except BodyRefusedError as exc:
            raise RequestTooLargeError(exc.message, status_code=exc.status_code) from exc


def served_of(request: Request) -> Served:
    """The :class:`Served` of the app that received ``request``."""
    served: Served = request.app.state.served
    return served
