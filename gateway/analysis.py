"""One upload, end to end: decode once, ask both models at the same time, fuse, draw.

Plain async functions over a :class:`Gateway` (the clients and settings), so the route
stays thin and the logic is testable without HTTP. The result is :class:`Findings`, in
canonical pixels; :mod:`gateway.response` turns it into the ``/upload`` JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import httpx
import numpy as np

from gateway.annotate import draw_boxes, png_data_uri
from gateway.audit import AuditFacts, AuditLog
from gateway.budget import DecodeBudget
from gateway.fusion import Box, Diagnosis, apply_fusion, boxes_from_outputs, diagnose
from gateway.schemas import Timings
from gateway.telemetry import GatewayMetrics
from gateway.upstream import (
    KEEPALIVE_EXPIRY_S,
    MAX_CONNECTIONS,
    MAX_KEEPALIVE_CONNECTIONS,
    READINESS_STALE_INTERVALS,
    InferResult,
    ModelClient,
    UpstreamError,
    UpstreamTimeoutError,
)
from shared import contract, dicom
from shared.contract import ClassifierFacts, DetectorFacts
from shared.dicomnet import ResultsDelivery
from shared.dicomnet.spool import DurableResults, ResultStore
from shared.filelock import HeldLock, LockHeld
from shared.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

# Of the request's deadline, this much is kept for merging and rendering after the models:
# a detector that is slow gets cut off early enough to still answer 200 with a warning.
RENDER_RESERVE_S = 1.0
# In RESULTS_SPOOL_DIR: held by the one gateway that owns the folder.
SPOOL_LOCK_NAME = ".owner.lock"


@dataclass
class Gateway:
    """Everything a request needs, built once at start-up."""

    settings: Settings
    http: httpx.AsyncClient
    classifier: ModelClient[ClassifierFacts]
    detector: ModelClient[DetectorFacts]
    decode_pool: ThreadPoolExecutor
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    audit: AuditLog | None = None
    # Transfer syntax -> whether this install can decode it (probed once, for /health).
    decodable: dict[str, bool] = field(default_factory=dict)
    # Input selection rules (read once; None = INPUT_SELECTION=off).
    selection: dicom.SelectionRules | None = None
    # Pixel memory all decodes together may hold (DECODE_MEMORY_BUDGET_MB).
    decode_budget: DecodeBudget = field(default_factory=lambda: DecodeBudget(2048 * 2**20))
    # Where the SR + GSPS of STOW-RS analyses go (RESULTS_*; a no-op when none is set).
    delivery: ResultsDelivery = field(default_factory=ResultsDelivery)
    # The same, on disk first (RESULTS_SPOOL_DIR; None = the queue in memory only).
    results: DurableResults | None = None
    spool_owner: HeldLock | None = None  # held while this gateway runs
    _poller: asyncio.Task[None] | None = field(default=None, init=False, repr=False)

    @classmethod
    def create(cls, settings: Settings, metrics: GatewayMetrics | None = None) -> Gateway:
        metrics = metrics or GatewayMetrics()
        http = httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=MAX_CONNECTIONS,
                max_keepalive_connections=MAX_KEEPALIVE_CONNECTIONS,
                keepalive_expiry=KEEPALIVE_EXPIRY_S,
            )
        )
        workers = settings.decode_workers or dicom.available_cpus()
        options = decode_options(settings)
        if options.isolate:
            dicom.prewarm(options)  # workers import in the background, ready for uploads
        token = settings.internal_token.get_secret_value() if settings.internal_token else None
        delivery = ResultsDelivery.from_settings(settings, metrics.registry)
        results, spool_owner = durable_results(settings, delivery)
        breaker = {
            "breaker_failures": settings.breaker_failures,
            "breaker_cooldown_s": settings.breaker_cooldown_s,
        }
        return cls(
            settings=settings,
            http=http,
            classifier=ModelClient(
                "classifier", contract.CLASSIFIER_MODEL, settings.classifier_urls, http,
                settings.classifier_timeout_s or settings.upstream_timeout_s,
                token=token or None, observe=metrics.observe_attempt,
                facts_type=ClassifierFacts, output_specs=contract.CLASSIFIER_OUTPUTS,
                check=check_classifier_answer, **breaker,
            ),
            detector=ModelClient(
                "detector", contract.DETECTOR_MODEL, settings.detector_urls, http,
                settings.detector_timeout_s or settings.upstream_timeout_s,
                token=token or None, observe=metrics.observe_attempt,
                facts_type=DetectorFacts, output_specs=contract.DETECTOR_OUTPUTS,
                check=check_detector_answer, **breaker,
            ),
            decode_pool=ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode"),
            metrics=metrics,
            audit=AuditLog(settings.audit_log_path, settings.pseudonym_secret, settings.audit_log),
            decodable=dicom.decodable_transfer_syntaxes(options),
            selection=selection_rules(settings),
            decode_budget=DecodeBudget(settings.decode_memory_budget_mb * 2**20),
            delivery=delivery,
            results=results,
            spool_owner=spool_owner,
        )

    async def start(self) -> None:
        """Poll readiness once (``/readyz`` never answers from nothing), then keep polling."""
        await self.poll_readiness()
        self._poller = asyncio.create_task(self._poll_forever(), name="readiness-poller")
        await self.delivery.start()
        if self.results is not None:
            resent = await self.results.replay()
            log.info("results spool %s: %d result(s) kept from the last run sent again",
                     self.results.store.results, resent)

    async def poll_readiness(self) -> None:
        timeout_s = self.settings.readiness_timeout_s
        await asyncio.gather(
            self.classifier.poll_readiness(timeout_s), self.detector.poll_readiness(timeout_s)
        )

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.readiness_interval_s)
            try:
                await self.poll_readiness()
            except Exception:  # noqa: BLE001 - a failed poll leaves the cache to go stale
                log.exception("readiness poll failed")

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
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        await self.http.aclose()
        self.decode_pool.shutdown(wait=False, cancel_futures=True)
        if self.audit is not None:
            self.audit.close()


class SpoolInUseError(RuntimeError):
    """``RESULTS_SPOOL_DIR`` is owned by another running gateway: the start stops."""


def durable_results(
    settings: Settings, delivery: ResultsDelivery
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
        root / "results", root / "failed", root / "tmp", max_objects=settings.results_queue_size
    )
    return DurableResults(store, delivery), owner


def check_classifier_answer(
    outputs: Mapping[str, np.ndarray], facts: ClassifierFacts, inputs: Mapping[str, np.ndarray]
) -> None:
    """The classifier's answer fits the images sent (ContractError otherwise)."""
    contract.check_classifier_outputs(outputs, facts, images=inputs[contract.IMAGE.name].shape[0])


