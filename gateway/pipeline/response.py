"""The answers of ``/upload`` and ``/preview``, built once from what the analysis found.

The pipeline (:mod:`gateway.pipeline.analyze`) works in canonical pixels; the answer speaks in
the original image's pixels, names the model bundle, and shows the patient only as
``PHI_MODE`` allows.
"""

from __future__ import annotations

import urllib.parse

from gateway.pipeline import phi
from gateway.pipeline.analyze import Findings
from gateway.pipeline.fusion import Box, to_original
from gateway.schemas import (
    BundlePart,
    BundleSummary,
    Detection,
    DicomSummary,
    FusionInfo,
    ImageGeometry,
    InputSelection,
    UploadResponse,
)
from shared import contract, dicom
from shared.contract import ServedFacts, facts_digest
from shared.dicom.source import SourceImage
from shared.settings import GatewaySettings


def upload_response(findings: Findings, settings: GatewaySettings) -> UploadResponse:
    """The ``/upload`` JSON of one finished analysis."""
    facts = findings.classified.facts
    detected = findings.detected
    fused = findings.fused
    bundle = bundle_summary(facts, detected.facts if detected else None)
    return UploadResponse(
        diagnosis=fused.diagnosis,
        confidence=round(fused.confidence, 6),
        abnormal_probability=round(fused.probability, 6),
        threshold=facts.threshold,
        ensemble_prediction=member_probabilities(findings),
        ensemble_weights=dict(zip(facts.members, facts.weights, strict=False)),
        detections=detections(findings),
        metadata=dicom_summary(findings.metadata, settings),
        annotated_image=findings.annotated_image,
        canonical_image=findings.canonical_image,
        image=image_geometry(findings.canonical),
        fusion=FusionInfo(
            mode=settings.fusion_mode.value,  # type: ignore[arg-type]
            detector_threshold=detected.facts.conf if detected else None,
            normal_min_confidence=settings.fusion_normal_min_confidence,
            boxes_suppressed=fused.suppressed,
        ),
        model_bundle=bundle,
        demo=bundle.demo,
        timings_ms=findings.timings,
        request_id=findings.request_id,
        warnings=([facts.demo_warning] if facts.demo_warning else []) + findings.warnings,
        input_selection=input_selection(findings.canonical.selection),
        viewer_url=viewer_link(settings.viewer_url, findings.metadata.source),
    )


def member_probabilities(findings: Findings) -> dict[str, float]:
    """Each ensemble member's probability, by name, as the answer reports it."""
    facts = findings.classified.facts
    members = findings.classified.outputs[contract.MEMBER_PROBABILITIES.name][0]
    return {n: round(float(p), 6) for n, p in zip(facts.members, members, strict=False)}


def detections(findings: Findings) -> list[Detection] | None:
    """The boxes fusion kept, in original pixels (None: the detector did not answer)."""
    if findings.fused.boxes is None:
        return None
    return [detection(box, findings.canonical) for box in findings.fused.boxes]


def viewer_link(viewer_url: str | None, source: SourceImage | None) -> str | None:
    """``VIEWER_URL``'s OHIF link to the image's study (its UID VR-checked), or None."""
    if not viewer_url or source is None or not source.study_instance_uid:
        return None
    query = urllib.parse.urlencode({"StudyInstanceUIDs": source.study_instance_uid})
    return f"{viewer_url.rstrip('/')}/viewer?{query}"


def input_selection(selection: dicom.Selection | None) -> InputSelection | None:
    """The rule that accepted the image (None: INPUT_SELECTION=off)."""
    if selection is None:
        return None
    return InputSelection(
        rule=selection.rule, accepted_by=selection.reason, warnings=list(selection.warnings)
    )


def detection(box: Box, canonical: dicom.CanonicalImage) -> Detection:
    """A fused box (canonical pixels) as the answer reports it (original pixels)."""
    original = to_original(
        box, canonical.scale_x, canonical.scale_y,
        canonical.original_columns, canonical.original_rows,
    )
    return Detection(
        class_name=original.class_name,
        class_id=original.class_id,
        confidence=round(original.confidence, 4),
        bbox=[round(v, 1) for v in (original.x1, original.y1, original.x2, original.y2)],
    )


def dicom_summary(metadata: dicom.DicomMetadata, settings: GatewaySettings) -> DicomSummary:
    """The image's metadata, with the patient ID as ``PHI_MODE`` allows."""
    return DicomSummary(
        patient_id=phi.public_patient_id(
            metadata.patient_id, settings.phi_mode, settings.pseudonym_secret
        ),
        study_date=phi.public_study_date(
            metadata.study_date, settings.study_date_mode, settings.phi_mode
        ),
        modality=metadata.modality,
        rows=metadata.rows,
        columns=metadata.columns,
        photometric_interpretation=metadata.photometric_interpretation,
        transfer_syntax_uid=metadata.transfer_syntax_uid,
        transfer_syntax=metadata.transfer_syntax_name,
        bits_stored=metadata.bits_stored,
    )


def image_geometry(canonical: dicom.CanonicalImage) -> ImageGeometry:
    height, width = canonical.pixels.shape
    return ImageGeometry(
        original_width=canonical.original_columns,
        original_height=canonical.original_rows,
        canonical_width=width,
        canonical_height=height,
        scale_x=canonical.scale_x,
        scale_y=canonical.scale_y,
    )


def preview_headers(canonical: dicom.CanonicalImage) -> dict[str, str]:
    """``/preview``'s geometry headers (its body is the canonical PNG)."""
    height, width = canonical.pixels.shape
    headers = {
        "X-Original-Width": str(canonical.original_columns),
        "X-Original-Height": str(canonical.original_rows),
        "X-Canonical-Width": str(width),
        "X-Canonical-Height": str(height),
        "X-Scale-X": repr(canonical.scale_x),
        "X-Scale-Y": repr(canonical.scale_y),
    }
    if canonical.warnings:
        headers["X-Warnings"] = " | ".join(canonical.warnings)[:1000]
    return headers


def bundle_summary(classifier: ServedFacts, detector: ServedFacts | None) -> BundleSummary:
    """The bundle of one answer: the classifier's, checkpoints of both parts (by path),
    each part's bundle, and demo if either part is."""
    parts = {"classifier": classifier}
    if detector is not None:
        parts["detector"] = detector
    return parts_summary(parts)


def parts_summary(parts: dict[str, ServedFacts]) -> BundleSummary:
    """The bundle of the first part, with every part's checkpoints and bundle."""
    first = next(iter(parts.values()))
    checkpoints: dict[str, str] = {}
    for facts in parts.values():
        checkpoints.update(facts.checkpoints)
    return BundleSummary(
        name=first.name,
        kind=first.kind.value,  # type: ignore[arg-type]
        demo=any(facts.demo for facts in parts.values()),
        checkpoints=checkpoints,
        parts={
            service: BundlePart(
                name=facts.name, kind=facts.kind.value,  # type: ignore[arg-type]
                digest=facts_digest(facts.identity()),
            )
            for service, facts in parts.items()
        },
    )
