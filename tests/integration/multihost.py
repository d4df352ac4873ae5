"""The real services on test hosts (tests/peers/hosts.py), and a bounded load to count.

Each service binds its host's address, beyond loopback, so it runs as in production:
the model services require the internal token, the gateway a real pseudonym secret, and
its ``/health`` details need an operator key (the test holds one).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.integration.stack import Service, base_env, start_service, wait_ready
from tests.peers.hosts import Host

MODEL_PORTS = {"classifier": 8001, "detector": 8002}
GATEWAY_PORT = 8000


@dataclass(frozen=True)
class Secrets:
    """The secrets of one multi-host stack (made per test: never a published value)."""

    internal_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    pseudonym_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    operator_key: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    @property
    def operator_header(self) -> dict[str, str]:
        return {"X-API-Key": self.operator_key}

    def operator_keys_sha256(self) -> str:
        return f"tests:{hashlib.sha256(self.operator_key.encode()).hexdigest()}"


def start_model_service(
    host: Host, kind: str, bundle: Path, root: Path, keys: Secrets, **env: str
) -> Service:
    """``spine classifier|detector`` on ``host``'s address (started, not yet ready)."""
    folder = root / host.name
    folder.mkdir(parents=True, exist_ok=True)
    service = start_service(
        kind, base_env(folder, MODEL_DIR=str(bundle), INTERNAL_TOKEN=keys.internal_token, **env),
        folder, MODEL_PORTS[kind], bind=host.address, wrap=host.command([]), label=host.name,
    )
    host.processes.append(service.process)
    return service


def start_gateway(
    host: Host, root: Path, keys: Secrets, *, classifiers: str, detectors: str, **env: str
) -> Service:
    """``spine gateway`` on ``host``'s address, calling the model services given."""
    folder = root / host.name
    folder.mkdir(parents=True, exist_ok=True)
    service = start_service(
        "gateway",
        base_env(folder, CLASSIFIER_URLS=classifiers, DETECTOR_URLS=detectors,
                 INTERNAL_TOKEN=keys.internal_token, PSEUDONYM_SECRET=keys.pseudonym_secret,
                 OPERATOR_KEYS_SHA256=keys.operator_keys_sha256(), **env),
        folder, GATEWAY_PORT, bind=host.address, wrap=host.command([]), label=host.name,
    )
    host.processes.append(service.process)
    return service


def wait_all_ready(*services: Service) -> None:
    for service in services:
        wait_ready(service)


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples in a Prometheus ``text`` whose labels include
    ``labels`` (0 when there is none)."""
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    total = 0.0
    for line in text.splitlines():
        if line.startswith((f"{name}{{", f"{name} ")) and all(w in line for w in wanted):
            total += float(line.rsplit(" ", 1)[1])
    return total


def served(model: Service) -> float:
    """Successful infer requests a model service answered (its ``/metrics``)."""
    text = httpx.get(f"{model.url}/metrics", timeout=10).text
    return metric(text, "nv_inference_request_success_total")


def in_rotation(gateway: Service, service: str) -> int:
    """Replicas of ``service`` the gateway sends calls to now (``spine_upstream_replicas``
    state ``ready``:
    read from its state, no call made)."""
    text = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    return int(metric(text, "spine_upstream_replicas", service=service, state="ready"))


def attempts(gateway: Service, service: str) -> Counter[str]:
    """The gateway's attempts at ``service`` so far, by outcome (ok, timeout, ...)."""
    text = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    outcomes = ("ok", "timeout", "unreachable", "unavailable", "error", "malformed", "ejected")
    counts = {o: int(metric(text, "spine_upstream_requests_total", service=service, outcome=o))
              for o in outcomes}
    return Counter({o: n for o, n in counts.items() if n})


@dataclass
class Answer:
    started: float  # time.monotonic()
    seconds: float
    status: int  # 0: no HTTP answer (connection error or client timeout)


@dataclass
class Load:
    """``concurrency`` clients each posting ``body`` to ``url`` until :meth:`stop`
    (at most ``limit`` requests in all): every answer kept with its status."""

    url: str
    body: bytes
    concurrency: int = 8
    timeout_s: float = 120.0
    limit: int = 2000
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _sent: int = 0

    def start(self) -> None:
        for n in range(self.concurrency):
            thread = threading.Thread(target=self._client, name=f"load-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> Counter[int]:
        """Stop sending, wait for the requests in flight; the answers by status."""
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout_s + 10)
        return self.by_status()

    def by_status(self, since: float = float("-inf")) -> Counter[int]:
        with self._lock:
            return Counter(a.status for a in self.answers if a.started >= since)

    def slowest(self, since: float = float("-inf")) -> float:
        """Seconds the slowest answer to a request sent since ``since`` took."""
        with self._lock:
            return max((a.seconds for a in self.answers if a.started >= since), default=0.0)

    def count(self) -> int:
        with self._lock:
            return len(self.answers)

    def wait_for(self, more: int, timeout_s: float = 300.0) -> None:
        """Until ``more`` answers beyond the present ones have come back."""
        target = self.count() + more
        deadline = time.monotonic() + timeout_s
        while self.count() < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"load stalled: {self.count()} of {target} answers")
            time.sleep(0.1)

    def _take(self) -> bool:
        with self._lock:
            if self._stop.is_set() or self._sent >= self.limit:
                return False
            self._sent += 1
            return True

    def _client(self) -> None:
        with httpx.Client(timeout=self.timeout_s) as client:
            while self._take():
                started = time.monotonic()
                try:
                    status = client.post(
                        self.url, files={"file": ("x.dcm", self.body, "application/dicom")},
                        params={"annotate": "false"},
                    ).status_code
                except httpx.HTTPError:
                    status = 0
                with self._lock:
                    self.answers.append(Answer(started, time.monotonic() - started, status))