def check_detector_answer(
    outputs: Mapping[str, np.ndarray], facts: DetectorFacts, inputs: Mapping[str, np.ndarray]
) -> None:
    """The detector's answer fits the images sent, boxes inside them (ContractError otherwise)."""
    images, _, height, width = inputs[contract.IMAGE.name].shape
    contract.check_detector_outputs(outputs, facts, images=images, height=height, width=width)


def decode_options(settings: Settings) -> dicom.DecodeOptions:
    """How the DICOM intake runs for uploads: in memory-limited workers, under the caps."""
    return dicom.DecodeOptions(
        isolate_decoders=settings.dicom_isolate_decoders,
        decode_timeout_s=settings.dicom_decode_timeout_s,
        isolate=settings.dicom_isolate_decoders,
        worker_memory_mb=settings.decode_worker_memory_mb,
        limits=dicom.DecodeLimits(
            max_elements=settings.max_dicom_elements,
            max_sequence_items=settings.max_dicom_sequence_items,
            max_sequence_depth=settings.max_dicom_sequence_depth,
            max_fragments=settings.max_dicom_fragments,
            max_element_bytes=settings.max_dicom_element_bytes,
            max_inflated_bytes=settings.max_dicom_inflated_bytes,
            max_pixels=settings.max_pixels,
        ),
    )


def selection_rules(settings: Settings) -> dicom.SelectionRules | None:
    """The input selection rules (``INPUT_SELECTION_RULES``), or None when ``INPUT_SELECTION``
    is off. A rules file that does not load stops the start (InvalidRulesError)."""
    if not settings.input_selection:
        return None
    return dicom.load_rules(settings.input_selection_rules)


