"""ASGI entry point of the detector service (``spine detector``)."""

from __future__ import annotations

from fastapi import FastAPI

from detector_service.model import DetectorModel
from shared.model_server import create_model_app
from shared.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    if settings.model_dir is None:
        raise RuntimeError("MODEL_DIR is not set (the `spine` CLI sets it to the demo bundle)")
    model = DetectorModel(settings.model_dir, settings.model_device, settings.torch_threads)
    return create_model_app(
        model,
        title="Spine detector service (OIP v2)",
        max_batch_size=settings.max_batch_size,
        max_delay_ms=settings.max_delay_ms,
        max_queue_size=settings.max_queue_size,
    )
