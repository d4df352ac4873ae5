"""The model state the alert rules read from a model service (model_server.metrics):
the model repository's, which counts failed loads at start-up and in swaps."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import generate_latest

from model_server.errors import LoadFailedError
from model_server.lifecycle import BatchedModel
from model_server.metrics import ModelMetrics
from model_server.repository import ModelRepository
from shared import oip


class Loads(BatchedModel):
    """A model whose load fails or succeeds, as the test says; nothing else is served."""

    name = "spine-test"

    def __init__(self, error: str | None) -> None:
        super().__init__()
        self.error = error

    def load(self) -> None:
        if self.error is not None:
            raise RuntimeError(self.error)

    def metadata(self) -> oip.ModelMetadata:  # never served here
        raise NotImplementedError

    def predict_batch(self, images: list[np.ndarray]) -> Sequence[dict[str, np.ndarray]]:
        raise NotImplementedError

    def merge_outputs(self, per_image: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        raise NotImplementedError


def scrape(repository: ModelRepository) -> str:
    metrics = ModelMetrics(repository.name)
    metrics.watch_model(repository)
    return generate_latest(metrics.registry).decode()


def started(first: BatchedModel, builds: BatchedModel | None = None) -> ModelRepository:
    """The repository a model service makes around ``first``, after its start-up load;
    a swap builds ``builds``."""
    repository = ModelRepository(first.name, lambda _dir: builds or Loads(None), 5.0, first=first)
    asyncio.run(repository.start())
    return repository


def test_a_failed_load_is_seen_at_the_next_scrape() -> None:
    model = Loads("sha256 mismatch")
    assert 'spine_model_ready{model="spine-test"} 0.0' in scrape(
        ModelRepository(model.name, Loads, 5.0, first=model)
    )  # still loading
    text = scrape(started(model))
    assert 'spine_model_ready{model="spine-test"} 0.0' in text
    assert 'spine_model_load_failures_total{model="spine-test"} 1.0' in text
    assert model.load_error == "sha256 mismatch"


def test_a_loaded_model_is_ready_with_no_failure() -> None:
    text = scrape(started(Loads(None)))
    assert 'spine_model_ready{model="spine-test"} 1.0' in text
    assert 'spine_model_load_failures_total{model="spine-test"} 0.0' in text


def test_a_failed_swap_is_counted_and_the_old_bundle_stays_ready() -> None:
    repository = started(Loads(None), builds=Loads("onnx check failed"))
    with pytest.raises(LoadFailedError):
        asyncio.run(repository.load(Path("/bundles/next")))
    text = scrape(repository)
    assert 'spine_model_ready{model="spine-test"} 1.0' in text
    assert 'spine_model_load_failures_total{model="spine-test"} 1.0' in text
