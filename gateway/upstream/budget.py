"""The time one model call has, and how much of it one attempt may take.

A call (every attempt at every replica together) ends at the service's timeout or the
request's deadline, whichever comes first. While another replica could still be asked,
one attempt may take at most the attempt bound (``UPSTREAM_ATTEMPT_TIMEOUT_S``, half the
service's timeout by default), so a replica that never answers (its link cut, a hung
process) leaves time for another to answer; the last attempt may take all that is left.
An attempt that runs out of its own bound was the replica's doing (it counts against it
and may be retried); one cut short by the request's deadline was not.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CallBudget:
    """When one call ends (``time.monotonic()`` times) and the bound of one attempt."""

    call_ends: float
    request_ends: float  # inf: no deadline from the request
    attempt_s: float

    @classmethod
    def start(
        cls, now: float, timeout_s: float, attempt_s: float, deadline: float | None
    ) -> CallBudget:
        request_ends = float("inf") if deadline is None else deadline
        return cls(now + timeout_s, request_ends, attempt_s)

    def left(self, now: float) -> float:
        """Seconds the call has left."""
        return min(self.call_ends, self.request_ends) - now

    def attempt(self, now: float, *, last: bool) -> tuple[float, bool]:
        """Seconds the next attempt may take (all that is left when it is the ``last``),
        and whether that bound is the attempt's own (not the request's deadline)."""
        left = self.left(now)
        budget = left if last else min(self.attempt_s, left)
        return budget, budget < self.request_ends - now
