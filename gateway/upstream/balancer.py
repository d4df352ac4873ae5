"""Least-outstanding balancing: a call goes to the replica with the fewest calls in flight.

A replica whose rest is over after an ejection goes first: its trial call decides whether
it is back (:mod:`gateway.upstream.breaker`). The balancer counts the calls in flight
itself (:meth:`Balancer.sending`), by URL, so the count outlives a re-resolved replica list.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic

from gateway.upstream.facts import F
from gateway.upstream.replica import Replica

log = logging.getLogger(__name__)


@dataclass
class Balancer(Generic[F]):
    service: str
    outstanding: Counter[str] = field(default_factory=Counter)  # url -> calls in flight

    def pick(
        self, replicas: Sequence[Replica[F]], now: float, exclude: Collection[str] = ()
    ) -> Replica[F] | None:
        """A replica whose rest is over (its trial call) first, else the least busy one
        that is available and usable; None when every replica rests, is on trial or is
        out of rotation. The pick starts the trial of an ejected replica."""
        candidates = [
            r for r in replicas if r.url not in exclude and r.available(now) and r.usable
        ]
        chosen = min(
            candidates, key=lambda r: (not r.breaker.tripped, self.outstanding[r.url]),
            default=None,
        )
        if chosen is not None and chosen.breaker.start_call():
            log.info("%s replica %s: trial call after its rest", self.service, chosen.url)
        return chosen

    @contextmanager
    def sending(self, replica: Replica[F]) -> Iterator[None]:
        """Counts one call in flight to ``replica`` while the block runs."""
        self.outstanding[replica.url] += 1
        try:
            yield
        finally:
            self.outstanding[replica.url] -= 1
            if not self.outstanding[replica.url]:
                del self.outstanding[replica.url]
