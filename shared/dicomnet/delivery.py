"""Results delivery: a bounded queue in front of the destinations, with retries.

The gateway (after a STOW-RS analysis) and the DICOM listener (after a C-STORE one)
hand the SR and presentation state of each image to :meth:`ResultsDelivery.submit`.
It never blocks and never drops: a full queue raises :class:`DeliveryQueueFull`, so the
caller refuses its own request (503) instead of losing results later. Each queued
object is sent to every configured destination (``RESULTS_DICOMWEB_URL`` and/or
``RESULTS_STORE_AE``); a transient failure is retried with exponential backoff until
``RESULTS_RETRY_BUDGET_S`` after the submit; a permanent one, a spent budget or a
shutdown with objects left is logged (SOP Instance UIDs only: no patient data) and
counted as failed. Counters: :meth:`counts` and Prometheus ``spine_results_*``.

The queue is in memory. A caller that keeps results on disk (:mod:`shared.dicomnet.spool`:
the DICOM listener, and the gateway with ``RESULTS_SPOOL_DIR``) passes ``on_settled`` to
:meth:`ResultsDelivery.submit`: it hears once per SOP Instance UID, when that object is
settled at every destination, the worst outcome across them (:data:`SETTLED_ORDER`), so
it deletes its copy only once it is ``delivered`` everywhere and keeps it for a restart
on ``shutdown``. Torch-free; the C-STORE sender imports
pynetdicom only when it is configured.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge

from shared import tracing
from shared.dicomnet.destinations import (
    AeAddress,
    Destination,
    DestinationConfigError,
    DicomWebDestination,
    SendOutcome,
    StoreScuDestination,
    check_ae_title,
    check_dicomweb,
)
from shared.dicomnet.jobs import (
    DeliveryCounts,
    Job,
    OnSettled,
    RetryPolicy,
    Settlement,
)
from shared.dicomnet.tls import store_tls_context
from shared.errors import ServiceError
from shared.settings import ResultsDeliverySettings

log = logging.getLogger(__name__)


class DeliveryQueueFull(ServiceError):
    """No room for more results (``RESULTS_QUEUE_SIZE``), or delivery is shutting down."""

    status_code = 503
    retry_after_s = 5


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.delivered = Counter(
            "spine_results_delivered_total", "Result objects stored at a destination",
            ["destination"], registry=registry,
        )
        self.retried = Counter(
            "spine_results_retried_total",
            "Result objects whose attempt failed transiently and that wait for another",
            ["destination"], registry=registry,
        )
        self.failed = Counter(
            "spine_results_failed_total",
            "Result objects given up: rejected (by the peer), budget (retry budget spent), "
            "shutdown (left at stop)",
            ["destination", "reason"], registry=registry,
        )
        self.refused = Counter(
            "spine_results_refused_total",
            "Result objects not accepted by submit (queue full or shutting down)",
            registry=registry,
        )
        self.queued = Gauge(
            "spine_results_queued", "Result objects queued, in flight or waiting to retry",
            registry=registry,
        )
        self.capacity = Gauge(
            "spine_results_queue_capacity",
            "Result objects the queue holds at most (RESULTS_QUEUE_SIZE): past it, refused",
            registry=registry,
        )


class ResultsDelivery:
    """The bounded retry queue; a no-op (``enabled`` False) without destinations."""

    def __init__(
        self,
        destinations: Sequence[Destination] = (),
        *,
        queue_size: int = 1000,
        concurrency: int = 2,
        retry: RetryPolicy = RetryPolicy(),
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.destinations = list(destinations)
        self.queue_size = queue_size
        self.concurrency = concurrency
        self.retry = retry
        self.registry = registry if registry is not None else CollectorRegistry()
        self._metrics = _Metrics(self.registry)
        self._metrics.capacity.set(queue_size)
        self._counts = {"delivered": 0, "retried": 0, "failed": 0, "refused": 0}
        self._pending = 0
        self._live: dict[int, Job] = {}
        self._queue: asyncio.Queue[Job] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._accepting = False

    @classmethod
    def from_settings(
        cls, settings: ResultsDeliverySettings, registry: CollectorRegistry | None = None
    ) -> ResultsDelivery:
        """The destinations ``RESULTS_*`` configure (none: a no-op delivery).

        Raises :class:`~shared.dicomnet.destinations.DestinationConfigError` for a
        destination that cannot be used, so a service refuses to start with it.
        """
        destinations: list[Destination] = []
        timeout_s = settings.results_timeout_s
        if settings.results_dicomweb_url:
            token = settings.results_dicomweb_bearer_token
            password = settings.results_dicomweb_password
            destinations.append(DicomWebDestination(
                settings.results_dicomweb_url, timeout_s=timeout_s,
                bearer_token=token.get_secret_value() if token else None,
                user=settings.results_dicomweb_user or None,
                password=password.get_secret_value() if password else None,
            ))
        if settings.results_store_ae:
            destinations.append(StoreScuDestination(
                AeAddress.parse(settings.results_store_ae),
                calling_ae=settings.results_calling_ae, timeout_s=timeout_s,
                tls=store_tls_context(settings),
            ))
        return cls(
            destinations,
            queue_size=settings.results_queue_size,
            concurrency=settings.results_concurrency,
            retry=RetryPolicy(
                settings.results_retry_initial_s, settings.results_retry_max_s,
                settings.results_retry_budget_s,
            ),
            registry=registry,
        )

    @property
    def enabled(self) -> bool:
        return bool(self.destinations)

    def describe(self) -> str:
        """The destinations for a start-up log line (no credentials)."""
        names = []
        for destination in self.destinations:
            if isinstance(destination, DicomWebDestination):
                names.append(f"STOW-RS {destination.url}")
            elif isinstance(destination, StoreScuDestination):
                tls = " over TLS" if destination.tls is not None else ""
                names.append(f"C-STORE {destination.address}{tls}")
            else:
                names.append(destination.name)
        return ", ".join(names) or "off"

    def has_room(self, objects: int) -> bool:
        """Whether ``objects`` more (per destination) fit now: a caller checks before work."""
        if not self.enabled:
            return True
        return self._accepting and (
            self._pending + objects * len(self.destinations) <= self.queue_size
        )

    def counts(self) -> DeliveryCounts:
        return DeliveryCounts(queued=self._pending, **self._counts)

    async def start(self) -> None:
        if not self.enabled or self._workers:
            return
        self._queue = asyncio.Queue()
        self._accepting = True
        self._workers = [
            asyncio.create_task(self._work(), name=f"results-delivery-{n}")
            for n in range(self.concurrency)
        ]

    async def submit(
        self, instances: list[bytes], *, study_uid: str, sop_uids: list[str],
        on_settled: OnSettled | None = None,
    ) -> None:
        """Queue the objects for every destination; :class:`DeliveryQueueFull` if no room.

        ``on_settled(sop_uid, outcome)``, when given, is called on the event loop once per
        object, when every destination is done with it: ``delivered``, ``rejected``,
        ``budget`` or ``shutdown`` (the worst across destinations, :data:`SETTLED_ORDER`).
        Not called when this raises, nor without destinations (nothing is sent).
        """
        if not self.enabled:
            return
        if len(instances) != len(sop_uids):
            raise ValueError("one SOP Instance UID per instance")
        if not instances:
            return
        cost = len(instances) * len(self.destinations)
        if not self._accepting or self._queue is None:
            self._refuse(cost)
            raise DeliveryQueueFull("results delivery is not running (starting or stopping)")
        if self._pending + cost > self.queue_size:
            self._refuse(cost)
            raise DeliveryQueueFull(
                f"the results queue is full ({self.queue_size} objects, RESULTS_QUEUE_SIZE)"
            )
        settlement = (
            Settlement(sop_uids, len(self.destinations), on_settled) if on_settled else None
        )
        trace = tracing.carrier()
        for destination in self.destinations:
            job = Job(destination, study_uid, dict(zip(sop_uids, instances, strict=True)),
                       settlement=settlement, trace=trace)
            self._live[id(job)] = job
            self._queue.put_nowait(job)
        self._add_pending(cost)

    def _refuse(self, cost: int) -> None:
        self._counts["refused"] += cost
        self._metrics.refused.inc(cost)

    def _add_pending(self, delta: int) -> None:
        self._pending += delta
        self._metrics.queued.set(self._pending)
        if self._pending == 0:
            self._idle.set()
        else:
            self._idle.clear()

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            job = await self._queue.get()
            try:
                with tracing.span(
                    f"deliver to {job.destination.name}", parent=job.trace,
                    kind="client", **{"spine.attempt": job.attempt + 1,
                                      "spine.objects": len(job.items)},
                ):
                    outcome = await job.destination.send(dict(job.items))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a sender bug must not lose results
                log.exception("results sender %s raised", job.destination.name)
                outcome = SendOutcome.all_retry(list(job.items), f"error ({type(exc).__name__})")
            self._settle(job, outcome)

    def _settle(self, job: Job, outcome: SendOutcome) -> None:
        """Count what this attempt did; schedule the retry of what may still succeed."""
        name = job.destination.name
        for uid in outcome.stored:
            if job.items.pop(uid, None) is not None:
                self._count("delivered", name, 1)
                self._add_pending(-1)
                job.settled(uid, "delivered")
        rejected = {uid: why for uid, why in outcome.failed.items() if uid in job.items}
        if rejected:
            self._give_up(job, rejected, "rejected")
        # Anything the sender did not mention is retried, never forgotten.
        retry = {uid: outcome.retry.get(uid, "no answer for it") for uid in job.items}
        if not retry:
            self._live.pop(id(job), None)
            return
        delay = self.retry.delay(job.attempt)
        if time.monotonic() + delay > job.submitted + self.retry.budget_s:
            self._give_up(job, retry, "budget")
            self._live.pop(id(job), None)
            return
        job.attempt += 1
        self._count("retried", name, len(retry))
        log.warning(
            "results delivery to %s: attempt %d failed for %d object(s), retry in %.1f s: %s",
            name, job.attempt, len(retry), delay, _reasons(retry),
            extra={"sop_instance_uids": list(retry)},
        )
        loop = asyncio.get_running_loop()
        self._timers[id(job)] = loop.call_later(delay, self._requeue, job)

    def _requeue(self, job: Job) -> None:
        self._timers.pop(id(job), None)
        if self._queue is not None:
            self._queue.put_nowait(job)

    def _give_up(self, job: Job, reasons: dict[str, str], why: str) -> None:
        name = job.destination.name
        for uid in reasons:
            job.items.pop(uid, None)
        self._count("failed", name, len(reasons), why)
        self._add_pending(-len(reasons))
        log.error(
            "results delivery to %s failed (%s) for %d object(s): %s",
            name, why, len(reasons), _reasons(reasons),
            extra={"sop_instance_uids": list(reasons)},
        )
        for uid in reasons:
            job.settled(uid, why)

    def _count(self, kind: str, destination: str, n: int, reason: str | None = None) -> None:
        self._counts[kind] += n
        metric = getattr(self._metrics, kind)
        (metric.labels(destination, reason) if reason else metric.labels(destination)).inc(n)

    async def drain(self, timeout_s: float) -> bool:
        """Wait until nothing is pending (True) or ``timeout_s`` passed (False)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def stop(self, timeout_s: float) -> None:
        """Refuse new work, deliver what is pending for up to ``timeout_s``, then give up
        on the rest: each object left is logged with its UID and counted (``shutdown``)."""
        if not self._workers:
            return
        self._accepting = False
        await self.drain(timeout_s)
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        for job in list(self._live.values()):
            if job.items:
                self._give_up(job, dict.fromkeys(job.items, "not delivered at shutdown"),
                              "shutdown")
        self._live.clear()
        self._queue = None
        for destination in self.destinations:
            await destination.close()


def results_config_problem(settings: ResultsDeliverySettings) -> str | None:
    """Why the ``RESULTS_*`` destinations cannot be used (a service refuses to start), or None."""
    try:
        if settings.results_dicomweb_url:
            check_dicomweb(
                settings.results_dicomweb_url,
                bearer=bool(settings.results_dicomweb_bearer_token),
                user=bool(settings.results_dicomweb_user),
            )
        if settings.results_store_ae:
            AeAddress.parse(settings.results_store_ae)
            check_ae_title(settings.results_calling_ae, "RESULTS_CALLING_AE")
        store_tls_context(settings)
    except DestinationConfigError as exc:
        return str(exc)
    return None


def _reasons(reasons: dict[str, str]) -> str:
    """``uid (reason); ...`` for a log line: UIDs and our reasons only, never patient data."""
    return "; ".join(f"{uid} ({why})" for uid, why in reasons.items())
