"""OIP clients for the model services: replicas, timeouts, a circuit breaker, checks.

Each model service may run as several replicas (a list of URLs; ``dns+http://name:port``
stands for every address of ``name``: :mod:`~gateway.upstream.discovery`). A call goes to
the replica with the fewest requests in flight (:mod:`~gateway.upstream.balancer`). A
replica that refuses connections is ejected at once; one that answers 5xx, times out or
answers something the contract forbids after ``breaker_failures`` such calls in a row; it
rests ``breaker_cooldown_s`` (a 503 pauses it for its ``Retry-After``, if shorter), then
gets one trial call (:mod:`~gateway.upstream.breaker`). A refused connection, a 503, a
5xx or an attempt that got no answer within its own bound is retried once on another
replica (infer is idempotent), an answer from a bundle swapped under the call once on any
replica; a timeout at the request's deadline is not (the caller's time is spent). With
every replica ejected the call fails at once instead of waiting on a broken replica. Each
attempt ends as one :class:`~gateway.upstream.outcome.Outcome`
(the rules are there), applied in one place, :meth:`ModelClient._record`.

Every call (all its attempts) is bounded by the service's timeout and by the request's
deadline, whichever comes first. While another replica could still be asked, one attempt
may take at most ``attempt_timeout_s`` of that (``UPSTREAM_ATTEMPT_TIMEOUT_S``; half the
service's timeout by default): a replica whose link was cut mid-request, which never
answers nor refuses, costs the call that long, then another replica answers. The last
attempt may take all the time left. Each attempt tells the model server how long it may
take (Triton's ``timeout`` parameter), so the server drops the image instead of computing
an answer nobody reads.

Answers are read with the bundle facts of the replica that gave them, read from its model
configuration (:mod:`~gateway.upstream.facts`: when they are re-read) and checked against
the other replicas' (:mod:`~gateway.upstream.agreement`). A replica whose facts cannot be
read or disagree is out of rotation; with none left the call is a 503 saying why. An
answer is used only after ``check`` (shared.contract's tensor and range checks) has
passed: a bad answer is a 502, never a 500 and never a defaulted fact. What a replica said
goes to the log under the request id; the client's message is generic.

Readiness (``/readyz``) is read from :meth:`ModelClient.cached_readiness`, which
:meth:`ModelClient.poll_readiness` refreshes in the background (``gateway.runtime``):
a probe never waits on a hanging replica (:mod:`~gateway.upstream.readiness`). A replica
the last poll found not ready is out of rotation until a poll finds it ready and its
facts are read again: no upload waits on reading the facts of a replica that does not
answer. ``dns+`` names are resolved off the request path too (:meth:`ModelClient.discover`,
on the gateway's timer).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Generic, NoReturn

import httpx
import numpy as np

from gateway.upstream import outcome as outcomes
from gateway.upstream.agreement import FactsAgreement
from gateway.upstream.balancer import Balancer
from gateway.upstream.breaker import (
    BREAKER_COOLDOWN_S,
    BREAKER_FAILURES,
    Breaker,
    BreakerPolicy,
    Change,
    Verdict,
)
from gateway.upstream.budget import CallBudget
from gateway.upstream.discovery import Discovery
from gateway.upstream.errors import (
    RETRY_AFTER_UNREACHABLE_S,
    UpstreamError,
    UpstreamUnavailableError,
)
from gateway.upstream.facts import F, ReadFacts, read_facts
from gateway.upstream.outcome import Outcome
from gateway.upstream.readiness import ReadinessCache, count_states, probe_ready
from gateway.upstream.replica import Replica
from gateway.upstream.transport import decode_answer, post_infer
from shared import contract, oip

log = logging.getLogger(__name__)

# Replicas asked per call at most: the first, then one other (infer is idempotent).
MAX_ATTEMPTS = 2
# Less time than this left before the request's deadline: not attempted (a timeout).
MIN_ATTEMPT_BUDGET_S = 0.01
# With no replica in rotation only because the last readiness poll found them all down, a
# request polls them itself, this long at most, instead of failing until the next poll: a
# replica that came up since (the first uploads after a start) takes it at once, and one
# still down costs this bound, never a facts read's FACTS_TIMEOUT_S.
POLL_WHEN_ALL_DOWN_S = 1.0
# Observer of every attempt: (service, outcome label, seconds), outcome.Outcome's labels.
AttemptObserver = Callable[[str, str, float], None]
# Told the service's name each time its breaker ejects a replica.
EjectionObserver = Callable[[str], None]
# Checks an answer (outputs, facts, the request's inputs); raises ContractError/OipError.
AnswerCheck = Callable[[Mapping[str, np.ndarray], F, Mapping[str, np.ndarray]], None]


@dataclass
class InferResult(Generic[F]):
    outputs: dict[str, np.ndarray]
    facts: F
    elapsed_ms: float
    replica: str


@dataclass
class ModelClient(Generic[F]):
    """Calls one model (by OIP name) on any of its replicas; ``facts_type`` decodes its
    answers and ``check`` vets their tensors before anyone reads them."""

    service: str
    model_name: str
    urls: list[str]
    http: httpx.AsyncClient
    timeout_s: float
    facts_type: type[F] = field(kw_only=True)
    output_specs: tuple[contract.TensorSpec, ...] = field(kw_only=True)
    check: AnswerCheck[F] | None = field(default=None, kw_only=True)
    token: str | None = None
    observe: AttemptObserver | None = None
    on_eject: EjectionObserver | None = field(default=None, kw_only=True)
    breaker_failures: int = field(default=BREAKER_FAILURES, kw_only=True)
    breaker_cooldown_s: float = field(default=BREAKER_COOLDOWN_S, kw_only=True)
    attempt_timeout_s: float | None = field(default=None, kw_only=True)  # None: timeout_s / 2
    replicas: list[Replica[F]] = field(init=False)
    readiness: ReadinessCache = field(init=False, default_factory=ReadinessCache)

    def __post_init__(self) -> None:
        self.discovery = Discovery(self.service, self.urls)
        self.policy = BreakerPolicy(self.breaker_failures, self.breaker_cooldown_s)
        self.replicas = [self._replica(url) for url in self.discovery.static]
        self.balancer: Balancer[F] = Balancer(self.service)
        self.agreement: FactsAgreement[F] = FactsAgreement(
            self.service, self._read_facts, lambda r, why: self._judge(r, Verdict.DOWN, why)
        )

    def _replica(self, url: str) -> Replica[F]:
        return Replica(url, Breaker(self.policy))

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def _read_facts(self, url: str) -> ReadFacts[F]:
        return await read_facts(
            self.http, url, self.model_name, self.facts_type, self.output_specs, self._headers()
        )

    async def discover(self) -> bool:
        """Resolve the ``dns+`` names now (the gateway's timer calls this, never a request);
        replicas already known keep their state, and the facts agreement is settled again
        without the ones that left. True when the replicas changed."""
        urls = await self.discovery.refresh()
        if urls is None or urls == [r.url for r in self.replicas]:
            return False
        known = {replica.url: replica for replica in self.replicas}
        joined, left = sorted(set(urls) - set(known)), sorted(set(known) - set(urls))
        if joined or left:
            log.info("%s replicas from DNS: %d (joined %s, left %s)",
                     self.service, len(urls), joined or "none", left or "none")
        self.replicas = [known.get(url) or self._replica(url) for url in urls]
        self.agreement.settle(self.replicas)  # a replica that left no longer takes part
        return True

    @property
    def attempt_bound_s(self) -> float:
        """Longest one attempt may take while another replica could still be asked."""
        return self.attempt_timeout_s or self.timeout_s / 2

    async def infer(
        self, inputs: dict[str, np.ndarray], outputs: list[str], request_id: str,
        deadline: float | None = None,
    ) -> InferResult[F]:
        """Outputs of one infer; ``deadline`` is a ``time.monotonic()`` time or None."""
        now = time.monotonic()
        await self.agreement.refresh(self.replicas, lambda r: self._read_first(r, now))
        if self._all_left_to_poller(now):
            await self.poll_readiness(POLL_WHEN_ALL_DOWN_S)
            now = time.monotonic()
        time_for = CallBudget.start(now, self.timeout_s, self.attempt_bound_s, deadline)
        tried: set[str] = set()
        last: UpstreamError | None = None
        started = time.perf_counter()
        for attempt in range(MAX_ATTEMPTS):  # a swapped bundle's replica may be asked again
            now = time.monotonic()
            if time_for.left(now) <= MIN_ATTEMPT_BUDGET_S:
                if last is not None:
                    raise last
                self._fail(outcomes.deadline_passed(self.service), started)
            replica = self.balancer.pick(self.replicas, now, tried)
            if replica is None:
                break
            tried.add(replica.url)
            more = attempt + 1 < MAX_ATTEMPTS and self._another(tried, now)
            budget, own = time_for.attempt(now, last=not more)
            attempt_started = time.perf_counter()
            try:
                ended, result = await self._attempt(
                    replica, inputs, outputs, request_id, budget, own_timeout=own
                )
                self._record(ended, attempt_started, replica)
            finally:
                replica.breaker.release()  # no verdict (cancelled, a 4xx): the next may try
            if result is not None:
                result.elapsed_ms = (time.perf_counter() - started) * 1000
                return result
            assert ended.error is not None  # every outcome but ANSWERED carries its error
            if not ended.retry:
                raise ended.error
            if ended.again:
                tried.discard(replica.url)
            last = ended.error
        if last is not None:
            raise last
        self._fail(outcomes.nobody_to_ask(self._nobody_to_ask()), started)

    def _read_first(self, replica: Replica[F], now: float) -> bool:
        """Its stale facts are read before a call may use it: not for a replica that rests
        or that the last poll found down (the poller reads those once they answer)."""
        return (replica.bundle.stale and replica.available(now)
                and self.readiness.ready.get(replica.url, True))

    def _all_left_to_poller(self, now: float) -> bool:
        """No replica could take a call, and some only because the last poll found them
        down (:meth:`_read_first` leaves those to the poller)."""
        if any(r.usable and r.available(now) for r in self.replicas):
            return False
        return any(self.readiness.ready.get(r.url) is False and r.available(now)
                   for r in self.replicas)

    def _another(self, tried: set[str], now: float) -> bool:
        """Another replica could take a call now, if this attempt fails."""
        return any(r.url not in tried and r.available(now) and r.usable for r in self.replicas)

    async def _attempt(
        self, replica: Replica[F], inputs: dict[str, np.ndarray], outputs: list[str],
        request_id: str, budget: float, *, own_timeout: bool,
    ) -> tuple[Outcome, InferResult[F] | None]:
        """One call to one replica within ``budget`` seconds (``own_timeout``: the bound is
        the attempt's or the service's, not the request's deadline): how it ended, and its
        result when it answered."""
        # Triton's "timeout" parameter (us): the server drops the image past it.
        body, headers = oip.encode_request(
            inputs, outputs=outputs, request_id=request_id,
            parameters={contract.TIMEOUT_PARAMETER: int(budget * 1e6)},
        )
        headers.update({"X-Request-ID": request_id, **self._headers()})
        url = f"{replica.url}/v2/models/{self.model_name}/infer"
        try:
            with self.balancer.sending(replica):
                response = await post_infer(
                    self.http, url, body, headers, budget,
                    who=f"{self.service} replica {replica.url}",
                )
        except httpx.TransportError as exc:
            ended = outcomes.transport_failed(self.service, exc, budget, own_timeout=own_timeout)
            return ended, None
        if response.status_code != 200:
            return outcomes.refused(self.service, response, self.policy.cooldown_s), None
        try:
            version, tensors = decode_answer(response, outputs)
            facts = await self._facts_for(replica, version)
            if facts is None:
                return outcomes.bundle_changed(self.service), None
            if self.check is not None:
                self.check(tensors, facts, inputs)
        except (oip.OipError, ValueError) as exc:  # contract.ContractError included
            return outcomes.invalid_answer(self.service, exc), None
        return outcomes.ANSWERED, InferResult(tensors, facts, 0.0, replica.url)

    async def _facts_for(self, replica: Replica[F], version: str | None) -> F | None:
        """The facts to read an answer of ``version`` with; None when its replica's bundle
        changed (its facts are re-read at once when the answer names a version they do not
        list, and must then list it and still agree)."""
        if not replica.bundle.lists(version):
            log.warning(
                "%s replica %s answered as model version %r, not %s: reading its facts again",
                self.service, replica.url, version, sorted(replica.bundle.versions),
            )
            replica.bundle.mark_stale()
            await self.agreement.refresh(self.replicas, lambda r: r is replica and r.bundle.stale)
            if not replica.usable or version not in replica.bundle.versions:
                return None
        return replica.bundle.facts  # None only if a read failed since the call was sent

    def _record(self, ended: Outcome, started: float, replica: Replica[F] | None = None) -> None:
        """Apply one attempt's outcome: the only place that marks, judges and counts."""
        if replica is not None:
            if ended.said is not None:
                log.warning("%s replica %s: %s", self.service, replica.url, ended.said)
            if ended.stale:
                replica.bundle.mark_stale()
            self._judge(replica, ended.verdict, ended.reason, ended.rest_s)
        if self.observe is not None:
            self.observe(self.service, ended.label, time.perf_counter() - started)

    def _fail(self, ended: Outcome, started: float) -> NoReturn:
        """Record a call that was not attempted, and raise its error."""
        self._record(ended, started)
        assert ended.error is not None
        raise ended.error

    def _judge(
        self, replica: Replica[F], verdict: Verdict, why: str, rest_s: float | None = None
    ) -> None:
        """Tell ``replica``'s breaker a verdict, log what it did and count an ejection:
        the one place a breaker's :class:`~gateway.upstream.breaker.Change` is applied
        (an attempt's outcome, or facts that could not be read)."""
        change = replica.breaker.record(verdict, time.monotonic(), rest_s)
        if (said := replica.breaker.describe(change, why, rest_s)) is not None:
            log.warning("%s replica %s%s", self.service, replica.url, said)
        if change is Change.EJECTED and self.on_eject is not None:
            self.on_eject(self.service)

    def _nobody_to_ask(self) -> UpstreamError:
        """Why no replica was tried: facts unreadable or in disagreement (which, and why),
        else every replica ejected (retry when the first rest is over)."""
        now = time.monotonic()
        problems = self.problems()
        waiting = [r for r in self.replicas if r.available(now) and r.url in problems]
        if waiting:
            return UpstreamUnavailableError(
                self.service, "; ".join(problems[r.url][0] for r in waiting)
            )
        rests = [r.breaker.open_until - now for r in self.replicas if r.breaker.open_until > now]
        return UpstreamUnavailableError(
            self.service, "every replica is ejected after failing",
            retry_after_s=max(1.0, min(rests, default=RETRY_AFTER_UNREACHABLE_S)),
        )

    def problems(self) -> dict[str, tuple[str, str]]:
        """``url -> (public text, detail with URLs)`` for each replica out of rotation
        because its facts cannot be read or disagree."""
        return self.agreement.problems(self.replicas)

    def agreed_facts(self) -> F | None:
        """The facts of the replicas in rotation (None while none is)."""
        return self.agreement.agreed_facts(self.replicas)

    async def poll_readiness(self, timeout_s: float) -> dict[str, bool]:
        """Ask every replica at once whether it is ready; the answer is also cached."""
        replicas = list(self.replicas)
        headers = self._headers()
        states = await asyncio.gather(*(
            probe_ready(self.http, r.url, self.model_name, headers, timeout_s) for r in replicas
        ))
        is_ready = {r.url: state for r, state in zip(replicas, states, strict=True)}
        for replica in replicas:
            if not is_ready[replica.url]:
                replica.bundle.mark_stale()  # restarting, perhaps with another bundle
        # Ready with stale facts, or facts that could not be read: read them (again).
        await self.agreement.refresh(self.replicas, lambda r: is_ready.get(r.url, False) and (
            r.bundle.stale or r.bundle.error is not None
        ))
        self.agreement.settle(self.replicas)  # a replica that went stale no longer takes part
        for url, ready in self.readiness.changes(is_ready):
            log.log(logging.INFO if ready else logging.WARNING, "%s replica %s %s", self.service,
                    url, "ready again: back in rotation" if ready else
                    "not ready at the readiness poll: out of rotation until a poll finds it ready")
        self.readiness.record(is_ready, time.monotonic())
        return dict(is_ready)

    def cached_readiness(self, max_age_s: float) -> dict[str, bool]:
        """``url -> ready`` from the last poll: a replica the breaker rests or whose facts
        are out of rotation is not ready, and a poll older than ``max_age_s`` knows nothing."""
        now = time.monotonic()
        in_rotation = {
            r.url for r in self.replicas if r.usable and r.breaker.state(now) != "open"
        }
        urls = [r.url for r in self.replicas]
        return self.readiness.view(now, max_age_s, urls, in_rotation)

    def replica_states(self, max_age_s: float) -> dict[str, int]:
        """Replicas by state (ready, ejected, not_ready), for the metrics: readiness as
        :meth:`cached_readiness` answers it."""
        now = time.monotonic()
        return count_states(self.replicas, self.cached_readiness(max_age_s), now)

    async def replica_readiness(self, timeout_s: float = 2.0) -> dict[str, bool]:
        """``url -> ready`` for every replica, asked now (``/health``)."""
        return await self.poll_readiness(timeout_s)
