"""Admission limits kept in the gateway's memory: token buckets and concurrency slots.

Per caller (API key id, or client address when keys are off). State is per gateway
process: with N replicas behind a load balancer a caller gets up to N times the rate,
which is acceptable for a research service and needs no shared store. Tables are
bounded (least recently seen callers are forgotten) so a scan of many addresses cannot
grow memory without limit.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass

MAX_TRACKED_CALLERS = 10_000


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBucketLimiter:
    """``per_minute`` requests on average, bursts of up to ``burst``."""

    def __init__(self, per_minute: float, burst: int) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def acquire(self, caller: str, now: float | None = None) -> float:
        """0 if admitted (one token spent), else the seconds until a token is free."""
        now = time.monotonic() if now is None else now
        bucket = self._buckets.pop(caller, None) or _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        self._buckets[caller] = bucket
        if len(self._buckets) > MAX_TRACKED_CALLERS:
            self._buckets.popitem(last=False)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate


def retry_after_header(seconds: float) -> str:
    """Retry-After wants whole seconds; round up so a client that obeys gets in."""
    return str(max(1, math.ceil(seconds)))


class ConcurrencyLimiter:
    """At most ``per_caller`` requests in flight per caller and ``total`` in all (0 = none).

    The two are held separately: the admission takes a caller's slot before the body and
    the gateway-wide one only once the body has arrived, so callers trickling bodies hold
    their own slots, never everyone's (``try_acquire`` takes both at once).
    """

    def __init__(self, per_caller: int, total: int) -> None:
        self.per_caller = per_caller
        self.total = total
        self.in_flight = 0
        self._by_caller: dict[str, int] = {}

    def try_acquire(self, caller: str) -> str | None:
        """None if admitted, else why not: ``"caller"`` or ``"total"``."""
        if self.total and self.in_flight >= self.total:
            return "total"
        if not self.try_acquire_caller(caller):
            return "caller"
        self.in_flight += 1
        return None

    def release(self, caller: str) -> None:
        self.release_caller(caller)
        self.release_total()

    def try_acquire_caller(self, caller: str) -> bool:
        held = self._by_caller.get(caller, 0)
        if self.per_caller and held >= self.per_caller:
            return False
        self._by_caller[caller] = held + 1
        return True

    def release_caller(self, caller: str) -> None:
        held = self._by_caller.get(caller, 0) - 1
        if held > 0:
            self._by_caller[caller] = held
        else:
            self._by_caller.pop(caller, None)

    def try_acquire_total(self) -> bool:
        if self.total and self.in_flight >= self.total:
            return False
        self.in_flight += 1
        return True

    def release_total(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)
