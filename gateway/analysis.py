"""One upload, end to end: decode once, ask both models at the same time, merge.

Plain async functions over a :class:`Gateway` (the clients and settings), so the route
stays thin and the logic is testable without HTTP.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

from gateway import phi
from gateway.annotate import draw_boxes, png_data_uri
from gateway.audit import AuditFacts, AuditLog
from gateway.fusion import Box, apply_fusion, boxes_from_outputs, diagnose, to_original
from gateway.telemetry import GatewayMetrics
from gateway.upstream import (
    MAX_CONNECTIONS,
    MAX_KEEPALIVE_CONNECTIONS,
    InferResult,
    ModelClient,
    UpstreamError,
    UpstreamTimeoutError,
)
from shared import contract, dicom
from shared.contract import ClassifierFacts, DetectorFacts, ServedFacts
from shared.schemas import (
    BundleSummary,
    Detection,
    DicomSummary,
    FusionInfo,
    ImageGeometry,
    Timings,
    UploadResponse,
)
from shared.settings import Settings

log = logging.getLogger(__name__)

# Of the request's deadline, this much is kept for merging and rendering after the models:
# a detector that is slow gets cut off early enough to still answer 200 with a warning.
RENDER_RESERVE_S = 1.0


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
    decodable: dict[str, bool] = field(default_factory=dict)

    @classmethod
    def create(cls, settings: Settings, metrics: GatewayMetrics | None = None) -> Gateway:
        metrics = metrics or GatewayMetrics()
        http = httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_KEEPALIVE_CONNECTIONS
            )
        )
        workers = settings.decode_workers or os.cpu_count() or 1
        token = settings.internal_token.get_secret_value() if settings.internal_token else None
        return cls(
            settings=settings,
            http=http,
            classifier=ModelClient(
                "classifier", contract.CLASSIFIER_MODEL, settings.classifier_urls, http,
                settings.classifier_timeout_s or settings.upstream_timeout_s,
                token=token or None, observe=metrics.observe_attempt,
                facts_type=ClassifierFacts,
            ),
            detector=ModelClient(
                "detector", contract.DETECTOR_MODEL, settings.detector_urls, http,
                settings.detector_timeout_s or settings.upstream_timeout_s,
                token=token or None, observe=metrics.observe_attempt,
                facts_type=DetectorFacts,
            ),
            decode_pool=ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode"),
            metrics=metrics,
            audit=AuditLog(settings.audit_log_path, settings.pseudonym_secret, settings.audit_log),
        )

    async def close(self) -> None:
        await self.http.aclose()
        self.decode_pool.shutdown(wait=False, cancel_futures=True)
        if self.audit is not None:
            self.audit.close()


def decode_options(settings: Settings) -> dicom.DecodeOptions:
    """How the DICOM intake runs its crash-prone decoders (worker processes, timeout)."""
    return dicom.DecodeOptions(
        isolate_decoders=settings.dicom_isolate_decoders,
        decode_timeout_s=settings.dicom_decode_timeout_s,
    )


async def decode(gateway: Gateway, data: bytes) -> tuple[dicom.CanonicalImage, dicom.DicomMetadata]:
    """DICOM bytes -> canonical image, in the decode pool (never on the event loop).

    The call runs in a copy of this context so its log lines carry the request id.
    """
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    started = time.perf_counter()
    try:
        work = functools.partial(
            dicom.decode_dicom, data, gateway.settings.canonical_long_side,
            options=decode_options(gateway.settings),
        )
        return await loop.run_in_executor(gateway.decode_pool, context.run, work)
    finally:
        gateway.metrics.decode_seconds.observe(time.perf_counter() - started)


def bundle_summary(classifier: ServedFacts, detector: ServedFacts | None) -> BundleSummary:
    """The bundle as both services report it (checkpoints of both, by path)."""
    checkpoints = dict(classifier.checkpoints)
    if detector is not None:
        checkpoints.update(detector.checkpoints)
    return BundleSummary(
        name=classifier.name,
        kind=classifier.kind.value,  # type: ignore[arg-type]
        demo=classifier.demo,
        checkpoints=checkpoints,
    )


async def analyze(
    gateway: Gateway,
    data: bytes,
    *,
    annotate: bool,
    request_id: str,
    include_canonical: bool = False,
    deadline: float | None = None,
    facts: AuditFacts | None = None,
) -> UploadResponse:
    """The whole ``/upload`` pipeline; raises DicomError or UpstreamError for the route.

    ``deadline`` (``time.monotonic()``) bounds both model calls; ``facts`` receives the
    image's UIDs for the audit line.
    """
    settings = gateway.settings
    started = time.perf_counter()
    canonical, metadata = await decode(gateway, data)
    decoded = time.perf_counter()
    if facts is not None:
        facts.study_instance_uid = metadata.study_instance_uid
        facts.sop_instance_uid = metadata.sop_instance_uid

    image = canonical.pixels[None, None]  # [1, 1, H, W] uint8
    model_deadline = None if deadline is None else deadline - RENDER_RESERVE_S
    classify = asyncio.ensure_future(
        gateway.classifier.infer(
            {contract.IMAGE.name: image}, contract.names(contract.CLASSIFIER_OUTPUTS),
            request_id, model_deadline,
        )
    )
    detect = asyncio.ensure_future(
        gateway.detector.infer(
            {contract.IMAGE.name: image}, contract.names(contract.DETECTOR_OUTPUTS),
            request_id, model_deadline,
        )
    )
    try:
        classified = await classify
    except BaseException as exc:
        # No diagnosis without the classifier: stop the detector and answer now.
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
        detected: InferResult[DetectorFacts] | BaseException = await detect
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - any detector failure degrades to a warning
        detected = exc
    inferred = time.perf_counter()

    warnings = list(canonical.warnings)
    detector_result: InferResult[DetectorFacts] | None = None
    if isinstance(detected, InferResult):
        detector_result = detected
    else:
        problem = detected.problem if isinstance(detected, UpstreamError) else repr(detected)
        warnings.append(f"Detection unavailable ({problem}); classification only.")
        log.warning("detector unavailable: %s", problem)

    response, canonical_boxes = merge(
        gateway, canonical, metadata, classified, detector_result, warnings, request_id
    )
    merged = time.perf_counter()
    if annotate:
        annotated = await asyncio.get_running_loop().run_in_executor(
            gateway.decode_pool,
            lambda: png_data_uri(
                draw_boxes(canonical.pixels, canonical_boxes, settings.annotate_long_side)
            ),
        )
        response.annotated_image = annotated
    if include_canonical:
        response.canonical_image = await asyncio.get_running_loop().run_in_executor(
            gateway.decode_pool, png_data_uri, canonical.pixels
        )
    finished = time.perf_counter()
    response.timings_ms = Timings(
        decode=round((decoded - started) * 1000, 2),
        classify=round(classified.elapsed_ms, 2),
        detect=round(detector_result.elapsed_ms, 2) if detector_result else None,
        merge=round((merged - inferred) * 1000, 2),
        render=round((finished - merged) * 1000, 2),
        total=round((finished - started) * 1000, 2),
    )
    log.info(
        "analysed upload",
        extra={
            "diagnosis": response.diagnosis,
            "abnormal_probability": round(response.abnormal_probability, 4),
            "detections": None if response.detections is None else len(response.detections),
            "bundle": response.model_bundle.name,
            "demo": response.demo,
            "total_ms": response.timings_ms.total,
        },
    )
    return response


def merge(
    gateway: Gateway,
    canonical: dicom.CanonicalImage,
    metadata: dicom.DicomMetadata,
    classified: InferResult[ClassifierFacts],
    detected: InferResult[DetectorFacts] | None,
    warnings: list[str],
    request_id: str,
) -> tuple[UploadResponse, list[Box]]:
    """Build the response (without timings/annotation) and the boxes to draw."""
    settings = gateway.settings
    facts = classified.facts
    probability = float(classified.outputs[contract.ABNORMAL_PROBABILITY.name][0, 0])
    members = classified.outputs[contract.MEMBER_PROBABILITIES.name][0]
    # The classifier made the call (next to its threshold); it is read, never recomputed.
    abnormal = bool(classified.outputs[contract.ABNORMAL.name][0, 0])
    diagnosis, confidence = diagnose(abnormal, probability)

    bundle = bundle_summary(facts, detected.facts if detected else None)
    if (text := facts.demo_warning) is not None:
        warnings.insert(0, text)

    detections: list[Detection] | None = None
    drawn: list[Box] = []
    suppressed = 0
    if detected is not None:
        canonical_boxes = boxes_from_outputs(detected.outputs, detected.facts.class_names)
        drawn, suppressed = apply_fusion(
            canonical_boxes, diagnosis, settings.fusion_mode, settings.fusion_normal_min_confidence
        )
        detections = [
            Detection(
                class_name=box.class_name,
                class_id=box.class_id,
                confidence=round(box.confidence, 4),
                bbox=[round(v, 1) for v in (box.x1, box.y1, box.x2, box.y2)],
            )
            for box in (
                to_original(
                    b, canonical.scale_x, canonical.scale_y,
                    canonical.original_columns, canonical.original_rows,
                )
                for b in drawn
            )
        ]

    height, width = canonical.pixels.shape
    response = UploadResponse(
        diagnosis=diagnosis,
        confidence=round(confidence, 6),
        abnormal_probability=round(probability, 6),
        threshold=facts.threshold,
        ensemble_prediction={
            n: round(float(p), 6) for n, p in zip(facts.members, members, strict=False)
        },
        ensemble_weights=dict(zip(facts.members, facts.weights, strict=False)),
        detections=detections,
        metadata=DicomSummary(
            patient_id=phi.public_patient_id(
                metadata.patient_id, settings.phi_mode, settings.pseudonym_secret
            ),
            study_date=metadata.study_date,
            modality=metadata.modality,
            rows=metadata.rows,
            columns=metadata.columns,
            photometric_interpretation=metadata.photometric_interpretation,
            transfer_syntax_uid=metadata.transfer_syntax_uid,
            transfer_syntax=metadata.transfer_syntax_name,
            bits_stored=metadata.bits_stored,
        ),
        annotated_image=None,
        image=ImageGeometry(
            original_width=canonical.original_columns,
            original_height=canonical.original_rows,
            canonical_width=width,
            canonical_height=height,
            scale_x=canonical.scale_x,
            scale_y=canonical.scale_y,
        ),
        fusion=FusionInfo(
            mode=settings.fusion_mode.value,  # type: ignore[arg-type]
            detector_threshold=detected.facts.conf if detected else None,
            normal_min_confidence=settings.fusion_normal_min_confidence,
            boxes_suppressed=suppressed,
        ),
        model_bundle=bundle,
        demo=bundle.demo,
        timings_ms=Timings(decode=0, classify=0, detect=None, merge=0, render=0, total=0),
        request_id=request_id,
        warnings=warnings,
    )
    return response, drawn
