"""Do the replicas of one model report the same bundle facts? Which are in rotation?

The replicas of one model must report the same facts, apart from how each serves them
(``contract.SERVING_FACTS``: device, backends). The *agreed* facts are the ones all
replicas last agreed on; while a replica still reports them, one that reports others is
out of rotation. When none reports them any more and the rest agree, theirs become the
agreed facts (a rollout to a new bundle completes when its last old replica is gone).
Replicas that disagree with no agreed facts left are all out of rotation. Only replicas
with fresh facts take part (:class:`~gateway.upstream.facts.ReplicaFacts`): the others
are out of rotation anyway.

:class:`FactsAgreement` reads facts (one reader at a time) and settles the agreement
after every read. Refusal texts name replicas by position
("replica 2"), since clients read them (the upload answer, ``/readyz``); the URL-bearing
detail goes to the log and the operators' ``/health``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic

from gateway.upstream.facts import F, FactsError, FactsUnreachableError, ReadFacts
from gateway.upstream.replica import Replica
from shared import contract

log = logging.getLogger(__name__)

# Facts not quoted in a refusal clients read (paths and hashes are for operators).
PRIVATE_FACTS = frozenset({"checkpoints"})
MAX_DIFFERENCES = 3
MAX_VALUE_CHARS = 60

# Reads the facts of the replica at a URL (FactsError says why not).
FactsReader = Callable[[str], Awaitable[ReadFacts[F]]]
# Told of a replica that could not be reached while its facts were read, and why.
Unreachable = Callable[[Replica[F], str], None]


def _key(facts: contract.ServedFacts) -> str:
    return json.dumps(facts.identity(), sort_keys=True)


def _shown(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 3] + "..."


def differences(mine: contract.ServedFacts, theirs: contract.ServedFacts) -> str:
    """``"threshold 0.449 vs 0.5; ..."``: the first facts that differ, private ones unquoted."""
    a, b = mine.identity(), theirs.identity()
    parts = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) == b.get(key):
            continue
        if key in PRIVATE_FACTS:
            parts.append(f"{key} differ")
        else:
            parts.append(f"{key} {_shown(a.get(key))} vs {_shown(b.get(key))}")
    shown = parts[:MAX_DIFFERENCES]
    if len(parts) > MAX_DIFFERENCES:
        shown.append(f"{len(parts) - MAX_DIFFERENCES} more")
    return "; ".join(shown)


@dataclass
class FactsAgreement(Generic[F]):
    """The agreed facts of one model's replicas, and the reads that keep them current."""

    service: str
    read: FactsReader[F]
    unreachable: Unreachable[F]
    key: str | None = None  # identity of the agreed facts (None: nothing agreed yet)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False, repr=False)

    async def refresh(
        self, replicas: Sequence[Replica[F]], wanted: Callable[[Replica[F]], bool]
    ) -> None:
        """Read the facts of every replica ``wanted`` picks, then settle the agreement."""
        if not any(wanted(r) for r in replicas):
            return
        async with self._lock:
            todo = [r for r in replicas if wanted(r)]  # again: another reader may be done
            await asyncio.gather(*(self._read(r) for r in todo))
            self.settle(replicas)

    async def _read(self, replica: Replica[F]) -> None:
        try:
            read = await self.read(replica.url)
        except FactsUnreachableError as exc:  # down: its facts stay stale until it is back
            self.unreachable(replica, f"unreachable ({exc})")
        except FactsError as exc:
            if replica.bundle.unreadable(str(exc)):
                log.warning("%s replica %s: bundle facts unreadable, out of rotation: %s",
                            self.service, replica.url, exc)
        else:
            if replica.bundle.learned(read):
                log.info("%s replica %s: bundle facts read (bundle %s, version %s)",
                         self.service, replica.url, read.facts.name, read.facts.version)

    def settle(self, replicas: Sequence[Replica[F]]) -> None:
        """Mark each replica whose fresh facts disagree; log the new disagreements."""
        before = {r.url: r.bundle.disagreement_detail for r in replicas}
        for replica in replicas:
            replica.bundle.disagreement = replica.bundle.disagreement_detail = None
        groups: dict[str, list[Replica[F]]] = {}
        for replica in replicas:
            if replica.bundle.fresh and replica.bundle.facts is not None:
                groups.setdefault(_key(replica.bundle.facts), []).append(replica)
        if self.key not in groups and len(groups) == 1:
            self.key = next(iter(groups))
        position = {id(r): index for index, r in enumerate(replicas, start=1)}
        for key, members in groups.items():
            if key == self.key:
                continue
            other = groups[self.key if self.key in groups else next(k for k in groups if k != key)]
            for replica in members:
                self._disagrees(replica, other[0], position)
                detail = replica.bundle.disagreement_detail
                if detail != before.get(replica.url):
                    log.warning("%s; out of rotation", detail)

    def _disagrees(
        self, replica: Replica[F], other: Replica[F], position: dict[int, int]
    ) -> None:
        mine, theirs = replica.bundle.facts, other.bundle.facts
        assert mine is not None and theirs is not None  # both fresh
        diff = differences(mine, theirs)
        replica.bundle.disagreement = (
            f"replica {position[id(replica)]} reports facts that disagree with "
            f"replica {position[id(other)]}: {diff}"
        )
        replica.bundle.disagreement_detail = (
            f"{self.service} replica {replica.url} reports facts that disagree with "
            f"{other.url}: {diff}"
        )

    def problems(self, replicas: Sequence[Replica[F]]) -> dict[str, tuple[str, str]]:
        """``url -> (public text, detail with URLs)`` for each replica out of rotation
        because its facts cannot be read or disagree."""
        found: dict[str, tuple[str, str]] = {}
        for index, replica in enumerate(replicas, start=1):
            bundle = replica.bundle
            if bundle.error is not None:
                found[replica.url] = (
                    f"replica {index}: {bundle.error}",
                    f"{self.service} replica {replica.url}: {bundle.error}",
                )
            elif bundle.disagreement is not None and bundle.disagreement_detail is not None:
                found[replica.url] = (bundle.disagreement, bundle.disagreement_detail)
        return found

    @staticmethod
    def agreed_facts(replicas: Sequence[Replica[F]]) -> F | None:
        """The facts of the replicas in rotation (None while none is)."""
        return next((r.bundle.facts for r in replicas if r.usable), None)
