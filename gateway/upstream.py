"""OIP clients for the model services: replicas, timeouts, one retry elsewhere.

Each model service may run as several replicas (a list of URLs). A call goes to the
replica with the fewest requests in flight; a replica that refuses connections or
answers 503 is ejected for a while and the (idempotent) infer is retried once on
another. Timeouts are not retried: the caller's deadline is already spent.

A URL written ``dns+http://name:port`` stands for every address ``name`` resolves to
(re-resolved every few seconds): with ``docker compose --scale classifier=3`` or a
Kubernetes headless Service, each replica is balanced individually.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from shared import oip

log = logging.getLogger(__name__)

EJECT_SECONDS = 5.0
DNS_REFRESH_SECONDS = 10.0
DNS_PREFIX = "dns+"


class UpstreamError(RuntimeError):
    """A model service could not answer; ``status_code`` is what the gateway returns."""

    status_code = 503

    def __init__(self, service: str, message: str) -> None:
        super().__init__(f"{service} service: {message}")
        self.service = service


class UpstreamUnavailableError(UpstreamError):
    status_code = 503


class UpstreamTimeoutError(UpstreamError):
    status_code = 504


@dataclass
class Replica:
    url: str
    outstanding: int = 0
    ejected_until: float = 0.0

    def available(self, now: float) -> bool:
        return now >= self.ejected_until


@dataclass
class InferResult:
    outputs: dict[str, np.ndarray]
    parameters: dict[str, Any]
    elapsed_ms: float
    replica: str


@dataclass
class ModelClient:
    """Calls one model (by OIP name) on any of its replicas."""

    service: str
    model_name: str
    urls: list[str]
    http: httpx.AsyncClient
    timeout_s: float
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

    async def _post(self, replica: Replica, body: bytes, headers: dict[str, str]) -> httpx.Response:
        replica.outstanding += 1
        try:
            return await self.http.post(
                f"{replica.url}/v2/models/{self.model_name}/infer",
                content=body,
                headers=headers,
                timeout=httpx.Timeout(self.timeout_s, connect=min(2.0, self.timeout_s)),
            )
        finally:
            replica.outstanding -= 1

    async def infer(
        self, inputs: dict[str, np.ndarray], outputs: list[str], request_id: str
    ) -> InferResult:
        body, headers = oip.encode_request(inputs, outputs=outputs, request_id=request_id)
        headers["X-Request-ID"] = request_id
        await self._refresh_dns()
        tried: set[str] = set()
        last_problem = "no replica available"
        started = time.perf_counter()
        for _attempt in range(min(2, len(self.replicas))):
            replica = self._pick(tried)
            if replica is None:
                break
            tried.add(replica.url)
            try:
                response = await self._post(replica, body, headers)
            except httpx.TimeoutException as exc:
                raise UpstreamTimeoutError(
                    self.service, f"no answer within {self.timeout_s:g} s"
                ) from exc
            except httpx.TransportError as exc:
                replica.ejected_until = time.monotonic() + EJECT_SECONDS
                last_problem = f"cannot reach {replica.url} ({type(exc).__name__})"
                log.warning("%s replica %s unreachable; ejected", self.service, replica.url)
                continue
            if response.status_code == 503:
                replica.ejected_until = time.monotonic() + EJECT_SECONDS
                last_problem = f"{replica.url} is not ready or overloaded"
                continue
            if response.status_code != 200:
                raise UpstreamError(
                    self.service, f"HTTP {response.status_code}: {_error_text(response)}"
                )
            header_length = response.headers.get(oip.HEADER_LENGTH)
            try:
                decoded, tensors = oip.decode_response(
                    response.content, int(header_length) if header_length else None
                )
            except (oip.OipError, ValueError) as exc:
                raise UpstreamError(self.service, f"malformed response: {exc}") from exc
            return InferResult(
                outputs=tensors,
                parameters=decoded.parameters,
                elapsed_ms=(time.perf_counter() - started) * 1000,
                replica=replica.url,
            )
        raise UpstreamUnavailableError(self.service, last_problem)

    async def replica_readiness(self) -> dict[str, bool]:
        """``url -> ready`` for every replica, asked concurrently with a short timeout."""

        async def ready(replica: Replica) -> bool:
            try:
                response = await self.http.get(
                    f"{replica.url}/v2/models/{self.model_name}/ready", timeout=2.0
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
                    f"{replica.url}/v2/models/{self.model_name}", timeout=2.0
                )
            except httpx.HTTPError:
                continue
            if response.status_code == 200:
                return response.json().get("parameters", {})
        return None


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", response.text))[:300]
    except ValueError:
        return response.text[:300]
