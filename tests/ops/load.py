"""A bounded load of concurrent uploads on loopback, with a hook to inject a fault mid-way."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ops"


@dataclass
class Outcome:
    index: int
    status: int  # 0 = no answer (client timeout or connection error)
    seconds: float
    started_after_fault: bool
    body: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def run_load(
    url: str,
    data: bytes,
    *,
    requests: int,
    concurrency: int,
    client_timeout_s: float,
    fault_after: int | None = None,
    fault: Callable[[], None] | None = None,
) -> list[Outcome]:
    """POST ``data`` to ``url`` ``requests`` times, ``concurrency`` at a time.

    When ``fault_after`` answers have arrived, ``fault()`` runs once (while the rest are
    in flight). Every request has a client-side timeout, so a hang shows up as status 0.
    """
    client: httpx.Client
    done = 0
    fired = threading.Event()
    lock = threading.Lock()

    def one(index: int) -> Outcome:
        nonlocal done
        after = fired.is_set()
        started = time.perf_counter()
        try:
            response = client.post(
                url, files={"file": ("x.dcm", data, "application/dicom")},
                params={"annotate": "false"},
            )
            status = response.status_code
            try:
                body = response.json()
            except ValueError:
                body = {}
            outcome = Outcome(index, status, time.perf_counter() - started, after, body)
            outcome.body["_retry_after"] = response.headers.get("Retry-After")
        except httpx.HTTPError as exc:
            outcome = Outcome(index, 0, time.perf_counter() - started, after, error=repr(exc))
        with lock:
            done += 1
            trigger = fault is not None and fault_after is not None and done == fault_after
        if trigger and fault is not None:
            fault()
            fired.set()
        return outcome

    limits = httpx.Limits(max_connections=concurrency)
    with (
        httpx.Client(timeout=client_timeout_s, limits=limits) as client,
        ThreadPoolExecutor(max_workers=concurrency) as pool,
    ):
        return list(pool.map(one, range(requests)))


def summarize(outcomes: list[Outcome]) -> dict[str, Any]:
    statuses = Counter(o.status for o in outcomes)
    partial = sum(1 for o in outcomes if o.status == 200 and o.body.get("detections") is None)
    return {
        "sent": len(outcomes),
        "answered": sum(1 for o in outcomes if o.status),
        "by_status": {str(k): v for k, v in sorted(statuses.items())},
        "partial_200_without_detections": partial,
        "longest_latency_s": round(max(o.seconds for o in outcomes), 3),
        "longest_latency_after_fault_s": round(
            max((o.seconds for o in outcomes if o.started_after_fault), default=0.0), 3
        ),
    }


def record(name: str, figures: dict[str, Any]) -> None:
    """Keep the figures for the report (test-artifacts/ops/NAME.json) and print them."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{name}.json").write_text(json.dumps(figures, indent=2))
    print(f"\n[{name}] {json.dumps(figures)}")
