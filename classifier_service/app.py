"""ASGI entry point of the classifier service (``spine classifier``)."""

from __future__ import annotations

from fastapi import FastAPI

from classifier_service.model import ClassifierModel
from model_server.app import create_bundle_app
from shared.settings import ModelServerSettings


def create_app(settings: ModelServerSettings) -> FastAPI:
    return create_bundle_app(ClassifierModel, "Spine classifier service (OIP v2)", settings)
