"""OIP clients for the model services: replicas, timeouts, one retry elsewhere.

Each model service may run as several replicas (a list of URLs). A call goes to the
replica with the fewest requests in flight; a replica that refuses connections or
answers 503 is ejected for a while and the (idempotent) infer is retried once on
another. Read timeouts are not retried: the caller's deadline is already spent.
Every call is bounded by the service's timeout and by the request's deadline, whichever
comes first, and tells the model server how long it may take (Triton's ``timeout``
parameter), so the server drops the image instead of computing an answer nobody reads.

A URL written ``dns+http://name:port`` stands for every address ``name`` resolves to
(re-resolved every few seconds): with ``docker compose --scale classifier=3`` or a
Kubernetes headless Service, each replica is balanced individually.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx
import numpy as np

from shared import contract, oip
from shared.errors import ServiceError

log = logging.getLogger(__name__)

EJECT_SECONDS = 5.0
DNS_REFRESH_SECONDS = 10.0
DNS_PREFIX = "dns+"
CONNECT_TIMEOUT_S = 2.0
# One pool for every model call of a gateway: far above what admission lets in at once
# (MAX_INFLIGHT_UPLOADS=32 uploads x 2 services, plus one retry each), so the pool never
# queues an admitted upload; idle keep-alive connections beyond 50 are closed.
MAX_CONNECTIONS = 200
MAX_KEEPALIVE_CONNECTIONS = 50
# Retry advice for the gateway's client when no replica could answer: a replica that
# answered 503 (loading or overloaded) is worth asking again soon; an unreachable one is not.
RETRY_AFTER_BUSY_S = 1
RETRY_AFTER_UNREACHABLE_S = 5
# Observer of every attempt: (service, outcome, seconds). Outcomes: ok, timeout,
# unreachable, unavailable (503), error (other status), malformed.
AttemptObserver = Callable[[str, str, float], None]
# The facts a model's infer responses carry (shared.contract), decoded on arrival.
F = TypeVar("F", bound=contract.ServedFacts)


class UpstreamError(ServiceError):
    """A model service could not answer (503, retry in 5 s unless said otherwise).

    ``problem`` says what went wrong ("detector service: ..."), for logs and for the
    warning of a response that goes on without the detector; ``message`` is the answer
    to a request that ends here: without the classifier no diagnosis is made.
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


@dataclass
class Replica:
    url: str
    outstanding: int = 0
    ejected_until: float = 0.0

    def available(self, now: float) -> bool:
        return now >= self.ejected_until


@dataclass
class InferResult(Generic[F]):
    outputs: dict[str, np.ndarray]
    facts: F
    elapsed_ms: float
    replica: str


