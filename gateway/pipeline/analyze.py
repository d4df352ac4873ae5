"""One upload, end to end: decode once, ask both models at the same time, fuse, draw.

Plain async functions over a :class:`~gateway.pipeline.context.Pipeline` (the clients,
the decode pool and the settings), so the routes stay thin and the logic is testable
without HTTP. The result is :class:`Findings`, in canonical pixels;
:mod:`gateway.pipeline.response` turns it into the ``/upload`` JSON.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from gateway.pipeline.annotate import draw_boxes, png_data_uri
from gateway.pipeline.context import Pipeline
from gateway.pipeline.decode import decode
from gateway.pipeline.fusion import Box, Diagnosis, apply_fusion, boxes_from_outputs, diagnose
from gateway.schemas import Timings
from gateway.upstream.client import InferResult
from gateway.upstream.errors import UpstreamError, UpstreamTimeoutError
from shared import contract, dicom, tracing
from shared.contract import ClassifierFacts, DetectorFacts
from shared.settings import GatewaySettings

log = logging.getLogger(__name__)
T = TypeVar("T")

# Of the request's deadline, this much is kept for merging and rendering after the models:
# a detector that is slow gets cut off early enough to still answer 200 with a warning.
RENDER_RESERVE_S = 1.0


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
    pipeline: Pipeline,
    data: bytes,
    *,
    annotate: bool,
    request_id: str,
    include_canonical: bool = False,
    deadline: float | None = None,
    check: Callable[[dicom.DicomMetadata], None] | None = None,
) -> Findings:
    """The whole ``/upload`` pipeline; raises DicomError or UpstreamError for the route.

    ``deadline`` (``time.monotonic()``) bounds both model calls; ``check`` sees the
    decoded image's header before the models are asked: it notes the UIDs for the audit
    line, and may refuse the image (raising a ServiceError; STOW-RS: the study in the path).
    """
    _refuse_while_building(pipeline)
    started = time.perf_counter()
    canonical, metadata = await decode(pipeline, data)
    decoded = time.perf_counter()
    if check is not None:
        check(metadata)

    model_deadline = None if deadline is None else deadline - RENDER_RESERVE_S
    classified, answer = await infer_both(pipeline, canonical.pixels, request_id, model_deadline)
    inferred = time.perf_counter()
    warnings = list(canonical.warnings)
    detected = answer if isinstance(answer, InferResult) else None
    if not isinstance(answer, InferResult):
        warnings.append(_detection_warning(answer))

    with tracing.span("fusion"):
        fused = fuse(pipeline.settings, classified, detected)
    merged = time.perf_counter()
    annotated_image, canonical_image = await draw(
        pipeline, canonical, fused.boxes or [], annotate=annotate, canonical=include_canonical
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


def _refuse_while_building(pipeline: Pipeline) -> None:
    """The bundle is still being built: no result from anything else (503 + progress)."""
    if pipeline.building is not None and (refused := pipeline.building.refusal()) is not None:
        raise refused


async def _traced(name: str, call: Awaitable[T]) -> T:
    """``call`` inside a client span: every attempt on a replica (a retry too) is its
    child, through the ``traceparent`` the HTTP client adds."""
    with tracing.span(name, kind="client"):
        return await call


async def infer_both(
    pipeline: Pipeline, pixels: np.ndarray, request_id: str, deadline: float | None
) -> tuple[InferResult[ClassifierFacts], InferResult[DetectorFacts] | Exception]:
    """Both models at once: the classifier's answer, and the detector's or its failure.

    Without the classifier there is no diagnosis: its failure stops the detector and
    is raised (as an :class:`UpstreamError`). A detector failure is returned instead,
    since the answer can go on with classification only.
    """
    image = pixels[None, None]  # [1, 1, H, W] uint8
    inputs = {contract.IMAGE.name: image}
    classify = asyncio.ensure_future(_traced("call classifier", pipeline.classifier.infer(
        inputs, contract.names(contract.CLASSIFIER_OUTPUTS), request_id, deadline
    )))
    detect = asyncio.ensure_future(_traced("call detector", pipeline.detector.infer(
        inputs, contract.names(contract.DETECTOR_OUTPUTS), request_id, deadline
    )))
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
    settings: GatewaySettings,
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
    pipeline: Pipeline,
    image: dicom.CanonicalImage,
    boxes: list[Box],
    *,
    annotate: bool,
    canonical: bool,
) -> tuple[str | None, str | None]:
    """The PNG data URIs asked for: the annotated image and the canonical image (or None)."""
    annotated_uri = canonical_uri = None
    if annotate:
        annotated_uri = await _in_pool(pipeline, lambda: png_data_uri(
            draw_boxes(image.pixels, boxes, pipeline.settings.annotate_long_side)
        ))
    if canonical:
        canonical_uri = await _in_pool(pipeline, lambda: png_data_uri(image.pixels))
    return annotated_uri, canonical_uri


async def _in_pool(pipeline: Pipeline, work: Callable[[], T]) -> T:
    """CPU work (PNG encoding) in the decode pool, off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(pipeline.decode_pool, work)


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
