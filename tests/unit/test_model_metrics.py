"""The model state the alert rules read from a model service (model_server.metrics)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from prometheus_client import generate_latest

from model_server.lifecycle import BatchedModel
from model_server.metrics import ModelMetrics
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


def scrape(model: BatchedModel) -> str:
    metrics = ModelMetrics(model.name)
    metrics.watch_model(model)
    return generate_latest(metrics.registry).decode()


def test_a_failed_load_is_seen_at_the_next_scrape() -> None:
    model = Loads("sha256 mismatch")
    assert 'spine_model_ready{model="spine-test"} 0.0' in scrape(model)  # still loading
    model.load_in_background().join()
    text = scrape(model)
    assert 'spine_model_ready{model="spine-test"} 0.0' in text
    assert 'spine_model_load_failures_total{model="spine-test"} 1.0' in text
    assert model.load_error == "sha256 mismatch"


def test_a_loaded_model_is_ready_with_no_failure() -> None:
    model = Loads(None)
    model.load_in_background().join()
    text = scrape(model)
    assert 'spine_model_ready{model="spine-test"} 1.0' in text
    assert 'spine_model_load_failures_total{model="spine-test"} 0.0' in text
