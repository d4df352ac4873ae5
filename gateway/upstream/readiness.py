"""Readiness of each replica, polled in the background and answered from a cache.

``/readyz`` must answer in microseconds even while a replica hangs, so it never asks:
:meth:`gateway.upstream.client.ModelClient.poll_readiness` asks every replica at once
(``GET /v2/models/{name}/ready``, each bounded as a whole) from the gateway's poller
(:mod:`gateway.runtime`) and :class:`ReadinessCache` keeps the answer. A cached answer
counts only for a replica that is also in rotation (not resting, facts agreed), and a
cache older than its maximum age (the poller stopped) knows nothing: not ready.
:func:`count_states` sums it up per state for the metrics (``spine_upstream_replicas``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from gateway.upstream.replica import Replica

# Readiness older than this many poll intervals counts as unknown (not ready).
READINESS_STALE_INTERVALS = 3
# What count_states counts, in this order.
REPLICA_STATES = ("ready", "ejected", "not_ready")


async def probe_ready(
    http: httpx.AsyncClient, url: str, model: str, headers: Mapping[str, str], timeout_s: float
) -> bool:
    """Whether the replica at ``url`` says its model is ready, within ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s):  # the whole call, however it trickles
            response = await http.get(
                f"{url}/v2/models/{model}/ready", timeout=timeout_s, headers=dict(headers)
            )
    except (httpx.HTTPError, TimeoutError):
        return False
    return response.status_code == 200


@dataclass
class ReadinessCache:
    ready: dict[str, bool] = field(default_factory=dict)  # url -> ready, at the last poll
    polled_at: float = float("-inf")  # when (time.monotonic())

    def record(self, ready: Mapping[str, bool], now: float) -> None:
        self.ready, self.polled_at = dict(ready), now

    def changes(self, ready: Mapping[str, bool]) -> list[tuple[str, bool]]:
        """Replicas whose readiness a new poll (``ready``) changes, for the log: the first
        poll reports those not ready."""
        return [(url, is_ready) for url, is_ready in ready.items()
                if self.ready.get(url, True) != is_ready]

    def view(
        self, now: float, max_age_s: float, replicas: Collection[str], in_rotation: Collection[str]
    ) -> dict[str, bool]:
        """``url -> ready`` as last polled, for replicas ``in_rotation`` only; every one of
        ``replicas`` not ready when the poll is older than ``max_age_s``."""
        if now - self.polled_at > max_age_s:
            return dict.fromkeys(replicas, False)
        return {url: ready and url in in_rotation for url, ready in self.ready.items()}


def count_states(
    replicas: Iterable[Replica[Any]], ready: Mapping[str, bool], now: float
) -> dict[str, int]:
    """How many ``replicas`` are in each of :data:`REPLICA_STATES`: ejected (resting after
    its breaker tripped), else ready when ``ready`` (a :meth:`ReadinessCache.view`) says
    so, else not_ready (loading, unreachable, facts out of rotation, paused by a 503)."""
    counts = dict.fromkeys(REPLICA_STATES, 0)
    for replica in replicas:
        if replica.breaker.ejected(now):
            counts["ejected"] += 1
        else:
            counts["ready" if ready.get(replica.url) else "not_ready"] += 1
    return counts