@dataclass
class ModelClient(Generic[F]):
    """Calls one model (by OIP name) on any of its replicas; ``facts_type`` decodes its answers."""

    service: str
    model_name: str
    urls: list[str]
    http: httpx.AsyncClient
    timeout_s: float
    facts_type: type[F] = field(kw_only=True)
    token: str | None = None
    observe: AttemptObserver | None = None
    replicas: list[Replica] = field(init=False)
    _resolved_at: float = field(init=False, default=float("-inf"))

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
        now = time.monotonic()
        candidates = [r for r in self.replicas if r.url not in exclude and r.available(now)]
        if not candidates:  # every replica ejected: try the least recently ejected anyway
            candidates = [r for r in self.replicas if r.url not in exclude]
        return min(candidates, key=lambda r: (r.outstanding, r.ejected_until), default=None)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _note(self, outcome: str, started: float) -> None:
        if self.observe is not None:
            self.observe(self.service, outcome, time.perf_counter() - started)

    async def _post(
        self, replica: Replica, body: bytes, headers: dict[str, str], timeout_s: float
    ) -> httpx.Response:
        replica.outstanding += 1
        try:
            return await self.http.post(
                f"{replica.url}/v2/models/{self.model_name}/infer",
                content=body,
                headers=headers,
                timeout=httpx.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s)),
            )
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
        tried: set[str] = set()
        last_problem = "no replica available"
        retry_after_s = RETRY_AFTER_UNREACHABLE_S
        started = time.perf_counter()
        for _attempt in range(min(2, len(self.replicas))):
            replica = self._pick(tried)
            if replica is None:
                break
            budget = self.timeout_s
            if deadline is not None:
                budget = min(budget, deadline - time.monotonic())
            if budget <= 0.01:
                self._note("timeout", started)
                raise UpstreamTimeoutError(self.service, "the request's deadline has passed")
            tried.add(replica.url)
            # Triton's "timeout" parameter (us): the server drops the image past it.
            body, headers = oip.encode_request(
                inputs, outputs=outputs, request_id=request_id,
                parameters={contract.TIMEOUT_PARAMETER: int(budget * 1e6)},
            )
            headers.update({"X-Request-ID": request_id, **self._headers()})
            attempt_started = time.perf_counter()
            try:
                response = await self._post(replica, body, headers, budget)
            except httpx.ConnectTimeout:
                replica.ejected_until = time.monotonic() + EJECT_SECONDS
                last_problem = "a replica did not accept the connection in time"
                retry_after_s = RETRY_AFTER_UNREACHABLE_S
                log.warning("%s replica %s: connect timeout; ejected", self.service, replica.url)
                self._note("unreachable", attempt_started)
                continue
            except httpx.TimeoutException as exc:
                self._note("timeout", attempt_started)
                raise UpstreamTimeoutError(
                    self.service, f"no answer within {budget:.3g} s"
                ) from exc
            except httpx.TransportError as exc:
                replica.ejected_until = time.monotonic() + EJECT_SECONDS
                last_problem = f"cannot reach a replica ({type(exc).__name__})"
                retry_after_s = RETRY_AFTER_UNREACHABLE_S
                log.warning(
                    "%s replica %s unreachable (%s); ejected",
                    self.service, replica.url, type(exc).__name__,
                )
                self._note("unreachable", attempt_started)
                continue
            if response.status_code == 503:
                # Overloaded or loading: out of the rotation for as long as it asks.
                pause = _retry_after(response.headers.get("Retry-After"), EJECT_SECONDS)
                replica.ejected_until = time.monotonic() + pause
                last_problem = "not ready or overloaded"
                retry_after_s = RETRY_AFTER_BUSY_S
                log.warning("%s replica %s answered 503; ejected for %.1f s",
                            self.service, replica.url, pause)
                self._note("unavailable", attempt_started)
                continue
            if response.status_code != 200:
                # The replica's own message stays in our log (under this request's id):
                # it may name files, classes or devices, none of the client's business.
                log.warning("%s replica %s answered HTTP %d: %s", self.service, replica.url,
                            response.status_code, _error_text(response))
            if response.status_code == 504:
                self._note("timeout", attempt_started)
                raise UpstreamTimeoutError(self.service, "timed out")
            if response.status_code != 200:
                self._note("error", attempt_started)
                raise UpstreamError(self.service, f"HTTP {response.status_code}")
            try:
                tensors, facts = self._decode(response, outputs)
            except (oip.OipError, ValueError) as exc:  # contract.ContractError included
                self._note("malformed", attempt_started)
                raise UpstreamError(self.service, f"malformed response: {exc}") from exc
            self._note("ok", attempt_started)
            return InferResult(
                outputs=tensors,
                facts=facts,
                elapsed_ms=(time.perf_counter() - started) * 1000,
                replica=replica.url,
            )
        raise UpstreamUnavailableError(self.service, last_problem, retry_after_s=retry_after_s)

    def _decode(
        self, response: httpx.Response, outputs: list[str]
    ) -> tuple[dict[str, np.ndarray], F]:
        """The asked-for tensors and the model's facts, or OipError/ContractError."""
        header_length = response.headers.get(oip.HEADER_LENGTH)
        decoded, tensors = oip.decode_response(
            response.content, int(header_length) if header_length else None
        )
        missing = [name for name in outputs if name not in tensors]
        if missing:
            raise oip.OipError(f"outputs {missing} missing from the answer")
        return tensors, self.facts_type.from_parameters(decoded.parameters)

    async def replica_readiness(self) -> dict[str, bool]:
        """``url -> ready`` for every replica, asked concurrently with a short timeout."""

        async def ready(replica: Replica) -> bool:
            try:
                response = await self.http.get(
                    f"{replica.url}/v2/models/{self.model_name}/ready",
                    timeout=2.0, headers=self._headers(),
                )
            except httpx.HTTPError:
                return False
            return response.status_code == 200

        await self._refresh_dns()
        states = await asyncio.gather(*(ready(replica) for replica in self.replicas))
        return {replica.url: state for replica, state in zip(self.replicas, states, strict=True)}

    async def model_parameters(self) -> dict[str, Any] | None:
        """The metadata ``parameters`` (bundle facts) of the first replica that answers."""
        for replica in self.replicas:
            try:
                response = await self.http.get(
                    f"{replica.url}/v2/models/{self.model_name}",
                    timeout=2.0, headers=self._headers(),
                )
            except httpx.HTTPError:
                continue
            if response.status_code == 200:
                return response.json().get("parameters", {})
        return None


def _retry_after(value: str | None, ceiling: float) -> float:
    """Seconds from a Retry-After header (delta form only), capped at ``ceiling``."""
    try:
        return max(0.0, min(float(value), ceiling)) if value else ceiling
    except ValueError:
        return ceiling


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", response.text))[:300]
    except ValueError:
        return response.text[:300]
