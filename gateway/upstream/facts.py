"""Bundle facts per replica: read from the model configuration, checked for agreement.

The gateway reads a model's answers with the facts of the bundle behind them (the
classifier's members and threshold, the detector's classes and limits). They come from
Triton's model-configuration extension, ``GET /v2/models/{name}/config`` (the facts as
``string_value`` parameters, :mod:`shared.contract`), which our model services and a stock
Triton serving an exported repository both answer, plus the model metadata's ``versions``.
Infer answers carry no facts; nothing is ever defaulted.

When they are read (:mod:`gateway.upstream.client` keeps the state on each replica): when a
replica is first seen, and again after any sign it may have changed, which marks its facts
stale until re-read before its next use: a readiness poll found it not ready, a call could
not reach it, or an answer named a ``model_version`` its metadata did not list (our services
answer with a digest of their facts; Triton with the version it loaded).

Agreement: the replicas of one model must report the same facts, apart from how each
serves them (``contract.SERVING_FACTS``: device, backends). The *agreed* facts are the ones
all replicas last agreed on; while a replica still reports them, one that reports others is
out of rotation. When none reports them any more and the rest agree, theirs become the
agreed facts (a rollout to a new bundle completes when its last old replica is gone).
Replicas that disagree with no agreed facts left are all out of rotation.

Refusal texts name replicas by position ("replica 2"), since clients read them (the upload
answer, ``/readyz``); the URL-bearing detail goes to the log and the operators' ``/health``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from shared import contract

# Longest a facts read (config + metadata) of one replica may take.
FACTS_TIMEOUT_S = 5.0
# Facts not quoted in a refusal clients read (paths and hashes are for operators).
PRIVATE_FACTS = frozenset({"checkpoints"})
MAX_DIFFERENCES = 3
MAX_VALUE_CHARS = 60


class FactsError(Exception):
    """The facts of a replica could not be read or are not the contract's."""


class FactsUnreachableError(FactsError):
    """The replica could not be reached at all: down, not a facts problem."""


class HasFacts(Protocol):
    """What agreement needs of a replica (``gateway.upstream.Replica``)."""

    url: str
    facts: contract.ServedFacts | None
    facts_stale: bool
    facts_error: str | None
    disagreement: str | None
    disagreement_detail: str | None


@dataclass(frozen=True)
class ReadFacts:
    facts: contract.ServedFacts
    versions: frozenset[str]


async def read_facts(
    http: httpx.AsyncClient, url: str, model: str, facts_type: type[contract.ServedFacts],
    outputs: tuple[contract.TensorSpec, ...], headers: Mapping[str, str],
    timeout_s: float = FACTS_TIMEOUT_S,
) -> ReadFacts:
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


def agree(service: str, replicas: Sequence[HasFacts], agreed: str | None) -> str | None:
    """Mark each replica that disagrees (``disagreement``); return the agreed facts' key.

    Only replicas with fresh facts take part; the others are out of rotation anyway.
    """
    fresh = [r for r in replicas if r.facts is not None and not r.facts_stale and not r.facts_error]
    for replica in replicas:
        replica.disagreement = replica.disagreement_detail = None
    groups: dict[str, list[HasFacts]] = {}
    for replica in fresh:
        assert replica.facts is not None
        groups.setdefault(_key(replica.facts), []).append(replica)
    if agreed not in groups and len(groups) == 1:
        agreed = next(iter(groups))
    position = {id(r): index + 1 for index, r in enumerate(replicas)}
    for key, members in groups.items():
        if key == agreed:
            continue
        other_key = agreed if agreed in groups else next(k for k in groups if k != key)
        other = groups[other_key][0]
        for replica in members:
            assert replica.facts is not None and other.facts is not None
            diff = differences(replica.facts, other.facts)
            replica.disagreement = (
                f"replica {position[id(replica)]} reports facts that disagree with "
                f"replica {position[id(other)]}: {diff}"
            )
            replica.disagreement_detail = (
                f"{service} replica {replica.url} reports facts that disagree with "
                f"{other.url}: {diff}"
            )
    return agreed
