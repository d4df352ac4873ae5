"""Bundle facts per replica: read from the model configuration, kept until a sign of change.

The gateway reads a model's answers with the facts of the bundle behind them (the
classifier's members and threshold, the detector's classes and limits). They come from
Triton's model-configuration extension, ``GET /v2/models/{name}/config`` (the facts as
``string_value`` parameters, :mod:`shared.contract`), which our model services and a stock
Triton serving an exported repository both answer, plus the model metadata's ``versions``.
Infer answers carry no facts; nothing is ever defaulted.

When they are read (:class:`ReplicaFacts` keeps the state of one replica): when a replica
is first seen, and again after any sign it may have changed, which marks its facts stale
until re-read before its next use: a readiness poll found it not ready, a call could not
reach it or was answered 503, or an answer named a ``model_version`` its metadata did not
list (our services answer with a digest of their facts; Triton with the version it
loaded). Whether the replicas agree is :mod:`gateway.upstream.agreement`'s job.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx

from shared import contract

# Longest a facts read (config + metadata) of one replica may take.
FACTS_TIMEOUT_S = 5.0
# The facts of a model's bundle (ClassifierFacts, DetectorFacts).
F = TypeVar("F", bound=contract.ServedFacts)


class FactsError(Exception):
    """The facts of a replica could not be read or are not the contract's."""


class FactsUnreachableError(FactsError):
    """The replica could not be reached at all: down, not a facts problem."""


@dataclass(frozen=True)
class ReadFacts(Generic[F]):
    facts: F
    versions: frozenset[str]


@dataclass
class ReplicaFacts(Generic[F]):
    """What the gateway knows of one replica's bundle facts."""

    facts: F | None = None
    versions: frozenset[str] = frozenset()  # the model versions its metadata lists
    stale: bool = True  # never read yet, or it may have restarted since
    error: str | None = None  # the last read failed (the poller reads it again)
    disagreement: str | None = None  # its facts disagree with the agreed ones (public text)
    disagreement_detail: str | None = None  # the same with URLs (log, operators)

    @property
    def fresh(self) -> bool:
        """Read, and not stale since: it takes part in the agreement."""
        return self.facts is not None and not self.stale and self.error is None

    @property
    def usable(self) -> bool:
        """Fresh and agreed: answers of its replica can be read with them."""
        return self.fresh and self.disagreement is None

    def mark_stale(self) -> None:
        """The replica may have restarted, perhaps on another bundle: read before next use."""
        self.stale = True

    def lists(self, version: str | None) -> bool:
        """An answer of ``version`` may be read with these facts."""
        return not self.versions or version in self.versions

    def learned(self, read: ReadFacts[F]) -> bool:
        """Facts were read; True when they are news (first read, changed, or fixed)."""
        news = self.facts != read.facts or self.error is not None
        self.facts, self.versions, self.error, self.stale = read.facts, read.versions, None, False
        return news

    def unreadable(self, error: str) -> bool:
        """The read failed (its replica is out of rotation); True when the reason is new."""
        news = self.error != error
        self.facts, self.versions, self.error, self.stale = None, frozenset(), error, False
        return news


async def read_facts(
    http: httpx.AsyncClient, url: str, model: str, facts_type: type[F],
    outputs: tuple[contract.TensorSpec, ...], headers: Mapping[str, str],
    timeout_s: float = FACTS_TIMEOUT_S,
) -> ReadFacts[F]:
    """The facts of the replica at ``url`` (its config, then its metadata versions), or
    :class:`FactsError` saying what is off (never a URL or what the replica said)."""
    try:
        async with asyncio.timeout(timeout_s):
            config = await _get_json(http, f"{url}/v2/models/{model}/config", headers, timeout_s)
            metadata = await _get_json(http, f"{url}/v2/models/{model}", headers, timeout_s)
    except TimeoutError as exc:
        raise FactsError(f"its model configuration did not come within {timeout_s:g} s") from exc
    try:
        facts = contract.facts_from_config(config, facts_type, model=model, outputs=outputs)
    except contract.ContractError as exc:
        raise FactsError(f"its model configuration breaks the contract: {exc}") from exc
    versions = metadata.get("versions") if isinstance(metadata, dict) else None
    if not isinstance(versions, list) or not all(isinstance(v, str) for v in versions):
        raise FactsError("its model metadata lists no versions")
    return ReadFacts(facts, frozenset(versions))


async def _get_json(
    http: httpx.AsyncClient, url: str, headers: Mapping[str, str], timeout_s: float
) -> Any:
    path = httpx.URL(url).path
    try:
        response = await http.get(url, headers=dict(headers), timeout=timeout_s)
    except httpx.TransportError as exc:
        raise FactsUnreachableError(f"GET {path} failed ({type(exc).__name__})") from exc
    except httpx.HTTPError as exc:
        raise FactsError(f"GET {path} failed ({type(exc).__name__})") from exc
    if response.status_code != 200:
        raise FactsError(f"GET {path} answered HTTP {response.status_code}")
    try:
        return response.json()
    except ValueError as exc:
        raise FactsError(f"GET {path} answered something that is not JSON") from exc