async def decode(gateway: Gateway, data: bytes) -> tuple[dicom.CanonicalImage, dicom.DicomMetadata]:
    """DICOM bytes -> canonical image, in the decode pool (never on the event loop).

    Everything runs in a worker process by default (the gateway never parses an
    upload itself), under the decode-memory budget, which is returned when the
    decode has really finished. While the budget has room for the largest image
    ``MAX_PIXELS`` allows, that much is held and the upload goes to a worker in one
    call; otherwise the header step runs first (every refusal comes from it, in
    milliseconds) and the decode waits until the image's own cost fits.
    The input selection rules run on the header in either step: what they refuse
    is a 422 (``dicom.NotSelectedError``) before any pixel is decoded, for /upload
    and /preview. Each step runs in a copy of this context so its log lines carry
    the request id.
    """
    loop = asyncio.get_running_loop()
    settings = gateway.settings
    options = decode_options(settings)
    budget = gateway.decode_budget
    started = time.perf_counter()
    try:
        need = dicom.decode_bytes(settings.max_pixels, 1)  # the largest image allowed
        if not budget.try_acquire(need):
            inspect = functools.partial(
                dicom.inspect_dicom, data, options=options, selection=gateway.selection
            )
            facts = await loop.run_in_executor(
                gateway.decode_pool, contextvars.copy_context().run, inspect
            )
            need = facts.decode_bytes
            await budget.acquire(need)
        work = functools.partial(
            dicom.decode_dicom, data, settings.canonical_long_side,
            reduced_j2k=settings.reduced_j2k, options=options, selection=gateway.selection,
        )
        try:
            job = gateway.decode_pool.submit(contextvars.copy_context().run, work)
        except BaseException:
            budget.release(need)
            raise
        job.add_done_callback(lambda _: _release_soon(loop, budget, need))
        return await asyncio.wrap_future(job)
    finally:
        gateway.metrics.decode_seconds.observe(time.perf_counter() - started)


def _release_soon(loop: asyncio.AbstractEventLoop, budget: DecodeBudget, amount: int) -> None:
    """Return budget from the decode thread, on the loop that owns the budget."""
    with contextlib.suppress(RuntimeError):  # the loop is closed: nothing waits any more
        loop.call_soon_threadsafe(budget.release, amount)


@dataclass(frozen=True)
class Fused:
    """The call and the boxes that survive fusion with it (canonical pixels)."""

    diagnosis: Diagnosis
    confidence: float
    probability: float
    boxes: list[Box] | None  # None: the detector did not answer
    suppressed: int


@dataclass(frozen=True)
class Findings:
    """Everything one analysis found, for the response builder."""

    request_id: str
    fused: Fused
    canonical: dicom.CanonicalImage
    metadata: dicom.DicomMetadata
    classified: InferResult[ClassifierFacts]
    detected: InferResult[DetectorFacts] | None
    annotated_image: str | None
    canonical_image: str | None
    warnings: list[str]
    timings: Timings


async def analyze(
    gateway: Gateway,
    data: bytes,
    *,
    annotate: bool,
    request_id: str,
    include_canonical: bool = False,
    deadline: float | None = None,
    facts: AuditFacts | None = None,
    check: Callable[[dicom.DicomMetadata], None] | None = None,
) -> Findings:
    """The whole ``/upload`` pipeline; raises DicomError or UpstreamError for the route.

    ``deadline`` (``time.monotonic()``) bounds both model calls; ``facts`` receives the
    image's UIDs for the audit line; ``check`` may refuse the decoded image's header
    (raising a ServiceError) before the models are asked (STOW-RS: the study in the path).
    """
    started = time.perf_counter()
    canonical, metadata = await decode(gateway, data)
    decoded = time.perf_counter()
    if facts is not None:
        facts.study_instance_uid = metadata.study_instance_uid
        facts.sop_instance_uid = metadata.sop_instance_uid
    if check is not None:
        check(metadata)

    model_deadline = None if deadline is None else deadline - RENDER_RESERVE_S
    classified, answer = await infer_both(gateway, canonical.pixels, request_id, model_deadline)
    inferred = time.perf_counter()
    warnings = list(canonical.warnings)
    detected = answer if isinstance(answer, InferResult) else None
    if not isinstance(answer, InferResult):
        warnings.append(_detection_warning(answer))

    fused = fuse(gateway.settings, classified, detected)
    merged = time.perf_counter()
    annotated_image, canonical_image = await draw(
        gateway, canonical, fused.boxes or [], annotate=annotate, canonical=include_canonical
    )
    finished = time.perf_counter()

    findings = Findings(
        request_id=request_id,
        fused=fused,
        canonical=canonical,
        metadata=metadata,
        classified=classified,
        detected=detected,
        annotated_image=annotated_image,
        canonical_image=canonical_image,
        warnings=warnings,
        timings=Timings(
            decode=round((decoded - started) * 1000, 2),
            classify=round(classified.elapsed_ms, 2),
            detect=round(detected.elapsed_ms, 2) if detected else None,
            merge=round((merged - inferred) * 1000, 2),
            render=round((finished - merged) * 1000, 2),
            total=round((finished - started) * 1000, 2),
        ),
    )
    _log(findings)
    return findings


