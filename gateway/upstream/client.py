"""OIP clients for the model services: replicas, timeouts, a circuit breaker, checks.

Each model service may run as several replicas (a list of URLs). A call goes to the
replica with the fewest requests in flight. A replica that refuses connections is
ejected at once; one that answers 5xx, times out or answers something the contract
forbids is ejected after ``breaker_failures`` such calls in a row. An ejected replica
rests ``breaker_cooldown_s`` (a 503's own ``Retry-After``, if shorter), then gets one
trial call (half-open): success puts it back, failure ejects it again. A refused
connection, a 503 or a 5xx is retried once on another replica (infer is idempotent);
timeouts are not (the caller's deadline is spent). With every replica ejected the call
fails at once instead of waiting on a broken replica.

Every call is bounded by the service's timeout and by the request's deadline, whichever
comes first, and tells the model server how long it may take (Triton's ``timeout``
parameter), so the server drops the image instead of computing an answer nobody reads.

Answers are read with the bundle facts of the replica that gave them, read once from its
model configuration and checked against the other replicas' (:mod:`gateway.upstream.facts`: when
they are re-read, what agreement means); infer answers carry no facts. A replica whose
facts cannot be read or disagree is out of rotation, and with none left the call is a 503
saying why. An answer is used only after ``check`` (shared.contract's tensor and range
checks) has passed: a bad answer is an :class:`UpstreamInvalidAnswerError` (502), never a
500 and never a defaulted fact. What a replica said goes to the log under the request id;
the client's message is generic.

Readiness (``/readyz``) is read from :attr:`ModelClient.readiness`, which
:meth:`ModelClient.poll_readiness` refreshes in the background (``gateway.runtime``):
a probe never waits on a hanging replica.

A URL written ``dns+http://name:port`` stands for every address ``name`` resolves to
(re-resolved every few seconds): with ``docker compose --scale classifier=3`` or a
Kubernetes headless Service, each replica is balanced individually.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx
import numpy as np

from gateway.upstream.facts import FactsError, FactsUnreachableError, agree, read_facts
from shared import contract, oip
from shared.errors import ServiceError

log = logging.getLogger(__name__)

DNS_REFRESH_SECONDS = 10.0
DNS_PREFIX = "dns+"
CONNECT_TIMEOUT_S = 2.0
# Defaults of the breaker (the gateway passes BREAKER_FAILURES / BREAKER_COOLDOWN_S).
BREAKER_FAILURES = 3
BREAKER_COOLDOWN_S = 10.0
# Readiness older than this many poll intervals counts as unknown (not ready).
READINESS_STALE_INTERVALS = 3
# One pool for every model call of a gateway: far above what admission lets in at once
# (MAX_INFLIGHT_UPLOADS=32 uploads x 2 services, plus one retry each), so the pool never
# queues an admitted upload; idle keep-alive connections beyond 50 are closed.
MAX_CONNECTIONS = 200
MAX_KEEPALIVE_CONNECTIONS = 50
# An idle connection is dropped by the gateway after this, well before uvicorn's 5 s
# keep-alive timeout on the model services: reusing a connection the server is closing at
# that very moment fails with no answer (a ReadError or RemoteProtocolError).
KEEPALIVE_EXPIRY_S = 2.0
# Errors of a connection that broke before an answer (a stale keep-alive, a restarted
# server): the same replica is asked once more on a new connection before it counts as down.
STALE_CONNECTION_ERRORS = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
# Retry advice for the gateway's client when no replica could answer: a replica that
# answered 503 (loading or overloaded) is worth asking again soon; an unreachable one is not.
RETRY_AFTER_BUSY_S = 1
RETRY_AFTER_UNREACHABLE_S = 5
# Observer of every attempt: (service, outcome, seconds). Outcomes: ok, timeout,
# unreachable, unavailable (503), error (other status), malformed (failed the checks),
# ejected (every replica ejected: not attempted).
AttemptObserver = Callable[[str, str, float], None]
# The facts of a model's bundle (shared.contract), read from each replica's configuration.
F = TypeVar("F", bound=contract.ServedFacts)
# Checks an answer (outputs, facts, the request's inputs); raises ContractError/OipError.
AnswerCheck = Callable[[Mapping[str, np.ndarray], F, Mapping[str, np.ndarray]], None]


class UpstreamError(ServiceError):
    """A model service could not answer (503, retry in 5 s unless said otherwise).

    ``problem`` says what went wrong ("detector service: ..."), for logs and for the
    warning of a response that goes on without the detector; ``message`` is the answer
    to a request that ends here: without the classifier no diagnosis is made. Neither
    quotes what a replica said (that goes to the log only).
    """

    status_code = 503
    retry_after_s = RETRY_AFTER_UNREACHABLE_S

    def __init__(self, service: str, problem: str, *, retry_after_s: float | None = None) -> None:
        self.service = service
        self.problem = f"{service} service: {problem}"
        super().__init__(f"{self.problem}; no diagnosis was made", retry_after_s=retry_after_s)


class UpstreamUnavailableError(UpstreamError):
    """No replica of the service could take the call (503 with the client's retry advice)."""


class UpstreamTimeoutError(UpstreamError):
    """The service did not answer in time (504; asking again at once would not help)."""

    status_code = 504
    retry_after_s = None


class UpstreamBadGatewayError(UpstreamError):
    """The service failed the call (5xx other than 503/504, or refused it): 502."""

    status_code = 502
    retry_after_s = None


class UpstreamInvalidAnswerError(UpstreamBadGatewayError):
    """The service answered something the contract forbids (502): nothing of it is used."""

    def __init__(self, service: str) -> None:
        super().__init__(service, "its answer failed validation")


@dataclass
class Replica:
    """One replica and its breaker: closed (in use), open (resting), half-open (on trial)."""

    url: str
    outstanding: int = 0
    failures: int = 0  # consecutive failed calls
    ejected_until: float = 0.0
    tripped: bool = False  # ejected by the breaker: the next call after the rest is a trial
    trial: bool = False  # a trial call is in flight (half-open): nobody else is sent
    # Its bundle facts (gateway.upstream.facts): read from its model configuration, with the
    # versions its metadata lists; stale (re-read before next use) after a sign of restart.
    facts: Any = None
    versions: frozenset[str] = frozenset()
    facts_stale: bool = True  # never read yet, or it may have restarted since
    facts_error: str | None = None  # the last read failed (the poller reads it again)
    disagreement: str | None = None  # its facts disagree with the agreed ones (public text)
    disagreement_detail: str | None = None  # the same with URLs (log, operators)

    def available(self, now: float) -> bool:
        return now >= self.ejected_until and not self.trial

    @property
    def usable(self) -> bool:
        """Its facts are read, fresh and agreed: its answers can be read."""
        return (
            self.facts is not None and not self.facts_stale
            and self.facts_error is None and self.disagreement is None
        )

    def state(self, now: float) -> str:
        if now < self.ejected_until:
            return "open"
        return "half-open" if self.tripped else "closed"


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
    breaker_failures: int = field(default=BREAKER_FAILURES, kw_only=True)
    breaker_cooldown_s: float = field(default=BREAKER_COOLDOWN_S, kw_only=True)
    replicas: list[Replica] = field(init=False)
    # Cached readiness (url -> ready) and when it was polled (time.monotonic()).
    readiness: dict[str, bool] = field(init=False, default_factory=dict)
    readiness_at: float = field(init=False, default=float("-inf"))
    _resolved_at: float = field(init=False, default=float("-inf"))
    # The facts the replicas last agreed on (upstream.facts.agree), and one reader at a time.
    agreed: str | None = field(init=False, default=None)
    _facts_lock: asyncio.Lock = field(init=False, default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError(f"no URL configured for the {self.service} service")
        self.replicas = [
            Replica(url.rstrip("/")) for url in self.urls if not url.startswith(DNS_PREFIX)
        ]
        self._dns_urls = [url[len(DNS_PREFIX) :] for url in self.urls if url.startswith(DNS_PREFIX)]

    async def _refresh_dns(self) -> None:
        """Expand ``dns+`` URLs to one replica per resolved address, keeping known ones."""
        if not self._dns_urls or time.monotonic() - self._resolved_at < DNS_REFRESH_SECONDS:
            return
        self._resolved_at = time.monotonic()
        loop = asyncio.get_running_loop()
        wanted = [r.url for r in self.replicas if r.url.rstrip("/") in self.urls]
        for raw in self._dns_urls:
            url = httpx.URL(raw)
            port = url.port or (443 if url.scheme == "https" else 80)
            try:
                infos = await loop.getaddrinfo(url.host, port, type=socket.SOCK_STREAM)
            except OSError:
                log.warning("%s: cannot resolve %s", self.service, url.host)
                continue
            for address in sorted({info[4][0] for info in infos}):
                host = f"[{address}]" if ":" in address else address
                wanted.append(f"{url.scheme}://{host}:{port}")
        known = {replica.url: replica for replica in self.replicas}
        if wanted:
            self.replicas = [known.get(url) or Replica(url) for url in dict.fromkeys(wanted)]

    def _pick(self, exclude: set[str]) -> Replica | None:
        """A replica whose rest is over (its trial call) first, else the least busy one not
        ejected; None when every replica rests or is on trial."""
        now = time.monotonic()
        candidates = [
            r for r in self.replicas if r.url not in exclude and r.available(now) and r.usable
        ]
        chosen = min(candidates, key=lambda r: (not r.tripped, r.outstanding), default=None)
        if chosen is not None and chosen.tripped:
            chosen.trial = True  # half-open: this call decides
            log.info("%s replica %s: trial call after its rest", self.service, chosen.url)
        return chosen

    def _succeeded(self, replica: Replica) -> None:
        if replica.tripped:
            log.warning("%s replica %s answered its trial call; back in use",
                        self.service, replica.url)
        replica.failures = 0
        replica.tripped = replica.trial = False

    def _failed(self, replica: Replica, why: str, *, at_once: bool = False,
                rest_s: float | None = None) -> None:
        """Count a failed call; eject the replica at ``breaker_failures`` in a row (or now)."""
        replica.failures += 1
        was_trial, replica.trial = replica.trial, False
        now = time.monotonic()
        if at_once or was_trial or replica.failures >= self.breaker_failures:
            replica.tripped = True
            rest = self.breaker_cooldown_s
            replica.ejected_until = max(replica.ejected_until, now + rest)
            log.warning(
                "%s replica %s ejected for %.3g s after %d failed call(s) in a row (%s)",
                self.service, replica.url, rest, replica.failures, why,
            )
        elif rest_s is not None:  # a 503: out of the rotation for as long as it asks
            replica.ejected_until = max(replica.ejected_until, now + rest_s)
            log.warning("%s replica %s: %s; paused for %.3g s",
                        self.service, replica.url, why, rest_s)
        else:
            log.warning("%s replica %s: %s (%d in a row)",
                        self.service, replica.url, why, replica.failures)

    def _release(self, replica: Replica) -> None:
        """A trial call that ended without a verdict (cancelled): the next call may try."""
        replica.trial = False

    def _retry_after_ejected(self) -> float:
        now = time.monotonic()
        waits = [r.ejected_until - now for r in self.replicas if r.ejected_until > now]
        return max(1.0, min(waits, default=RETRY_AFTER_UNREACHABLE_S))

    async def _read_facts(self, replica: Replica) -> None:
        """Read one replica's facts (config, then metadata versions); errors are kept."""
        try:
            read = await read_facts(
                self.http, replica.url, self.model_name, self.facts_type, self.output_specs,
                self._headers(),
            )
        except FactsUnreachableError as exc:  # down: ejected as a failed call would be
            self._failed(replica, f"unreachable ({exc})", at_once=True)
            return  # its facts stay stale: read again when it is back
        except FactsError as exc:
            if replica.facts_error != str(exc):
                log.warning("%s replica %s: bundle facts unreadable, out of rotation: %s",
                            self.service, replica.url, exc)
            replica.facts, replica.versions, replica.facts_error = None, frozenset(), str(exc)
        else:
            if replica.facts != read.facts or replica.facts_error is not None:
                log.info("%s replica %s: bundle facts read (bundle %s, version %s)",
                         self.service, replica.url, read.facts.name, read.facts.version)
            replica.facts, replica.versions, replica.facts_error = read.facts, read.versions, None
        replica.facts_stale = False

    def _agree(self) -> None:
        before = {r.url: r.disagreement_detail for r in self.replicas}
        self.agreed = agree(self.service, self.replicas, self.agreed)
        for replica in self.replicas:
            detail = replica.disagreement_detail
            if detail is not None and detail != before.get(replica.url):
                log.warning("%s; out of rotation", detail)

    async def _refresh_facts(self, wanted: Callable[[Replica], bool]) -> None:
        """Read the facts of every replica ``wanted`` picks (one reader at a time), then
        check agreement again."""
        if not any(wanted(r) for r in self.replicas):
            return
        async with self._facts_lock:
            todo = [r for r in self.replicas if wanted(r)]  # again: another reader may be done
            await asyncio.gather(*(self._read_facts(r) for r in todo))
            self._agree()

    def problems(self) -> dict[str, tuple[str, str]]:
        """``url -> (public text, detail with URLs)`` for each replica out of rotation
        because its facts cannot be read or disagree."""
        found: dict[str, tuple[str, str]] = {}
        for index, replica in enumerate(self.replicas, start=1):
            if replica.facts_error is not None:
                found[replica.url] = (
                    f"replica {index}: {replica.facts_error}",
                    f"{self.service} replica {replica.url}: {replica.facts_error}",
                )
            elif replica.disagreement is not None and replica.disagreement_detail is not None:
                found[replica.url] = (replica.disagreement, replica.disagreement_detail)
        return found

    def agreed_facts(self) -> F | None:
        """The facts of the replicas in rotation (None while none is)."""
        facts: F | None = next((r.facts for r in self.replicas if r.usable), None)
        return facts

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _note(self, outcome: str, started: float) -> None:
        if self.observe is not None:
            self.observe(self.service, outcome, time.perf_counter() - started)

    async def _post(
        self, replica: Replica, body: bytes, headers: dict[str, str], timeout_s: float
    ) -> httpx.Response:
        replica.outstanding += 1
        deadline = time.monotonic() + timeout_s
        try:
            for attempt in range(2):
                budget = deadline - time.monotonic()
                try:
                    return await self.http.post(
                        f"{replica.url}/v2/models/{self.model_name}/infer",
                        content=body,
                        headers=headers,
                        timeout=httpx.Timeout(budget, connect=min(CONNECT_TIMEOUT_S, budget)),
                    )
                except STALE_CONNECTION_ERRORS as exc:
                    if attempt or deadline - time.monotonic() < 0.05:
                        raise
                    log.info("%s replica %s: connection broke without an answer (%s); "
                             "asking once more", self.service, replica.url, type(exc).__name__)
            raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises
        finally:
            replica.outstanding -= 1

    async def infer(
        self,
        inputs: dict[str, np.ndarray],
        outputs: list[str],
        request_id: str,
        deadline: float | None = None,
    ) -> InferResult[F]:
        """Outputs of one infer; ``deadline`` is a ``time.monotonic()`` time or None."""
        await self._refresh_dns()
        now = time.monotonic()
        await self._refresh_facts(lambda r: r.facts_stale and r.available(now))
        tried: set[str] = set()
        last: UpstreamError | None = None
        started = time.perf_counter()
        for _attempt in range(min(2, len(self.replicas))):
            budget = self.timeout_s
            if deadline is not None:
                budget = min(budget, deadline - time.monotonic())
            if budget <= 0.01:
                self._note("timeout", started)
                raise UpstreamTimeoutError(self.service, "the request's deadline has passed")
            replica = self._pick(tried)
            if replica is None:
                break
            tried.add(replica.url)
            try:
                result = await self._attempt(replica, inputs, outputs, request_id, budget)
            except _Retry as retry:
                last = retry.error
                continue
            finally:
                self._release(replica)
            result.elapsed_ms = (time.perf_counter() - started) * 1000
            return result
        if last is None:  # nothing was tried: every replica rests or is out of rotation
            self._note("ejected", started)
            now = time.monotonic()
            problems = self.problems()
            waiting = [r for r in self.replicas if r.available(now) and r.url in problems]
            if waiting:  # facts unreadable or in disagreement: say which and why
                raise UpstreamUnavailableError(
                    self.service, "; ".join(problems[r.url][0] for r in waiting)
                )
            raise UpstreamUnavailableError(
                self.service, "every replica is ejected after failing",
                retry_after_s=self._retry_after_ejected(),
            )
        raise last

    async def _attempt(
        self, replica: Replica, inputs: dict[str, np.ndarray], outputs: list[str],
        request_id: str, budget: float,
    ) -> InferResult[F]:
        """One call to one replica: its result, :class:`_Retry` (try another), or an error."""
        # Triton's "timeout" parameter (us): the server drops the image past it.
        body, headers = oip.encode_request(
            inputs, outputs=outputs, request_id=request_id,
            parameters={contract.TIMEOUT_PARAMETER: int(budget * 1e6)},
        )
        headers.update({"X-Request-ID": request_id, **self._headers()})
        started = time.perf_counter()
        try:
            response = await self._post(replica, body, headers, budget)
        except httpx.ConnectTimeout as exc:
            replica.facts_stale = True  # it may come back restarted: read its facts again
            self._failed(replica, "connect timeout", at_once=True)
            self._note("unreachable", started)
            raise _Retry(UpstreamUnavailableError(
                self.service, "a replica did not accept the connection in time"
            )) from exc
        except httpx.TimeoutException as exc:
            if budget >= self.timeout_s:  # its own timeout, not the request's deadline
                self._failed(replica, f"no answer within {budget:.3g} s")
            self._note("timeout", started)
            raise UpstreamTimeoutError(self.service, f"no answer within {budget:.3g} s") from exc
        except httpx.TransportError as exc:
            replica.facts_stale = True
            self._failed(replica, f"unreachable ({type(exc).__name__})", at_once=True)
            self._note("unreachable", started)
            raise _Retry(UpstreamUnavailableError(
                self.service, f"cannot reach a replica ({type(exc).__name__})"
            )) from exc
        status = response.status_code
        if status == 503:  # loading (restarted?) or overloaded: its facts are read again
            replica.facts_stale = True
            pause = _retry_after(response.headers.get("Retry-After"), self.breaker_cooldown_s)
            self._failed(replica, "answered 503", rest_s=pause)
            self._note("unavailable", started)
            raise _Retry(UpstreamUnavailableError(
                self.service, "not ready or overloaded", retry_after_s=RETRY_AFTER_BUSY_S
            ))
        if status == 504:
            self._failed(replica, "answered 504")
            self._note("timeout", started)
            raise UpstreamTimeoutError(self.service, "timed out")
        if status != 200:
            log.warning("%s replica %s answered HTTP %d: %s",
                        self.service, replica.url, status, _error_text(response))
            self._note("error", started)
            error = UpstreamBadGatewayError(self.service, f"a replica failed (HTTP {status})")
            if status < 500:  # it refused our call: another replica would too
                raise error
            self._failed(replica, f"answered {status}")
            raise _Retry(error)
        try:
            version, tensors = self._decode(response, outputs)
            if replica.versions and version not in replica.versions:
                await self._facts_changed(replica, version, started)
            facts: F = replica.facts
            if self.check is not None:
                self.check(tensors, facts, inputs)
        except (oip.OipError, ValueError) as exc:  # contract.ContractError included
            log.warning("%s replica %s: invalid answer: %s", self.service, replica.url, exc)
            self._failed(replica, "invalid answer")
            self._note("malformed", started)
            raise _Retry(UpstreamInvalidAnswerError(self.service)) from exc
        self._succeeded(replica)
        self._note("ok", started)
        return InferResult(outputs=tensors, facts=facts, elapsed_ms=0.0, replica=replica.url)

    async def _facts_changed(self, replica: Replica, version: str | None, started: float) -> None:
        """An answer from a model version the replica's facts do not list: read them again;
        the answer is used only if the new facts list it and still agree (else retried)."""
        log.warning("%s replica %s answered as model version %r, not %s: reading its facts again",
                    self.service, replica.url, version, sorted(replica.versions))
        replica.facts_stale = True
        await self._refresh_facts(lambda r: r is replica and r.facts_stale)
        if not replica.usable or version not in replica.versions:
            self._note("unavailable", started)
            raise _Retry(UpstreamUnavailableError(
                self.service, "a replica's bundle changed; its answer was not used"
            ))

    def _decode(
        self, response: httpx.Response, outputs: list[str]
    ) -> tuple[str | None, dict[str, np.ndarray]]:
        """The answer's model version and the asked-for tensors; or OipError."""
        header_length = response.headers.get(oip.HEADER_LENGTH)
        try:
            length = int(header_length) if header_length else None
        except ValueError as exc:
            raise oip.OipError(f"{oip.HEADER_LENGTH} is not a number") from exc
        decoded, tensors = oip.decode_response(response.content, length)
        missing = [name for name in outputs if name not in tensors]
        if missing:
            raise oip.OipError(f"outputs {missing} missing from the answer")
        return decoded.model_version, tensors

    async def poll_readiness(self, timeout_s: float) -> dict[str, bool]:
        """Ask every replica at once whether it is ready; the answer is also cached."""

        async def ready(replica: Replica) -> bool:
            try:
                async with asyncio.timeout(timeout_s):  # the whole call, however it trickles
                    response = await self.http.get(
                        f"{replica.url}/v2/models/{self.model_name}/ready",
                        timeout=timeout_s, headers=self._headers(),
                    )
            except (httpx.HTTPError, TimeoutError):
                return False
            return response.status_code == 200

        await self._refresh_dns()
        replicas = list(self.replicas)
        states = await asyncio.gather(*(ready(replica) for replica in replicas))
        is_ready = {r.url: state for r, state in zip(replicas, states, strict=True)}
        for replica in replicas:
            if not is_ready[replica.url]:
                replica.facts_stale = True  # restarting, perhaps with another bundle
        # Ready with stale facts, or facts that could not be read: read them (again).
        await self._refresh_facts(
            lambda r: is_ready.get(r.url, False) and (r.facts_stale or r.facts_error is not None)
        )
        self._agree()  # a replica that went stale no longer takes part
        self.readiness = is_ready
        self.readiness_at = time.monotonic()
        return dict(self.readiness)

    def cached_readiness(self, max_age_s: float) -> dict[str, bool]:
        """``url -> ready`` from the last poll: a replica the breaker rests is not ready,
        and a poll older than ``max_age_s`` (the poller stopped) knows nothing."""
        now = time.monotonic()
        if now - self.readiness_at > max_age_s:
            return {replica.url: False for replica in self.replicas}
        resting = {r.url for r in self.replicas if r.state(now) == "open"}
        usable = {r.url for r in self.replicas if r.usable}
        return {
            url: ready and url not in resting and url in usable
            for url, ready in self.readiness.items()
        }

    async def replica_readiness(self, timeout_s: float = 2.0) -> dict[str, bool]:
        """``url -> ready`` for every replica, asked now (``/health``)."""
        return await self.poll_readiness(timeout_s)


class _Retry(Exception):  # noqa: N818 - control flow, never raised out of ModelClient
    """This replica failed in a way another replica may not: try the next one."""

    def __init__(self, error: UpstreamError) -> None:
        super().__init__(error.problem)
        self.error = error


def _retry_after(value: str | None, ceiling: float) -> float:
    """Seconds from a Retry-After header (delta form only), capped at ``ceiling``."""
    try:
        return max(0.0, min(float(value), ceiling)) if value else ceiling
    except ValueError:
        return ceiling


def _error_text(response: httpx.Response) -> str:
    """What a replica said (for the log only), cut short."""
    try:
        return str(response.json().get("error", response.text))[:300]
    except (ValueError, AttributeError):
        return response.text[:300]
