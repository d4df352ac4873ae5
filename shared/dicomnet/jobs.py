"""What the results delivery queue holds: jobs, their retry policy and their settlement.

A :class:`Job` is one submit's objects for one destination; a :class:`Settlement` joins
the jobs of one submit across destinations so that ``on_settled`` hears once per SOP
Instance UID, with the worst outcome (:data:`SETTLED_ORDER`). Plain data and arithmetic:
the queue, the sending and the metrics are :mod:`shared.dicomnet.delivery`'s.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from shared.dicomnet.destinations import Destination

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeliveryCounts:
    """Objects (an SR or a GSPS for one destination) by fate so far; ``queued`` is now."""

    delivered: int = 0
    retried: int = 0
    failed: int = 0
    queued: int = 0
    refused: int = 0


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff ``initial_s * 2**n`` (capped at ``max_s``, 80-100 % jitter),
    retried while the next attempt starts within ``budget_s`` of the submit."""

    initial_s: float = 1.0
    max_s: float = 60.0
    budget_s: float = 600.0

    def delay(self, attempt: int) -> float:
        return min(self.initial_s * 2 ** attempt, self.max_s) * random.uniform(0.8, 1.0)


# Outcomes for ``on_settled``, best first; across destinations the worst one wins.
# ``shutdown`` is worst: the object may still succeed, so a caller that keeps it on disk
# must keep it (even if another destination has it: a resend of the same SOP Instance
# UID is a duplicate a PACS ignores or overwrites). ``budget`` beats ``rejected``: both
# are given up, and the transient one is the likelier to be worth a manual retry.
SETTLED_ORDER = ("delivered", "rejected", "budget", "shutdown")

OnSettled = Callable[[str, str], None]


class Settlement:
    """One submit's objects across its destinations: tells ``on_settled`` once per UID."""

    def __init__(self, uids: list[str], destinations: int, on_settled: OnSettled) -> None:
        self.left = dict.fromkeys(uids, destinations)
        self.worst = dict.fromkeys(uids, 0)
        self.on_settled = on_settled

    def settle(self, uid: str, outcome: str) -> None:
        if uid not in self.left:
            return
        self.worst[uid] = max(self.worst[uid], SETTLED_ORDER.index(outcome))
        self.left[uid] -= 1
        if self.left[uid] > 0:
            return
        del self.left[uid]
        try:
            self.on_settled(uid, SETTLED_ORDER[self.worst.pop(uid)])
        except Exception:  # noqa: BLE001 - the caller's bug must not stop delivery
            log.exception("on_settled raised for result %s", uid)


@dataclass
class Job:
    destination: Destination
    study_uid: str
    items: dict[str, bytes]  # SOP Instance UID -> Part 10 bytes, still to deliver
    submitted: float = field(default_factory=time.monotonic)
    attempt: int = 0
    settlement: Settlement | None = None
    trace: dict[str, str] = field(default_factory=dict)  # the submitter's span (W3C headers)

    def settled(self, uid: str, outcome: str) -> None:
        if self.settlement is not None:
            self.settlement.settle(uid, outcome)
