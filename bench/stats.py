"""One run's numbers: throughput, latency percentiles, mean per-stage times."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bench.loadgen import LoadResult
from bench.service_counters import ServiceRun

STAGES = ("decode", "classify", "detect", "merge", "render", "total")


@dataclass
class RunSummary:
    """One system at one concurrency."""

    system: str
    concurrency: int
    requests: int
    errors: int
    wall_s: float
    throughput: float  # successful answers per second
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    stages_ms: dict[str, float]  # mean of the server's timings_ms, plus "wait"
    rss_mb: dict[str, float] = field(default_factory=dict)  # max VmRSS during the run
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds per process tree
    services: dict[str, ServiceRun | None] = field(default_factory=dict)
    load_before: float | None = None
    load_after: float | None = None
    first_error: str | None = None
    repeat: int = 0
    detector_runs: float | None = None  # baseline only: mean detector runs per image


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values), q)) if values else None


def summarise(system: str, result: LoadResult) -> RunSummary:
    ok = result.ok
    latencies = [sample.latency_s * 1000 for sample in ok]
    stages: dict[str, float] = {}
    for stage in STAGES:
        values = [s.timings_ms[stage] for s in ok if stage in s.timings_ms]
        if values:
            stages[stage] = float(np.mean(values))
    # "wait": client latency not spent inside the server's own pipeline (upload transfer,
    # the listen backlog of a one-at-a-time server, admission).
    waits = [s.latency_s * 1000 - s.timings_ms["total"] for s in ok if "total" in s.timings_ms]
    if waits:
        stages["wait"] = float(np.mean(waits))
    errors = [sample for sample in result.samples if not sample.ok]
    runs = [s.detector_runs for s in ok if s.detector_runs is not None]
    return RunSummary(
        system=system,
        concurrency=result.concurrency,
        requests=len(result.samples),
        errors=len(errors),
        wall_s=result.wall_s,
        throughput=len(ok) / result.wall_s if result.wall_s > 0 else 0.0,
        p50_ms=percentile(latencies, 50),
        p95_ms=percentile(latencies, 95),
        p99_ms=percentile(latencies, 99),
        stages_ms=stages,
        first_error=(f"{errors[0].status}: {errors[0].error}" if errors else None),
        detector_runs=float(np.mean(runs)) if runs else None,
    )
