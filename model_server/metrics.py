"""The model server's Prometheus metrics, in Triton's names where they mean the same.

``nv_inference_*`` counters and ``nv_gpu_memory_*`` gauges match what a Triton server
exports, so dashboards written for Triton read these services too; ``spine_*`` adds
histograms Triton does not have (batch size, queue and compute time per image), and
the model's state (ready, failed loads), read from the model at scrape time.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from model_server.batching import BatchStats
from shared.observability import HttpMetrics


class GpuMemoryGauges:
    """Triton's GPU memory gauges per device, plus what this process's tensors hold."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.used = Gauge(
            "nv_gpu_memory_used_bytes", "GPU memory in use (whole device)", ["gpu_uuid"],
            registry=registry,
        )
        self.total = Gauge(
            "nv_gpu_memory_total_bytes", "GPU memory of the device", ["gpu_uuid"],
            registry=registry,
        )
        self.allocated = Gauge(
            "spine_gpu_memory_allocated_bytes", "GPU memory held by this process's tensors",
            ["gpu_uuid"], registry=registry,
        )

    def observe(self) -> None:
        """Read at scrape time; nothing when torch has no CUDA device."""
        torch = sys.modules.get("torch")  # never import torch here: the model did, or no GPU
        if torch is None or not torch.cuda.is_available():
            return
        for index in range(torch.cuda.device_count()):
            try:
                free, total = torch.cuda.mem_get_info(index)
                name = str(getattr(torch.cuda.get_device_properties(index), "uuid", index))
            except Exception:  # noqa: BLE001 - metrics must never break the scrape
                continue
            self.used.labels(name).set(total - free)
            self.total.labels(name).set(total)
            self.allocated.labels(name).set(torch.cuda.memory_allocated(index))


class ModelState(Protocol):
    """What the state metrics read of the served model (the model repository: its
    serving bundle's readiness, and the loads that failed at start-up and in swaps)."""

    @property
    def name(self) -> str: ...
    @property
    def ready(self) -> bool: ...
    @property
    def load_failures(self) -> int: ...


class ModelStateCollector(Collector):
    """``spine_model_ready`` and ``spine_model_load_failures_total``, read at scrape time,
    so a load that fails before the first scrape is still seen (alerts key off them)."""

    def __init__(self, model: ModelState) -> None:
        self.model = model

    def collect(self) -> Iterator[Metric]:
        ready = GaugeMetricFamily(
            "spine_model_ready", "1 once the bundle is loaded and served, 0 while loading "
            "or after a failed load", labels=["model"],
        )
        ready.add_metric([self.model.name], 1.0 if self.model.ready else 0.0)
        failures = CounterMetricFamily(
            "spine_model_load_failures", "Bundle loads that failed (the reason: "
            "/v2/health/ready and the log)", labels=["model"],
        )
        failures.add_metric([self.model.name], float(self.model.load_failures))
        yield ready
        yield failures


class ModelMetrics:
    """Prometheus metrics in Triton's naming where they mean the same thing."""

    def __init__(self, model: str) -> None:
        self.registry = CollectorRegistry()
        labels = ["model", "version"]
        self.labels = {"model": model, "version": "1"}
        self.success = Counter(
            "nv_inference_request_success", "Successful inference requests", labels,
            registry=self.registry,
        )
        self.failure = Counter(
            "nv_inference_request_failure", "Failed inference requests", labels + ["reason"],
            registry=self.registry,
        )
        self.count = Counter(
            "nv_inference_count", "Images inferred", labels, registry=self.registry
        )
        self.exec_count = Counter(
            "nv_inference_exec_count", "Batches executed", labels, registry=self.registry
        )
        self.queue_us = Counter(
            "nv_inference_queue_duration_us", "Cumulative queue time (us)", labels,
            registry=self.registry,
        )
        self.compute_us = Counter(
            "nv_inference_compute_infer_duration_us", "Cumulative compute time (us)", labels,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "spine_batch_size", "Images per executed batch", labels,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry,
        )
        self.request_seconds = Histogram(
            "spine_request_duration_seconds", "Infer request latency", labels,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "spine_queue_depth", "Images waiting for a batch", labels, registry=self.registry
        )
        self.pending = Gauge(
            "nv_inference_pending_request_count", "Images waiting for a batch (Triton name)",
            labels, registry=self.registry,
        )
        self.request_us = Counter(
            "nv_inference_request_duration_us", "Cumulative infer request time (us)", labels,
            registry=self.registry,
        )
        self.queue_seconds = Histogram(
            "spine_queue_duration_seconds", "Time one image waited for its batch", labels,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.compute_seconds = Histogram(
            "spine_compute_duration_seconds", "Model execution time of one batch", labels,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.http = HttpMetrics(self.registry)
        self.gpus = GpuMemoryGauges(self.registry)

    def watch_model(self, model: ModelState) -> None:
        """Export ``model``'s readiness and failed loads with the other metrics."""
        self.registry.register(ModelStateCollector(model))

    def set_queue_depth(self, depth: int) -> None:
        self.queue_depth.labels(**self.labels).set(depth)
        self.pending.labels(**self.labels).set(depth)

    def observe_gpus(self) -> None:
        self.gpus.observe()

    def observe_batch(self, stats: BatchStats) -> None:
        self.exec_count.labels(**self.labels).inc()
        self.count.labels(**self.labels).inc(stats.size)
        self.batch_size.labels(**self.labels).observe(stats.size)
        self.queue_us.labels(**self.labels).inc(sum(stats.queue_seconds) * 1e6)
        self.compute_us.labels(**self.labels).inc(stats.compute_seconds * 1e6)
        self.compute_seconds.labels(**self.labels).observe(stats.compute_seconds)
        for waited in stats.queue_seconds:
            self.queue_seconds.labels(**self.labels).observe(waited)

    def fail(self, reason: str) -> None:
        self.failure.labels(**self.labels, reason=reason).inc()

    def observe_request(self, seconds: float) -> None:
        self.success.labels(**self.labels).inc()
        self.request_seconds.labels(**self.labels).observe(seconds)
        self.request_us.labels(**self.labels).inc(seconds * 1e6)

    def exposition(self, queue_depth: int) -> bytes:
        """The scrape: queue depth and GPU memory read now, then every metric."""
        self.set_queue_depth(queue_depth)
        self.observe_gpus()
        return generate_latest(self.registry)
