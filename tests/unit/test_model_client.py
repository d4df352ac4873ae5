"""The model client composed (gateway.upstream.client), against replicas on real HTTP.

The replicas are stand-ins (``tests/ops/standin.py``): real OIP over loopback, each
misbehaving in one chosen way. Each test watches the one place every attempt's outcome is
applied: the metric observer, the breaker of each replica, the facts marked stale.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import httpx
import numpy as np
import pytest

from gateway.upstream.breaker import BREAKER_COOLDOWN_S
from gateway.upstream.checks import check_classifier_answer
from gateway.upstream.client import ModelClient
from gateway.upstream.discovery import Discovery
from gateway.upstream.errors import (
    UpstreamBadGatewayError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from gateway.upstream.facts import ReadFacts
from shared import contract
from shared.contract import ClassifierFacts
from tests.ops.standin import CLASSIFIER_FACTS, StandIn, standin

OUTPUTS = contract.names(contract.CLASSIFIER_OUTPUTS)


@pytest.fixture(scope="module")
def first() -> Iterator[StandIn]:
    with standin(contract.CLASSIFIER_MODEL) as replica:
        yield replica


@pytest.fixture(scope="module")
def second() -> Iterator[StandIn]:
    with standin(contract.CLASSIFIER_MODEL) as replica:
        yield replica


@pytest.fixture(autouse=True)
def _well_behaved(first: StandIn, second: StandIn) -> None:
    for replica in (first, second):
        replica.mode, replica.config_mode, replica.calls, replica.config_reads = "ok", "ok", 0, 0


class Clock:
    """The client's monotonic clock, moved by the test (rests and pauses without sleeping)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    perf_counter = staticmethod(time.perf_counter)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr("gateway.upstream.client.time", clock)
    return clock


class Attempts(list[str]):
    """The outcomes the client reported, in order (what the gateway's metrics count)."""

    def __call__(self, service: str, outcome: str, seconds: float) -> None:
        assert service == "classifier" and seconds >= 0
        self.append(outcome)


class Ejections(list[str]):
    """The services whose breaker ejected a replica, once per ejection."""

    def __call__(self, service: str) -> None:
        self.append(service)


@asynccontextmanager
async def client(
    urls: list[str], attempts: Attempts, ejections: Ejections | None = None,
    timeout_s: float = 10.0, **options: float,
) -> AsyncIterator[ModelClient[ClassifierFacts]]:
    async with httpx.AsyncClient() as http:
        yield ModelClient(
            "classifier", contract.CLASSIFIER_MODEL, urls, http, timeout_s, observe=attempts,
            facts_type=ClassifierFacts, output_specs=contract.CLASSIFIER_OUTPUTS,
            check=check_classifier_answer, on_eject=ejections,
            **options,  # type: ignore[arg-type]
        )


def count_lookups(discovery: Discovery) -> list[str]:
    """The names ``discovery`` resolves from now on, in order (the resolver unchanged)."""
    lookups: list[str] = []
    resolve = discovery.resolve

    async def counted(host: str, port: int) -> list[str]:
        lookups.append(host)
        return await resolve(host, port)

    discovery.resolve = counted
    return lookups


def image() -> dict[str, np.ndarray]:
    pixels = np.random.default_rng(3).integers(0, 256, (1, 1, 64, 48), dtype=np.uint8)
    return {contract.IMAGE.name: pixels}


async def test_a_5xx_is_retried_on_the_other_replica_and_counted_against_the_first(
    first: StandIn, second: StandIn
) -> None:
    attempts = Attempts()
    async with client([first.url, second.url], attempts) as models:
        first.mode = "500"
        result = await models.infer(image(), OUTPUTS, "r1")
        assert result.replica == second.url and result.facts == first.facts
        assert attempts == ["error", "ok"]
        assert [r.breaker.failures for r in models.replicas] == [1, 0]
        assert (first.calls, second.calls) == (1, 1)


