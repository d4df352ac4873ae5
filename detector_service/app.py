"""ASGI entry point of the detector service (``spine detector``)."""

from __future__ import annotations

from fastapi import FastAPI

from detector_service.model import DetectorModel
from model_server.app import create_bundle_app
from shared.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    return create_bundle_app(DetectorModel, "Spine detector service (OIP v2)", settings)
