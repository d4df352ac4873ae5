"""A connection that breaks before any answer (a stale keep-alive) is asked once more.

uvicorn closes an idle keep-alive connection after 5 s; a request sent on it at that
moment fails with no answer. That says nothing about the replica, so the gateway's
client asks the same replica again on a new connection instead of failing the upload
(with one replica there is no other to try) or ejecting it. The network here is the one
fake: it drops the first infer call's connection; the classifier behind it is real.
"""

from __future__ import annotations

import time

import httpx
import numpy as np

from gateway.upstream.client import ModelClient
from shared import contract
from shared.contract import ClassifierFacts
from tests.integration.stack import Stack
from tests.ops.conftest import INTERNAL_TOKEN


class DropsInferConnections(httpx.AsyncBaseTransport):
    """Passes requests to the real network, but breaks the first ``drops`` infer calls."""

    def __init__(self, drops: int) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.drops = drops
        self.infer_calls = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/infer"):
            self.infer_calls += 1
            if self.infer_calls <= self.drops:
                raise httpx.RemoteProtocolError(
                    "Server disconnected without sending a response.", request=request
                )
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def classifier_client(ops_stack: Stack, network: DropsInferConnections) -> ModelClient:
    return ModelClient(
        "classifier", contract.CLASSIFIER_MODEL, [ops_stack.classifier],
        httpx.AsyncClient(transport=network), 60.0, token=INTERNAL_TOKEN,
        facts_type=ClassifierFacts, output_specs=contract.CLASSIFIER_OUTPUTS,
    )


def image() -> dict[str, np.ndarray]:
    pixels = np.random.default_rng(5).integers(0, 256, (1, 1, 256, 192), dtype=np.uint8)
    return {contract.IMAGE.name: pixels}


async def test_a_broken_connection_is_retried_on_the_same_replica(ops_stack: Stack) -> None:
    network = DropsInferConnections(drops=1)
    client = classifier_client(ops_stack, network)
    try:
        result = await client.infer(image(), contract.names(contract.CLASSIFIER_OUTPUTS), "r1")
    finally:
        await client.http.aclose()
    assert network.infer_calls == 2  # the broken call, then the same replica again
    assert contract.ABNORMAL.name in result.outputs
    assert client.replicas[0].available(time.monotonic())  # not ejected for a stale one


async def test_a_connection_that_breaks_twice_fails_as_unreachable(ops_stack: Stack) -> None:
    network = DropsInferConnections(drops=2)
    client = classifier_client(ops_stack, network)
    try:
        await client.infer(image(), contract.names(contract.CLASSIFIER_OUTPUTS), "r2")
    except Exception as exc:  # noqa: BLE001 - the type is what is checked
        error = exc
    else:
        raise AssertionError("a replica whose connections keep breaking must fail the call")
    finally:
        await client.http.aclose()
    assert network.infer_calls == 2  # asked once more, not for ever
    assert "cannot reach a replica (RemoteProtocolError)" in str(error)