async def test_a_failed_trial_call_ejects_the_replica_again_at_once(
    second: StandIn, clock: Clock
) -> None:
    """Down at first (ejected with 1 failure of 3), back after its rest with 500s: its
    one failed trial call ejects it again, and a good one puts it back."""
    attempts = Attempts()
    late = StandIn(contract.CLASSIFIER_MODEL)  # not started: its port refuses connections
    try:
        async with client([late.url, second.url], attempts) as models:
            await models.infer(image(), OUTPUTS, "r1")  # its facts could not be read: down
            resting = models.replicas[0]
            assert resting.breaker.state(clock.now) == "open" and resting.breaker.failures == 1
            late.start()
            late.mode = "500"
            clock.now += BREAKER_COOLDOWN_S
            await models.infer(image(), OUTPUTS, "trial")  # facts read, trial fails, retried
            assert late.calls == 1 and resting.breaker.state(clock.now) == "open"
            late.mode = "ok"
            clock.now += BREAKER_COOLDOWN_S
            result = await models.infer(image(), OUTPUTS, "back")
            assert result.replica == late.url and resting.breaker.state(clock.now) == "closed"
            assert attempts == ["ok", "error", "ok", "ok"]
    finally:
        if late._thread.is_alive():
            late.stop()


async def test_each_ejection_is_counted_once_and_the_replicas_are_counted_by_state(
    first: StandIn, second: StandIn, clock: Clock
) -> None:
    """A failure below the breaker's count is no ejection; the one that reaches it is, and
    so is a failed trial call; the trial that succeeds puts the replica back in the count."""
    attempts, ejections = Attempts(), Ejections()
    async with client([first.url, second.url], attempts, ejections, breaker_failures=2) as models:
        await models.poll_readiness(2.0)
        assert models.replica_states(60.0) == {"ready": 2, "ejected": 0, "not_ready": 0}
        first.mode = "500"
        await models.infer(image(), OUTPUTS, "r1")  # 1 failure of 2, retried
        assert ejections == []
        await models.infer(image(), OUTPUTS, "r2")  # 2 in a row: ejected
        assert ejections == ["classifier"]
        assert models.replica_states(60.0) == {"ready": 1, "ejected": 1, "not_ready": 0}
        clock.now += BREAKER_COOLDOWN_S
        await models.infer(image(), OUTPUTS, "trial")  # the trial fails: ejected again
        assert ejections == ["classifier", "classifier"] and first.calls == 3
        first.mode = "ok"
        clock.now += BREAKER_COOLDOWN_S
        await models.infer(image(), OUTPUTS, "back")
        await models.poll_readiness(2.0)
        assert ejections == ["classifier", "classifier"]
        assert models.replica_states(60.0) == {"ready": 2, "ejected": 0, "not_ready": 0}
        assert models.replica_states(-1.0) == {"ready": 0, "ejected": 0, "not_ready": 2}  # stale


async def test_a_replica_unreachable_while_its_facts_are_read_is_an_ejection(
    second: StandIn
) -> None:
    attempts, ejections = Attempts(), Ejections()
    down = StandIn(contract.CLASSIFIER_MODEL)  # not started: its port refuses connections
    async with client([down.url, second.url], attempts, ejections) as models:
        await models.infer(image(), OUTPUTS, "r")
        assert ejections == ["classifier"] and attempts == ["ok"]
        assert models.replica_states(60.0)["ejected"] == 1


async def test_a_refusal_of_the_request_itself_is_not_retried_nor_held_against_the_replica(
    first: StandIn, second: StandIn
) -> None:
    attempts = Attempts()
    async with client([first.url, second.url], attempts) as models:
        first.mode = second.mode = "400"
        with pytest.raises(UpstreamBadGatewayError, match="HTTP 400"):
            await models.infer(image(), OUTPUTS, "r")
        assert attempts == ["error"] and first.calls + second.calls == 1
        assert all(r.breaker.failures == 0 for r in models.replicas)


async def test_a_503_pauses_the_replica_and_its_facts_are_read_again_before_its_next_use(
    first: StandIn, second: StandIn, clock: Clock
) -> None:
    attempts = Attempts()
    async with client([first.url, second.url], attempts) as models:
        first.mode = "503"
        result = await models.infer(image(), OUTPUTS, "r")
        assert result.replica == second.url and attempts == ["unavailable", "ok"]
        busy = models.replicas[0]
        assert busy.bundle.stale and not busy.breaker.tripped
        assert not busy.available(clock.now + 0.9) and busy.available(clock.now + 1.0)  # Retry-After
        first.mode, reads = "ok", first.config_reads
        clock.now += 1.0
        await models.infer(image(), OUTPUTS, "r2")
        assert first.config_reads == reads + 1 and busy.usable


