"""The gateway's app-wide objects, built once at start-up and closed at shut-down.

:class:`Gateway` owns what outlives a request: the HTTP pool to the model services and
the two model clients (inside :class:`~gateway.pipeline.context.Pipeline`, with the
decode pool, budget and rules), the timers that poll the replicas' readiness and resolve
their ``dns+`` names (both off the request path), the audit log, the results delivery
and its durable spool with the lock that makes this process its only owner.
Routes reach it as ``request.app.state.gateway``; the pipeline sees only its
:attr:`Gateway.pipeline`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from gateway.audit import AuditLog
from gateway.pipeline.budget import DecodeBudget
from gateway.pipeline.building import BuildWatch
from gateway.pipeline.context import Pipeline
from gateway.pipeline.decode import decoder_pool, selection_rules
from gateway.telemetry import GatewayMetrics
from gateway.upstream.checks import check_classifier_answer, check_detector_answer
from gateway.upstream.client import ModelClient
from gateway.upstream.discovery import DNS_REFRESH_SECONDS
from gateway.upstream.readiness import READINESS_STALE_INTERVALS
from gateway.upstream.transport import (
    KEEPALIVE_EXPIRY_S,
    MAX_CONNECTIONS,
    MAX_KEEPALIVE_CONNECTIONS,
)
from shared import contract, dicom, tracing
from shared.contract import ClassifierFacts, DetectorFacts
from shared.dicomnet import ResultsDelivery
from shared.dicomnet.retention import FolderGauges, RetentionPolicy, Sweep, sweep_forever
from shared.dicomnet.spool import DurableResults, ResultStore
from shared.filelock import HeldLock, LockHeld
from shared.settings import GatewaySettings

log = logging.getLogger(__name__)

# In RESULTS_SPOOL_DIR: held by the one gateway that owns the folder.
SPOOL_LOCK_NAME = ".owner.lock"


@dataclass
class Gateway:
    """Everything the routes need, built once at start-up."""

    settings: GatewaySettings
    http: httpx.AsyncClient
    pipeline: Pipeline
    audit: AuditLog | None = None
    # Transfer syntax -> whether this install can decode it (probed once, for /health).
    decodable: dict[str, bool] = field(default_factory=dict)
    # Where the SR + GSPS of STOW-RS analyses go (RESULTS_*; a no-op when none is set).
    delivery: ResultsDelivery = field(default_factory=ResultsDelivery)
    # The same, on disk first (RESULTS_SPOOL_DIR; None = the queue in memory only).
    results: DurableResults | None = None
    spool_owner: HeldLock | None = None  # held while this gateway runs
    _timers: list[asyncio.Task[None]] = field(default_factory=list, init=False, repr=False)

    @property
    def metrics(self) -> GatewayMetrics:
        return self.pipeline.metrics

    @classmethod
    def create(cls, settings: GatewaySettings, metrics: GatewayMetrics | None = None) -> Gateway:
        metrics = metrics or GatewayMetrics()
        http = httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=MAX_CONNECTIONS,
                max_keepalive_connections=MAX_KEEPALIVE_CONNECTIONS,
                keepalive_expiry=KEEPALIVE_EXPIRY_S,
            ),
            event_hooks={"request": [tracing.inject_into_request]},  # to the model services
        )
        decoders = decoder_pool(settings)
        if decoders is not None:
            decoders.prewarm()  # workers import in the background, ready for uploads
        delivery = ResultsDelivery.from_settings(settings, metrics.registry)
        results, spool_owner = durable_results(settings, delivery)
        if results is not None:
            spool_gauges(results.store, metrics)
        classifier, detector = model_clients(settings, http, metrics)
        gateway = cls(
            settings=settings,
            http=http,
            pipeline=Pipeline(
                settings=settings,
                classifier=classifier,
                detector=detector,
                decode_pool=ThreadPoolExecutor(
                    max_workers=settings.decode_workers or dicom.available_cpus(),
                    thread_name_prefix="decode",
                ),
                decoders=decoders,
                metrics=metrics,
                selection=selection_rules(settings),
                decode_budget=DecodeBudget(settings.decode_memory_budget_mb * 2**20),
                building=(BuildWatch(settings.bundle_build_progress_file)
                          if settings.bundle_build_progress_file is not None else None),
            ),
            audit=AuditLog(settings.audit_log_path, settings.pseudonym_secret, settings.audit_log),
            decodable=dicom.decodable_transfer_syntaxes(decoders),
            delivery=delivery,
            results=results,
            spool_owner=spool_owner,
        )
        metrics.watch_replicas(gateway.replica_states)
        return gateway

    @property
    def clients(self) -> tuple[ModelClient[Any], ...]:
        return (self.pipeline.classifier, self.pipeline.detector)

    async def start(self) -> None:
        """Resolve ``dns+`` names and poll readiness once (``/readyz`` never answers from
        nothing), then keep doing both on their timers."""
        await self.discover()
        await self.poll_readiness()
        self._timers.append(asyncio.create_task(
            _every(self.settings.readiness_interval_s, self.poll_readiness, "readiness poll"),
            name="readiness-poller",
        ))
        if any(client.discovery.names for client in self.clients):
            self._timers.append(asyncio.create_task(
                _every(DNS_REFRESH_SECONDS, self.discover, "DNS refresh"), name="dns-refresh"
            ))
        await self.delivery.start()
        if self.results is not None:
            resent = await self.results.replay()
            log.info("results spool %s: %d result(s) kept from the last run sent again",
                     self.results.store.results, resent)
            self._timers.append(asyncio.create_task(sweep_forever(
                [failed_results_sweep(self.settings, self.results.store)],
                self.settings.retention_interval_s,
            ), name="retention"))

    async def poll_readiness(self) -> None:
        timeout_s = self.settings.readiness_timeout_s
        await asyncio.gather(*(client.poll_readiness(timeout_s) for client in self.clients))

    async def discover(self) -> None:
        """Resolve both services' ``dns+`` names (each lookup bounded)."""
        await asyncio.gather(*(client.discover() for client in self.clients))

    def replica_states(self) -> dict[str, dict[str, int]]:
        """Each model service's replicas by state (``spine_upstream_replicas``)."""
        clients = (self.pipeline.classifier, self.pipeline.detector)
        return {c.service: c.replica_states(self.readiness_max_age_s) for c in clients}

    @property
    def readiness_max_age_s(self) -> float:
        """Cached readiness older than this means the poller stopped: not ready."""
        settings = self.settings
        return READINESS_STALE_INTERVALS * settings.readiness_interval_s + (
            settings.readiness_timeout_s
        )

    async def close(self) -> None:
        # Results still pending get RESULTS_DRAIN_TIMEOUT_S; the rest is logged and counted.
        # With RESULTS_SPOOL_DIR what is left stays in its results/ for the next start.
        if self.results is not None:
            await self.results.close()
        await self.delivery.stop(self.settings.results_drain_timeout_s)
        if self.results is not None:
            log.info("results spool: %d result(s) kept for the next start",
                     self.results.store.count)
        if self.spool_owner is not None:
            self.spool_owner.release()
        for timer in self._timers:
            timer.cancel()
        await asyncio.gather(*self._timers, return_exceptions=True)
        await self.http.aclose()
        self.pipeline.decode_pool.shutdown(wait=False, cancel_futures=True)
        if self.pipeline.decoders is not None:
            self.pipeline.decoders.close()
        if self.audit is not None:
            self.audit.close()


