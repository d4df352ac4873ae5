"""One replica of a model service: its address, its breaker and what is known of its facts.

Each concern keeps its own state in its own object (:class:`~gateway.upstream.breaker.Breaker`,
:class:`~gateway.upstream.facts.ReplicaFacts`); the replica only puts them side by side,
so the client can ask the two questions every call needs: may it be sent a call now
(:meth:`Replica.available`), and can its answers be read (:attr:`Replica.usable`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic

from gateway.upstream.breaker import Breaker
from gateway.upstream.facts import F, ReplicaFacts


@dataclass(eq=False)  # one object per replica: compared by identity
class Replica(Generic[F]):
    url: str
    breaker: Breaker = field(default_factory=Breaker)
    bundle: ReplicaFacts[F] = field(default_factory=ReplicaFacts)

    def available(self, now: float) -> bool:
        """Its breaker lets a call through (not resting, no trial call in flight)."""
        return self.breaker.available(now)

    @property
    def usable(self) -> bool:
        """Its facts are read, fresh and agreed: its answers can be read."""
        return self.bundle.usable

    @property
    def facts(self) -> F | None:
        """Its bundle facts, if read (usable or not)."""
        return self.bundle.facts