async def test_with_every_replica_ejected_the_call_fails_at_once_with_retry_advice(
    first: StandIn, clock: Clock
) -> None:
    attempts = Attempts()
    breaker = {"breaker_failures": 1, "breaker_cooldown_s": 30.0}
    async with client([first.url], attempts, **breaker) as models:
        first.mode = "500"
        with pytest.raises(UpstreamBadGatewayError):
            await models.infer(image(), OUTPUTS, "r1")
        with pytest.raises(UpstreamUnavailableError, match="every replica is ejected") as raised:
            await models.infer(image(), OUTPUTS, "r2")
        assert raised.value.retry_after_s == 30.0  # when the rest is over
        assert attempts == ["error", "ejected"] and first.calls == 1


async def test_a_passed_deadline_is_a_timeout_without_a_call(
    first: StandIn
) -> None:
    attempts = Attempts()
    async with client([first.url], attempts) as models:
        with pytest.raises(UpstreamTimeoutError, match="deadline has passed"):
            await models.infer(image(), OUTPUTS, "r", deadline=time.monotonic() + 0.005)
        assert attempts == ["timeout"] and first.calls == 0


async def test_unreadable_facts_keep_a_replica_out_and_say_why(
    first: StandIn
) -> None:
    attempts = Attempts()
    async with client([first.url], attempts) as models:
        first.config_mode = "missing"
        with pytest.raises(UpstreamUnavailableError, match="replica 1: GET .* answered HTTP 404"):
            await models.infer(image(), OUTPUTS, "r")
        assert attempts == ["ejected"] and first.calls == 0
        assert models.cached_readiness(60.0) == {first.url: False}  # never polled yet
        assert await models.poll_readiness(2.0) == {first.url: True}  # ready, but out of rotation
        assert models.cached_readiness(60.0) == {first.url: False}


async def test_an_answer_of_an_unlisted_model_version_is_not_read_with_old_facts(
    first: StandIn
) -> None:
    attempts = Attempts()
    async with client([first.url], attempts) as models:
        assert (await models.infer(image(), OUTPUTS, "r1")).facts == first.facts
        first.mode = "version"
        with pytest.raises(UpstreamUnavailableError, match="bundle changed"):
            await models.infer(image(), OUTPUTS, "r2")
        # Asked again once (its bundle may have been swapped under the call), facts re-read
        # each time; the version is never listed, so no answer is read.
        assert attempts == ["ok", "unavailable", "unavailable"] and first.config_reads == 3
        assert models.replicas[0].breaker.failures == 0  # not the replica's fault


