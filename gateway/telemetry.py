"""The gateway's Prometheus metrics, one registry per app (tests build several apps).

HTTP requests by route and status, latency and in-flight come from
:class:`shared.observability.HttpMetrics`; this adds what only the gateway sees:
decode time and refusals, each model service's latency and outcome, its replicas in
and out of rotation and ejections, analysis results, refusals. The alert rules of
deploy/prometheus/ read these names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shared import dicom
from shared.observability import LATENCY_BUCKETS, HttpMetrics

# service -> replicas by state (ready, ejected, not_ready), read at scrape time.
ReplicaStates = Callable[[], Mapping[str, Mapping[str, int]]]


def decode_refusal_reason(error: dicom.DicomError) -> str:
    """The ``reason`` label of a refused decode: which kind of file, never its content."""
    if isinstance(error, dicom.NotSelectedError):
        return "not_selected"  # input selection: not a spine radiograph
    if isinstance(error, dicom.DicomLimitError):
        return "limit"  # past a hostile-input cap (MAX_*, worker memory)
    if isinstance(error, dicom.UnsupportedDicomError):
        return "unsupported"  # colour, multi-frame, no pixels
    return "not_dicom"  # unreadable, damaged, or a worker that died or hung on it


class ReplicaCollector(Collector):
    """``spine_upstream_replicas{service, state}``: how many replicas of each model service
    are in rotation now, from the state the readiness poller and the breaker keep."""

    def __init__(self) -> None:
        self.states: ReplicaStates = dict

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "spine_upstream_replicas", "Model replicas by state: ready (in rotation), "
            "ejected (resting after failed calls), not_ready (not ready, facts unreadable "
            "or disagreeing, or paused by a 503)", labels=["service", "state"],
        )
        for service, counts in self.states().items():
            for state, count in counts.items():
                family.add_metric([service, state], float(count))
        yield family


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
        self.decode_refusals = Counter(
            "spine_decode_refusals",
            "Uploads refused by the DICOM intake: not_dicom (400), limit (a MAX_* cap), "
            "unsupported (422), not_selected (input selection)",
            ["reason"], registry=self.registry,
        )
        self.ejections = Counter(
            "spine_upstream_ejections",
            "Model replicas ejected by the circuit breaker (failed calls in a row, unreachable)",
            ["service"], registry=self.registry,
        )
        self.replicas = ReplicaCollector()
        self.registry.register(self.replicas)

    def observe_attempt(self, service: str, outcome: str, seconds: float) -> None:
        self.upstream_attempts.labels(service, outcome).inc()
        self.upstream_seconds.labels(service, outcome).observe(seconds)

    def ejected(self, service: str) -> None:
        self.ejections.labels(service).inc()

    def decode_refused(self, error: dicom.DicomError) -> None:
        self.decode_refusals.labels(decode_refusal_reason(error)).inc()

    def watch_replicas(self, states: ReplicaStates) -> None:
        """Read replica states from ``states`` at each scrape (the gateway's clients)."""
        self.replicas.states = states
