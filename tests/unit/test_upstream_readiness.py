"""Readiness polled and cached (gateway.upstream.readiness)."""

from __future__ import annotations

import asyncio
import time

import httpx

from gateway.upstream.breaker import Breaker, Verdict
from gateway.upstream.readiness import ReadinessCache, count_states, probe_ready
from gateway.upstream.replica import Replica


def test_a_cached_answer_counts_only_for_replicas_in_rotation() -> None:
    cache = ReadinessCache()
    cache.record({"http://a": True, "http://b": True, "http://c": False}, now=100.0)
    view = cache.view(101.0, 5.0, ["http://a", "http://b", "http://c"], {"http://a", "http://c"})
    assert view == {"http://a": True, "http://b": False, "http://c": False}


def test_a_poll_older_than_its_maximum_age_knows_nothing() -> None:
    cache = ReadinessCache()
    assert cache.view(0.0, 5.0, ["http://a"], {"http://a"}) == {"http://a": False}  # never polled
    cache.record({"http://a": True}, now=100.0)
    assert cache.view(105.0, 5.0, ["http://a"], {"http://a"}) == {"http://a": True}
    assert cache.view(105.1, 5.0, ["http://a", "http://b"], {"http://a"}) == {
        "http://a": False, "http://b": False,
    }


def test_replicas_are_counted_ejected_before_ready_and_the_rest_not_ready() -> None:
    ejected, paused, ready, loading = (Replica(f"http://{n}", Breaker()) for n in "abcd")
    ejected.breaker.record(Verdict.DOWN, 100.0)
    paused.breaker.record(Verdict.BUSY, 100.0, rest_s=1.0)
    view = {"http://a": True, "http://b": False, "http://c": True, "http://d": False}
    replicas = [ejected, paused, ready, loading]
    assert count_states(replicas, view, 100.5) == {"ready": 1, "ejected": 1, "not_ready": 2}
    assert count_states([], {}, 0.0) == {"ready": 0, "ejected": 0, "not_ready": 0}


async def test_a_probe_is_ready_only_on_200_and_bounded_as_a_whole() -> None:
    seen: list[httpx.Request] = []

    async def replica(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        host = request.url.host
        if host == "hangs":
            await asyncio.sleep(30)
        if host == "down":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200 if host == "ready" else 503)

    async with httpx.AsyncClient(transport=httpx.MockTransport(replica)) as http:
        headers = {"Authorization": "Bearer t"}
        started = time.perf_counter()
        states = await asyncio.gather(*(
            probe_ready(http, f"http://{host}", "spine-classifier", headers, 0.3)
            for host in ("ready", "loading", "down", "hangs")
        ))
        elapsed = time.perf_counter() - started
    assert states == [True, False, False, False]
    assert elapsed < 5.0  # the hanging replica was given up on, not waited for
    assert seen[0].url.path == "/v2/models/spine-classifier/ready"
    assert seen[0].headers["Authorization"] == "Bearer t"


def test_a_poll_reports_only_the_replicas_whose_readiness_changed() -> None:
    cache = ReadinessCache()
    assert cache.changes({"a": True, "b": False}) == [("b", False)]  # first poll: the down
    cache.record({"a": True, "b": False}, 0.0)
    assert cache.changes({"a": False, "b": True}) == [("a", False), ("b", True)]
    assert cache.changes({"a": True, "b": False}) == []