async def infer_both(
    gateway: Gateway, pixels: np.ndarray, request_id: str, deadline: float | None
) -> tuple[InferResult[ClassifierFacts], InferResult[DetectorFacts] | Exception]:
    """Both models at once: the classifier's answer, and the detector's or its failure.

    Without the classifier there is no diagnosis: its failure stops the detector and
    is raised (as an :class:`UpstreamError`). A detector failure is returned instead,
    since the answer can go on with classification only.
    """
    image = pixels[None, None]  # [1, 1, H, W] uint8
    inputs = {contract.IMAGE.name: image}
    classify = asyncio.ensure_future(gateway.classifier.infer(
        inputs, contract.names(contract.CLASSIFIER_OUTPUTS), request_id, deadline
    ))
    detect = asyncio.ensure_future(gateway.detector.infer(
        inputs, contract.names(contract.DETECTOR_OUTPUTS), request_id, deadline
    ))
    try:
        classified = await classify
    except BaseException as exc:
        detect.cancel()
        await asyncio.wait({detect})
        if not detect.cancelled():
            detect.exception()
        if not isinstance(exc, Exception) or isinstance(exc, UpstreamError):
            raise  # cancellation (deadline, client gone) or a clear upstream error
        if isinstance(exc, TimeoutError):
            raise UpstreamTimeoutError("classifier", "no answer in time") from exc
        raise UpstreamError("classifier", f"unexpected failure: {exc!r}") from exc
    try:
        detected: InferResult[DetectorFacts] | Exception = await detect
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - any detector failure degrades to a warning
        detected = exc
    return classified, detected


def _detection_warning(failure: Exception) -> str:
    problem = failure.problem if isinstance(failure, UpstreamError) else repr(failure)
    log.warning("detector unavailable: %s", problem)
    return f"Detection unavailable ({problem}); classification only."


def fuse(
    settings: Settings,
    classified: InferResult[ClassifierFacts],
    detected: InferResult[DetectorFacts] | None,
) -> Fused:
    """The classifier's call in words, and the detector's boxes as fusion with it keeps them."""
    probability = float(classified.outputs[contract.ABNORMAL_PROBABILITY.name][0, 0])
    # The classifier made the call (next to its threshold); it is read, never recomputed.
    abnormal = bool(classified.outputs[contract.ABNORMAL.name][0, 0])
    diagnosis, confidence = diagnose(abnormal, probability)
    if detected is None:
        return Fused(diagnosis, confidence, probability, None, 0)
    boxes, suppressed = apply_fusion(
        boxes_from_outputs(detected.outputs, detected.facts.class_names), diagnosis,
        settings.fusion_mode, settings.fusion_normal_min_confidence,
    )
    return Fused(diagnosis, confidence, probability, boxes, suppressed)


async def draw(
    gateway: Gateway,
    image: dicom.CanonicalImage,
    boxes: list[Box],
    *,
    annotate: bool,
    canonical: bool,
) -> tuple[str | None, str | None]:
    """The PNG data URIs asked for: the annotated image and the canonical image (or None)."""
    annotated_uri = canonical_uri = None
    if annotate:
        annotated_uri = await _in_pool(gateway, lambda: png_data_uri(
            draw_boxes(image.pixels, boxes, gateway.settings.annotate_long_side)
        ))
    if canonical:
        canonical_uri = await _in_pool(gateway, lambda: png_data_uri(image.pixels))
    return annotated_uri, canonical_uri


async def _in_pool(gateway: Gateway, work: Callable[[], T]) -> T:
    """CPU work (PNG encoding) in the decode pool, off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(gateway.decode_pool, work)


def _log(findings: Findings) -> None:
    fused, facts = findings.fused, findings.classified.facts
    log.info(
        "analysed upload",
        extra={
            "diagnosis": fused.diagnosis,
            "abnormal_probability": round(fused.probability, 4),
            "detections": None if fused.boxes is None else len(fused.boxes),
            "bundle": facts.name,
            "demo": facts.demo,
            "total_ms": findings.timings.total,
        },
    )