async def test_a_call_in_flight_during_a_bundle_swap_is_asked_again_not_failed(
    first: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One replica swapped to another bundle: a call sent before the swap answers from the
    old bundle after the gateway has read the new facts. It is not read with either facts'
    guess: the replica is asked again, and the answer of the new bundle is used."""
    old = first.facts
    new = type(old).model_validate({**old.model_dump(), "threshold": 0.6})
    monkeypatch.setattr(first, "facts", old)
    attempts = Attempts()
    async with client([first.url], attempts) as models:
        assert (await models.infer(image(), OUTPUTS, "r1")).facts == old
        first.facts = new  # swapped: the next answer names the new version
        assert (await models.infer(image(), OUTPUTS, "r2")).facts == new
        first.straggler_version = old.version  # the call sent before the swap comes back
        result = await models.infer(image(), OUTPUTS, "r3")
        assert result.facts == new and result.facts.threshold == 0.6
        assert attempts == ["ok", "ok", "unavailable", "ok"]
        assert models.replicas[0].usable and models.replicas[0].breaker.failures == 0


async def test_a_dns_name_stands_for_every_address_resolved_off_the_request_path(
    first: StandIn
) -> None:
    attempts = Attempts()
    port = httpx.URL(first.url).port
    async with client([f"dns+http://localhost:{port}"], attempts) as models:
        assert models.replicas == []  # resolved by the gateway's timer, not by a request
        lookups = count_lookups(models.discovery)
        assert await models.discover() is True
        assert await models.discover() is False  # the same addresses: nothing changed
        ready = await models.poll_readiness(2.0)
        assert ready[f"http://127.0.0.1:{port}"] is True
        result = await models.infer(image(), OUTPUTS, "r")
        assert result.replica == f"http://127.0.0.1:{port}" and attempts == ["ok"]
        assert lookups == ["localhost", "localhost"]  # the two discover() calls, no more
        assert models.agreed_facts() == first.facts and models.problems() == {}


async def test_an_attempt_without_an_answer_in_its_bound_is_retried_on_another_replica(
    first: StandIn, second: StandIn
) -> None:
    """A replica that takes the call and never answers (a cut link, a hung process) costs
    the call one attempt bound, then the other replica answers, well before the service's
    timeout; the silent one is counted against (its own timeout, not the deadline)."""
    attempts = Attempts()
    async with client([first.url, second.url], attempts, timeout_s=30.0,
                      attempt_timeout_s=0.5) as models:
        first.mode = "hang"
        models.balancer.outstanding[second.url] = 1  # so the first pick is the hanging one
        started = time.monotonic()
        result = await models.infer(image(), OUTPUTS, "r", deadline=started + 30.0)
        took = time.monotonic() - started
        assert result.replica == second.url and attempts == ["timeout", "ok"]
        assert 0.5 <= took < 30.0
        assert [r.breaker.failures for r in models.replicas] == [1, 0]
        assert (first.calls, second.calls) == (1, 1)


async def test_the_last_replica_to_ask_gets_all_the_time_left(first: StandIn) -> None:
    """With nobody else to ask, the attempt bound does not cut a slow answer short."""
    attempts = Attempts()
    async with client([first.url], attempts, timeout_s=0.8, attempt_timeout_s=0.2) as models:
        first.mode = "hang"
        started = time.monotonic()
        with pytest.raises(UpstreamTimeoutError, match=r"no answer within 0\.[5-8]\d* s"):
            await models.infer(image(), OUTPUTS, "r")  # the facts read took a little of it
        assert time.monotonic() - started >= 0.8 and attempts == ["timeout"]


async def test_a_timeout_at_the_requests_deadline_is_not_retried_nor_held_against_anyone(
    first: StandIn, second: StandIn
) -> None:
    attempts = Attempts()
    async with client([first.url, second.url], attempts, timeout_s=30.0,
                      attempt_timeout_s=5.0) as models:
        first.mode = second.mode = "hang"
        with pytest.raises(UpstreamTimeoutError):
            await models.infer(image(), OUTPUTS, "r", deadline=time.monotonic() + 0.4)
        assert attempts == ["timeout"] and first.calls + second.calls == 1
        assert all(r.breaker.failures == 0 for r in models.replicas)


async def test_a_replica_the_poll_found_down_is_left_to_the_poller(
    first: StandIn, second: StandIn
) -> None:
    """Its facts are not read on the request path (an upload never waits on a replica that
    does not answer); the poll that finds it ready again reads them and it is back."""
    attempts = Attempts()
    async with client([first.url, second.url], attempts) as models:
        await models.infer(image(), OUTPUTS, "r1")
        first.ready_hangs = True
        assert await models.poll_readiness(0.3) == {first.url: False, second.url: True}
        reads = first.config_reads
        assert models.replica_states(10.0) == {"ready": 1, "ejected": 0, "not_ready": 1}
        for n in range(3):
            assert (await models.infer(image(), OUTPUTS, f"r{n}")).replica == second.url
        assert first.config_reads == reads
        first.ready_hangs = False
        await models.poll_readiness(2.0)
        assert first.config_reads == reads + 1
        assert models.replica_states(10.0) == {"ready": 2, "ejected": 0, "not_ready": 0}


async def test_a_replica_that_leaves_dns_no_longer_takes_part_in_the_agreement() -> None:
    """The last replica on the old bundle leaves: the new bundle's replica is agreed at
    once, without waiting for the next readiness poll."""
    names = {"pool": ["10.0.0.1", "10.0.0.2"]}

    async def resolve(host: str, port: int) -> list[str]:
        return names[host]

    async with client(["dns+http://pool:8001"], Attempts()) as models:
        models.discovery.resolve = resolve
        assert await models.discover()
        old, new = models.replicas
        moved = CLASSIFIER_FACTS.model_copy(update={"threshold": 0.4})
        for replica, facts in ((old, CLASSIFIER_FACTS), (new, moved)):
            replica.bundle.learned(ReadFacts(facts, frozenset({facts.version})))
            models.agreement.settle(models.replicas)
        assert old.usable and not new.usable  # the facts agreed first win
        names["pool"] = ["10.0.0.2"]
        assert await models.discover()
        assert models.replicas == [new] and new.usable
        assert models.agreed_facts() == moved
