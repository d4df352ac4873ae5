"""Closed-loop HTTP load: ``concurrency`` clients, each uploading as soon as its last
answer came back, until ``requests`` answers are in.

Closed loop because that is how a PACS router or a batch script drives such a service;
throughput is answers per wall-clock second of the whole run, latency is per request as
the client saw it (connect, upload, queue, compute, answer).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field

import httpx

from bench.dicoms import Upload


@dataclass
class Sample:
    """One request as the client saw it."""

    upload: str
    status: int
    latency_s: float
    timings_ms: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    detector_runs: int | None = None  # the baseline says how often it ran the detector

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None


@dataclass
class LoadResult:
    concurrency: int
    wall_s: float
    samples: list[Sample]

    @property
    def ok(self) -> list[Sample]:
        return [sample for sample in self.samples if sample.ok]


async def _one(
    client: httpx.AsyncClient, url: str, upload: Upload, params: dict[str, str]
) -> Sample:
    started = time.perf_counter()
    try:
        files = {"file": (f"{upload.name}.dcm", upload.data, "application/dicom")}
        response = await client.post(url, params=params, files=files)
    except httpx.HTTPError as exc:
        return Sample(upload.name, 0, time.perf_counter() - started, error=f"{type(exc).__name__}")
    latency = time.perf_counter() - started
    timings: dict[str, float] = {}
    error = None
    runs = None
    try:
        body = response.json()
        timings = {k: float(v) for k, v in (body.get("timings_ms") or {}).items() if v is not None}
        runs = (body.get("baseline") or {}).get("detector_runs")
        if response.status_code != 200:
            error = str(body.get("message", body))[:200]
    except ValueError:
        error = response.text[:200] if response.status_code != 200 else "answer is not JSON"
    return Sample(upload.name, response.status_code, latency, timings, error, runs)


async def run_load(
    url: str,
    uploads: list[Upload],
    *,
    concurrency: int,
    requests: int,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 600.0,
) -> LoadResult:
    """``requests`` uploads (round-robin over ``uploads``) from ``concurrency`` clients."""
    if concurrency < 1 or requests < 1:
        raise ValueError("concurrency and requests must be >= 1")
    order = itertools.cycle(uploads)
    remaining = iter(range(requests))
    samples: list[Sample] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits, headers=headers) as client:

        async def worker() -> None:
            for _ in remaining:  # shared iterator: stops when all requests are taken
                samples.append(await _one(client, url, next(order), params or {}))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return LoadResult(concurrency, wall, samples)


def load(url: str, uploads: list[Upload], **kwargs: object) -> LoadResult:
    """Synchronous wrapper for callers outside an event loop."""
    return asyncio.run(run_load(url, uploads, **kwargs))  # type: ignore[arg-type]
