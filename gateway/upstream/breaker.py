"""One replica's circuit breaker: closed (in use), open (resting), half-open (on trial).

A replica that cannot be reached is ejected at once; one that fails otherwise (a 5xx, its
own timeout, an answer the contract forbids) after ``failures`` such calls in a row. An
ejected replica rests ``cooldown_s``, then gets one trial call (half-open): success puts
it back, failure ejects it again. A 503 ("loading or overloaded") pauses the replica for
as long as its ``Retry-After`` asks (at most ``cooldown_s``) without ejecting it.

The breaker is told each call's :class:`Verdict` and answers with the :class:`Change` it
made (:meth:`Breaker.describe` words it for the caller's log); it never reads a clock
itself (``now`` is ``time.monotonic()``, passed in).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

# Defaults of the breaker (the gateway passes BREAKER_FAILURES / BREAKER_COOLDOWN_S).
BREAKER_FAILURES = 3
BREAKER_COOLDOWN_S = 10.0


class Verdict(Enum):
    """What one call says about the replica that took it."""

    NONE = "none"  # nothing: the call was ours to blame, or the request's deadline ran out
    SUCCESS = "success"
    FAILURE = "failure"  # one more failed call in a row
    DOWN = "down"  # unreachable: ejected at once
    BUSY = "busy"  # a 503: paused for as long as it asks


class Change(Enum):
    """What the breaker did with a verdict."""

    NONE = "none"
    RECOVERED = "recovered"  # a trial call (or any call after an ejection) succeeded
    COUNTED = "counted"  # a failure in a row, not yet enough to eject
    PAUSED = "paused"  # a 503: out of the rotation for its Retry-After
    EJECTED = "ejected"


@dataclass(frozen=True)
class BreakerPolicy:
    failures: int = BREAKER_FAILURES  # failed calls in a row that eject a replica
    cooldown_s: float = BREAKER_COOLDOWN_S  # how long an ejected replica rests


@dataclass
class Breaker:
    policy: BreakerPolicy = field(default_factory=BreakerPolicy)
    failures: int = 0  # consecutive failed calls
    open_until: float = 0.0  # out of the rotation until then (monotonic seconds)
    tripped: bool = False  # ejected: the next call after the rest is a trial
    trial: bool = False  # a trial call is in flight (half-open): nobody else is sent

    def available(self, now: float) -> bool:
        """Not resting, and no trial call in flight."""
        return now >= self.open_until and not self.trial

    def ejected(self, now: float) -> bool:
        """Resting after an ejection (a 503's pause is not one)."""
        return self.tripped and now < self.open_until

    def state(self, now: float) -> str:
        if now < self.open_until:
            return "open"
        return "half-open" if self.tripped else "closed"

    def start_call(self) -> bool:
        """A call is sent; True when it is the trial call of an ejected replica."""
        if self.tripped:
            self.trial = True
        return self.tripped

    def release(self) -> None:
        """A call ended without a verdict on its trial (cancelled): the next call may try."""
        self.trial = False

    def record(self, verdict: Verdict, now: float, rest_s: float | None = None) -> Change:
        """Apply one call's verdict; ``rest_s`` is a 503's asked-for pause."""
        if verdict is Verdict.NONE:
            return Change.NONE
        if verdict is Verdict.SUCCESS:
            recovered = self.tripped
            self.failures, self.tripped, self.trial = 0, False, False
            return Change.RECOVERED if recovered else Change.NONE
        self.failures += 1
        was_trial, self.trial = self.trial, False
        if verdict is Verdict.DOWN or was_trial or self.failures >= self.policy.failures:
            self.tripped = True
            self.open_until = max(self.open_until, now + self.policy.cooldown_s)
            return Change.EJECTED
        if verdict is Verdict.BUSY and rest_s is not None:
            self.open_until = max(self.open_until, now + rest_s)
            return Change.PAUSED
        return Change.COUNTED

    def describe(self, change: Change, why: str, rest_s: float | None = None) -> str | None:
        """What ``change`` means, for the log line after the replica's name (None: nothing)."""
        if change is Change.RECOVERED:
            return " answered its trial call; back in use"
        if change is Change.EJECTED:
            return (f" ejected for {self.policy.cooldown_s:.3g} s after {self.failures} "
                    f"failed call(s) in a row ({why})")
        if change is Change.PAUSED:
            return f": {why}; paused for {rest_s:.3g} s"
        if change is Change.COUNTED:
            return f": {why} ({self.failures} in a row)"
        return None
