"""The gateway's timers (gateway.runtime): ``dns+`` names resolved before the first
readiness poll and then on their own timer, never by a request; the replicas in rotation
as a metric."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from prometheus_client import generate_latest

import gateway.runtime as runtime
from gateway.runtime import Gateway
from shared import contract
from shared.settings import GatewaySettings
from tests.ops.standin import StandIn, standin
from tests.unit.test_model_client import count_lookups


@pytest.fixture
def replicas() -> Iterator[tuple[StandIn, StandIn]]:
    with standin(contract.CLASSIFIER_MODEL) as classifier, standin(
        contract.DETECTOR_MODEL
    ) as detector:
        yield classifier, detector


async def test_dns_names_are_resolved_at_start_then_on_a_timer_and_replicas_counted(
    replicas: tuple[StandIn, StandIn], monkeypatch: pytest.MonkeyPatch
) -> None:
    classifier, detector = replicas
    monkeypatch.setattr(runtime, "DNS_REFRESH_SECONDS", 0.05)
    settings = GatewaySettings(
        classifier_urls=[f"dns+http://localhost:{classifier.port}"],
        detector_urls=[detector.url], dicom_isolate_decoders=False, readiness_interval_s=60,
    )
    gateway = Gateway.create(settings)
    client = gateway.pipeline.classifier
    lookups = count_lookups(client.discovery)
    try:
        await gateway.start()
        url = f"http://127.0.0.1:{classifier.port}"
        assert client.cached_readiness(60.0)[url] is True  # resolved before the first poll
        for _ in range(100):  # the poll runs every 60 s: only the DNS timer resolves again
            if len(lookups) >= 3:
                break
            await asyncio.sleep(0.05)
        assert len(lookups) >= 3
        scraped = generate_latest(gateway.metrics.registry).decode()
        assert 'spine_upstream_replicas{service="classifier",state="ready"} 1.0' in scraped
        assert 'spine_upstream_replicas{service="detector",state="ready"} 1.0' in scraped
    finally:
        await gateway.close()
