"""The listener's life: start (replaying the spool), work, stop (keeping the spool).

Start: the results the spool kept (``results/``: not delivered before the last stop) are
handed to the delivery again, the spool's ``incoming/`` is replayed, in arrival order
(restart recovery: whatever was acknowledged before a crash or a stop is analysed now),
studies whose report still said ``open`` are reopened, then the SCP accepts associations.

Work: each spooled instance goes to the gateway (``LISTENER_CONCURRENCY`` at once).
Analysed: its SR and presentation state are written durably to the spool's ``results/``,
then the instance's entry is removed and the results go to the delivery; each result
file is removed once delivered to every destination, or moved to ``failed/results/``
(logged with its SOP Instance UID, counted) when rejected or out of retry budget.
Refused (422): logged, counted, removed. Gateway unreachable, busy or timing
out: the entry stays in the spool and is retried with exponential backoff
(``LISTENER_RETRY_*``, ``Retry-After`` honoured) until ``LISTENER_RETRY_BUDGET_S``; past
it, or on a permanent 4xx, it is logged with its SOP Instance UID, counted as failed and
moved to the spool's ``failed/`` folder. A full results queue is a retry too.

Stop (SIGTERM / Ctrl-C), decided as **keep in spool**: no new associations; gateway
requests in flight get ``LISTENER_DRAIN_TIMEOUT_S`` to finish; every instance not yet
analysed stays in the spool and is analysed at the next start (an interrupted request
is simply sent again). Results already handed to the delivery get
``RESULTS_DRAIN_TIMEOUT_S``; what is left then is logged and counted by the delivery
(``shutdown``) and stays in ``results/``, sent again at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from dicom_listener import disk
from dicom_listener.forward import Fate, Forwarded, GatewayClient
from dicom_listener.scp import ListenerConfigError, ScpConfig, StoreScp
from dicom_listener.spool import Spool, SpoolEntry
from dicom_listener.status import StatusConfigError, StatusServer, status_app, status_keys
from dicom_listener.studies import ImageResult, StudyTracker
from dicom_listener.studyreport import ListenerMetrics, StudyReports, report
from shared import tracing
from shared.apikeys import ApiKeys
from shared.dicomnet.delivery import DeliveryQueueFull, ResultsDelivery
from shared.dicomnet.retention import sweep_forever
from shared.dicomnet.spool import DurableResults
from shared.paths import cache_root
from shared.settings import ListenerSettings

log = logging.getLogger(__name__)
# pynetdicom's INFO/DEBUG lines narrate every association and, in DEBUG, print
# datasets' elements (patient data): never below WARNING here, whatever LOG_LEVEL says.
PYNETDICOM_LOG_LEVEL = logging.WARNING


@dataclass
class _Work:
    entry: SpoolEntry
    first_seen: float  # monotonic: received, or replayed at this start
    attempt: int = 0
    trace: tracing.Carrier = dataclasses.field(default_factory=dict)  # its C-STORE's span


class ListenerService:
    """SCP + spool + forwarders + study reports + status server, on one event loop."""

    def __init__(
        self, settings: ListenerSettings, *, host: str, port: int, status_port: int | None = None
    ) -> None:
        self.settings = settings
        logging.getLogger("pynetdicom").setLevel(PYNETDICOM_LOG_LEVEL)
        listener_root = cache_root(settings) / "listener"
        self.spool = Spool(
            Path(settings.listener_spool_dir or listener_root / "spool").expanduser(),
            max_instance_bytes=settings.listener_max_instance_bytes,
            max_total_bytes=settings.listener_spool_max_bytes,
            min_free_bytes=settings.disk_min_free_bytes,
        )
        self.registry = CollectorRegistry()
        self.metrics = ListenerMetrics(self.registry)
        self.metrics.spool_capacity_bytes.set(settings.listener_spool_max_bytes)
        self.reports = StudyReports(
            Path(settings.listener_results_dir or listener_root / "studies").expanduser(),
            self.metrics,
        )
        disk.gauges(self.spool, self.reports.dir, self.registry)
        self.tracker = StudyTracker(settings.listener_study_idle_s)
        self.delivery = ResultsDelivery.from_settings(settings, registry=self.registry)
        self.results = DurableResults(self.spool.result_store, self.delivery, self._result_outcome)
        key = settings.listener_gateway_api_key
        self.gateway = GatewayClient(
            settings.listener_gateway_url,
            api_key=key.get_secret_value() if key else None,
            timeout_s=settings.listener_forward_timeout_s,
            objects=settings.results_objects,
        )
        self.scp = StoreScp(
            ScpConfig.from_settings(settings, host, port), self.spool, self._from_thread,
            on_association=lambda result: self._call(self.metrics.associations.labels(result).inc),
        )
        self.status_port = settings.listener_status_port if status_port is None else status_port
        self.status_keys: ApiKeys | None = None
        if self.status_port:
            try:
                self.status_keys = status_keys(
                    settings.listener_status_host, ApiKeys(settings.operator_keys_sha256)
                )
            except StatusConfigError as exc:
                raise ListenerConfigError(str(exc)) from exc
        self.status: StatusServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[_Work] = asyncio.Queue()
        self._tasks: list[asyncio.Task[Any]] = []
        self._timers: set[asyncio.TimerHandle] = set()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False

    # --- start ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.delivery.start()
        resent = await self.results.replay()
        for study in self.reports.load_open():
            self.tracker.restore(study)
        replayed = self._replay()
        for n in range(self.settings.listener_concurrency):
            self._tasks.append(asyncio.create_task(self._worker(), name=f"forward-{n}"))
        self._tasks.append(asyncio.create_task(self._close_idle_studies(), name="studies"))
        self._tasks.append(asyncio.create_task(sweep_forever(
            disk.sweeps(self.settings, self.spool, self.reports.dir),
            self.settings.retention_interval_s,
        ), name="retention"))
        if self.status_port:
            self.status = StatusServer(
                status_app(self.health, self.studies, self.registry, self.status_keys),
                self.settings.listener_status_host, self.status_port,
            )
            self._tasks.append(asyncio.create_task(self.status.serve(), name="status"))
        await asyncio.get_running_loop().run_in_executor(None, self.scp.start)
        log.info(
            "listener started: gateway %s, results delivery %s, %d instance(s) replayed "
            "from the spool, %d result(s) sent again, status on port %s", self.gateway.url,
            self.delivery.describe(), replayed, resent,
            self.status.port if self.status else "off",
        )

    def _result_outcome(self, outcome: str) -> None:
        """A result object's fate (delivered, kept for the next start, failed): counted."""
        self.metrics.results.labels(outcome).inc()
        self.metrics.results_waiting.set(self.spool.result_count)

    def _replay(self) -> int:
        entries, unreadable = self.spool.pending()
        for path, why in unreadable:
            moved = self.spool.move_to_failed(path)
            self.metrics.images.labels("failed").inc()
            log.error("spooled file %s cannot be read back (%s); moved to %s",
                      path.name, why, moved.parent)
        for entry in entries:
            self._accept(entry, received=False)
        return len(entries)

    # --- from the SCP threads ----------------------------------------------------------------

    def _call(self, function: Any, *args: Any) -> None:
        """Run ``function(*args)`` on the loop (called from pynetdicom's threads)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(function, *args)

    def _from_thread(self, entry: SpoolEntry) -> None:
        if self._loop is None or self._loop.is_closed():
            raise RuntimeError("the listener's loop is not running")
        self._loop.call_soon_threadsafe(self._accept, entry, True, tracing.carrier())

    def _accept(
        self, entry: SpoolEntry, received: bool = True, trace: tracing.Carrier | None = None
    ) -> None:
        if received:
            self.metrics.received.inc()
        self.tracker.received(entry.study_uid, entry.sop_uid)
        self._queue.put_nowait(_Work(entry, time.monotonic(), trace=trace or {}))

    # --- work --------------------------------------------------------------------------------

    async def _worker(self) -> None:
        while not self._stopping:
            work = await self._queue.get()
            if self._stopping:
                break  # stays in the spool for the next start
            self._in_flight += 1
            self._idle.clear()
            try:
                with tracing.span("process instance", parent=work.trace,
                                  **{"spine.attempt": work.attempt + 1}):
                    await self._process(work)
            except Exception:  # noqa: BLE001 - the entry stays in the spool: retried
                log.exception("SOP Instance %s: unexpected error; retried", work.entry.sop_uid)
                self._retry(work, Forwarded(Fate.RETRY, "internal error"))
            finally:
                self._in_flight -= 1
                if self._in_flight == 0:
                    self._idle.set()

    async def _process(self, work: _Work) -> None:
        entry = work.entry
        try:
            data = self.spool.read(entry)
        except FileNotFoundError:
            return  # settled elsewhere (e.g. an operator moved it)
        answer = await self.gateway.forward(data)
        if answer.fate is Fate.ANALYSED:
            try:
                await self._deliver(entry, answer)
            except DeliveryQueueFull as exc:
                answer = Forwarded(Fate.RETRY, f"results queue full ({exc})")
            else:
                self._settle(entry, ImageResult(entry.sop_uid, "analysed", answer.diagnosis))
                self.spool.remove(entry)
                return
        if answer.fate is Fate.REFUSED:
            log.info("SOP Instance %s of study %s refused by the gateway: %s",
                     entry.sop_uid, entry.study_uid, answer.reason)
            self._settle(entry, ImageResult(entry.sop_uid, "refused", reason=answer.reason))
            self.spool.remove(entry)
        elif answer.fate is Fate.FAILED:
            self._fail(entry, f"gateway answered {answer.status}: {answer.reason}")
        else:
            self._retry(work, answer)

    async def _deliver(self, entry: SpoolEntry, answer: Forwarded) -> None:
        """Results on disk first (``results/``), then to the delivery; the caller removes
        the instance's entry after this returns. :class:`DeliveryQueueFull` leaves
        nothing behind (the instance is retried)."""
        await self.results.submit(list(answer.objects.values()))
        self.metrics.results_waiting.set(self.spool.result_count)

    def _retry(self, work: _Work, answer: Forwarded) -> None:
        s = self.settings
        delay = min(s.listener_retry_initial_s * 2 ** work.attempt, s.listener_retry_max_s)
        if answer.retry_after_s is not None:
            delay = min(max(delay, answer.retry_after_s), s.listener_retry_max_s)
        if time.monotonic() + delay > work.first_seen + s.listener_retry_budget_s:
            self._fail(work.entry, f"retry budget spent: {answer.reason}")
            return
        work.attempt += 1
        self.metrics.retries.inc()
        log.warning("SOP Instance %s: gateway attempt %d failed (%s); kept in the spool, "
                    "retry in %.1f s", work.entry.sop_uid, work.attempt, answer.reason, delay)
        assert self._loop is not None
        timer: asyncio.TimerHandle

        def again() -> None:
            self._timers.discard(timer)
            if not self._stopping:
                self._queue.put_nowait(work)

        timer = self._loop.call_later(delay, again)
        self._timers.add(timer)

    def _fail(self, entry: SpoolEntry, reason: str) -> None:
        moved = self.spool.move_to_failed(entry.path, entry.size)
        log.error("SOP Instance %s of study %s not analysed: %s; kept in %s",
                  entry.sop_uid, entry.study_uid, reason, moved.parent)
        self._settle(entry, ImageResult(entry.sop_uid, "failed", reason=reason))

    def _settle(self, entry: SpoolEntry, result: ImageResult) -> None:
        self.metrics.images.labels(result.outcome).inc()
        study = self.tracker.finished(entry.study_uid, result)
        self.reports.update(study)

    async def _close_idle_studies(self) -> None:
        tick = min(1.0, self.settings.listener_study_idle_s / 4)
        while True:
            for study in self.tracker.due():
                self.reports.close(study)
            self.metrics.open_studies.set(len(self.tracker.open))
            self.metrics.spool_instances.set(self.spool.count)
            self.metrics.spool_bytes.set(self.spool.used_bytes)
            self.metrics.results_waiting.set(self.spool.result_count)
            await asyncio.sleep(tick)

    # --- status ------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        counts = self.delivery.counts()
        return {
            "status": "stopping" if self._stopping else "ok",
            "ae_title": self.scp.config.ae_title,
            "dicom_port": self.scp.port,
            "gateway": self.gateway.url,
            "spool": {"instances": self.spool.count, "bytes": self.spool.used_bytes,
                      "failed": len(list(self.spool.failed.glob("*.dcm"))),
                      "results": self.spool.result_count,
                      "failed_results": len(list(self.spool.failed_results.glob("*.dcm")))},
            "in_flight": self._in_flight,
            "open_studies": len(self.tracker.open),
            "results_delivery": {"destinations": self.delivery.describe(),
                                 **dataclasses.asdict(counts)},
        }

    def studies(self) -> list[dict[str, Any]]:
        return [report(s, "open") for s in self.tracker.open.values()] + list(
            reversed(self.reports.recent)
        )

    # --- stop --------------------------------------------------------------------------------

    async def stop(self) -> None:
        """Keep in spool: see the module docstring."""
        self._stopping = True
        await asyncio.get_running_loop().run_in_executor(None, self.scp.stop)
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        try:
            await asyncio.wait_for(self._idle.wait(), self.settings.listener_drain_timeout_s)
        except TimeoutError:
            log.warning("%d gateway request(s) still in flight at shutdown; their instances "
                        "stay in the spool", self._in_flight)
        if self.status is not None:
            self.status.stop()
        for task in self._tasks:
            if task.get_name() != "status":
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.results.close()
        await self.delivery.stop(self.settings.results_drain_timeout_s)
        await self.gateway.close()
        self.spool.close()
        log.info("listener stopped: %d instance(s) and %d result(s) kept in the spool for "
                 "the next start", self.spool.count, self.spool.result_count)


async def run(settings: ListenerSettings, *, host: str, port: int) -> None:
    """Run until SIGTERM / SIGINT, then stop cleanly."""
    service = ListenerService(settings, host=host, port=port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    await service.start()
    try:
        await stop.wait()
    finally:
        await service.stop()
