"""What the model services say about a run: queue time, compute time, batch sizes.

The gateway's ``timings_ms.classify`` is the whole round trip (upload of the tensor,
queue, batch compute, answer); the services' Prometheus counters (Triton's names) split
it. Scraped before and after a run; the difference belongs to that run.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

COUNTERS = (
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_infer_duration_us",
)


def parse_counters(text: str) -> dict[str, float]:
    """Sum of each wanted counter over its label sets (``_total`` suffix accepted)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0].removesuffix("_total")
        if name in COUNTERS:
            try:
                values[name] = values.get(name, 0.0) + float(value)
            except ValueError:
                continue
    return values


def scrape(base_url: str) -> dict[str, float] | None:
    """The counters (empty before the first inference), or None when unreachable."""
    try:
        response = httpx.get(f"{base_url}/metrics", timeout=5.0)
    except httpx.HTTPError:
        return None
    return parse_counters(response.text) if response.status_code == 200 else None


@dataclass(frozen=True)
class ServiceRun:
    """One model service over one run."""

    images: float
    batches: float
    queue_ms_per_image: float | None
    compute_ms_per_batch: float | None

    @property
    def mean_batch(self) -> float | None:
        return self.images / self.batches if self.batches else None


def difference(
    before: dict[str, float] | None, after: dict[str, float] | None
) -> ServiceRun | None:
    if before is None or after is None:
        return None
    delta = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in COUNTERS}
    images, batches = delta["nv_inference_count"], delta["nv_inference_exec_count"]
    return ServiceRun(
        images=images,
        batches=batches,
        queue_ms_per_image=(
            delta["nv_inference_queue_duration_us"] / images / 1000 if images else None
        ),
        compute_ms_per_batch=(
            delta["nv_inference_compute_infer_duration_us"] / batches / 1000 if batches else None
        ),
    )
