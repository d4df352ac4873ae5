"""ASGI entry point of the detector service (``spine detector``)."""

from __future__ import annotations

from fastapi import FastAPI

from detector_service.model import DetectorModel
from model_server.app import create_bundle_app
from shared.paths import prepare_ultralytics_env
from shared.settings import ModelServerSettings


def create_app(settings: ModelServerSettings) -> FastAPI:
    """The detector's OIP app; Ultralytics' environment is set first (it loads the model)."""
    prepare_ultralytics_env(settings)
    return create_bundle_app(DetectorModel, "Spine detector service (OIP v2)", settings)