def model_clients(
    settings: GatewaySettings, http: httpx.AsyncClient, metrics: GatewayMetrics
) -> tuple[ModelClient[ClassifierFacts], ModelClient[DetectorFacts]]:
    """The classifier's and the detector's clients, over one HTTP pool."""
    token = settings.internal_token.get_secret_value() if settings.internal_token else None
    common = {
        "http": http,
        "token": token or None,
        "observe": metrics.observe_attempt,
        "on_eject": metrics.ejected,
        "breaker_failures": settings.breaker_failures,
        "breaker_cooldown_s": settings.breaker_cooldown_s,
        "attempt_timeout_s": settings.upstream_attempt_timeout_s,
    }
    classifier = ModelClient(
        "classifier", contract.CLASSIFIER_MODEL, settings.classifier_urls,
        timeout_s=settings.classifier_timeout_s or settings.upstream_timeout_s,
        facts_type=ClassifierFacts, output_specs=contract.CLASSIFIER_OUTPUTS,
        check=check_classifier_answer, **common,
    )
    detector = ModelClient(
        "detector", contract.DETECTOR_MODEL, settings.detector_urls,
        timeout_s=settings.detector_timeout_s or settings.upstream_timeout_s,
        facts_type=DetectorFacts, output_specs=contract.DETECTOR_OUTPUTS,
        check=check_detector_answer, **common,
    )
    return classifier, detector


async def _every(period_s: float, job: Callable[[], Awaitable[None]], what: str) -> None:
    """Run ``job`` every ``period_s`` until cancelled; a failed run is logged, the next
    one comes on time (a failed readiness poll leaves its cache to go stale)."""
    while True:
        await asyncio.sleep(period_s)
        try:
            await job()
        except Exception:  # noqa: BLE001 - the timer outlives one bad run
            log.exception("%s failed", what)


class SpoolInUseError(RuntimeError):
    """``RESULTS_SPOOL_DIR`` is owned by another running gateway: the start stops."""


def durable_results(
    settings: GatewaySettings, delivery: ResultsDelivery
) -> tuple[DurableResults, HeldLock] | tuple[None, None]:
    """The results spool (``RESULTS_SPOOL_DIR``), capped at ``RESULTS_QUEUE_SIZE`` objects,
    and the lock that makes this process its only owner (two gateways on one folder would
    send each other's files twice and delete each other's half-written ones)."""
    if settings.results_spool_dir is None:
        return None, None
    root = settings.results_spool_dir.expanduser()
    try:
        owner = HeldLock.acquire(root / SPOOL_LOCK_NAME)
    except LockHeld:
        raise SpoolInUseError(
            f"RESULTS_SPOOL_DIR {root} is in use by another running gateway: give each "
            "gateway process (replica) its own folder"
        ) from None
    store = ResultStore(
        root / "results", root / "failed", root / "tmp", max_objects=settings.results_queue_size,
        max_bytes=settings.results_spool_max_bytes, min_free_bytes=settings.disk_min_free_bytes,
    )
    return DurableResults(store, delivery), owner


def failed_results_sweep(settings: GatewaySettings, store: ResultStore) -> Sweep:
    """``failed/`` holds given-up results only (finished work): pruned by age and bytes.
    ``results/`` is never pruned: what waits there was promised to a PACS."""
    policy = RetentionPolicy(settings.results_failed_max_age_s, settings.results_failed_max_bytes)
    return Sweep("results spool failed/", store.failed, "*.dcm", policy)


def spool_gauges(store: ResultStore, metrics: GatewayMetrics) -> FolderGauges:
    """``spine_results_spool_folder_bytes`` / ``_files`` by folder in ``/metrics``."""
    return FolderGauges(
        "spine_results_spool_folder", "the gateway's results spool (RESULTS_SPOOL_DIR)",
        {"results": (store.results, "*.dcm"), "failed": (store.failed, "*.dcm")},
        metrics.registry,
    )
