"""The gateway's Prometheus metrics, one registry per app (tests build several apps).

HTTP requests by route and status, latency and in-flight come from
:class:`shared.observability.HttpMetrics`; this adds what only the gateway sees:
decode time, each model service's latency and outcome, analysis results, refusals.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.observability import LATENCY_BUCKETS, HttpMetrics


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http = HttpMetrics(self.registry)
        self.decode_seconds = Histogram(
            "spine_decode_duration_seconds", "DICOM bytes -> canonical image",
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.upstream_seconds = Histogram(
            "spine_upstream_request_duration_seconds",
            "One attempt at a model service, by service and outcome",
            ["service", "outcome"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.upstream_attempts = Counter(
            "spine_upstream_requests_total",
            "Attempts at a model service by outcome (ok, timeout, unreachable, unavailable, "
            "error, malformed, ejected)",
            ["service", "outcome"], registry=self.registry,
        )
        self.analyses = Counter(
            "spine_analyses_total",
            "Finished /upload analyses: complete, partial (no detections), error, cancelled",
            ["result"], registry=self.registry,
        )
        self.rejections = Counter(
            "spine_rejected_requests_total",
            "Requests refused before any work: unauthenticated, rate_limited, "
            "client_concurrency, overloaded",
            ["reason"], registry=self.registry,
        )
        self.uploads_in_flight = Gauge(
            "spine_uploads_in_flight", "Uploads admitted and not yet answered",
            registry=self.registry,
        )

    def observe_attempt(self, service: str, outcome: str, seconds: float) -> None:
        self.upstream_attempts.labels(service, outcome).inc()
        self.upstream_seconds.labels(service, outcome).observe(seconds)
