"""The Comprehensive SR (TID 1500 Measurement Report) of one analysis.

Content, top down: the observer is the algorithm (a device named after the bundle); one
measurement group (TID 1501) for the whole image with the finding Normal/Abnormal, the
ensemble probability, the decision threshold and each member's probability; one planar
ROI group (TID 1410) per returned box, a closed POLYLINE in the original image's pixels
referencing the source image, with its coded finding type and the detection confidence;
every group names the algorithm (bundle name, kind, checkpoint sha256s, our version).
The intended-use text (and DEMO / UNTRAINED) is a TEXT item of the report and the series
description. The document is UNVERIFIED and not complete (no person has signed it).

Shaped so that the OHIF Viewer (3.13.2, extension ``cornerstone-dicom-sr``) draws it all
(docs/INTEGRATION.md "What OHIF shows" cites its code): every NUM of the image group is
INFERRED FROM the whole image's outline (OHIF takes a TID 1501 group's geometry from its
NUMs and fails the whole SR on a group without any), probabilities are in percent, and
the NUM concepts name the call and each box's class (OHIF labels a drawing with its NUMs
only, never with the Finding).
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from shared.dicom.results import codes
from shared.dicom.results.common import (
    MANUFACTURER,
    ObjectUids,
    ResultKind,
    coding_schemes,
    derived_uid,
    rectangle,
    reference_dataset,
    series_description,
    series_identity,
)
from shared.dicom.results.model import AnalysisResult
from shared.dicom.source import SourceImage


def algorithm(result: AnalysisResult) -> hd.sr.AlgorithmIdentification:
    """The bundle as TID 4019 Algorithm Identification: name, kind, checkpoints, version."""
    parameters = [
        f"bundle kind: {result.bundle_kind}", f"software: {MANUFACTURER} {result.version}"
    ]
    if result.fusion_mode:
        parameters.append(f"fusion rule: {result.fusion_mode}")
    parameters += [f"sha256 {path}: {sha}" for path, sha in sorted(result.checkpoints.items())]
    return hd.sr.AlgorithmIdentification(
        name=result.bundle_name[:64], version=result.version, parameters=parameters,
        manufacturer=MANUFACTURER,
    )


def short_algorithm(
    result: AnalysisResult, name: str | None = None
) -> hd.sr.AlgorithmIdentification:
    """Name and version only: for the boxes and members (the image group has the rest).

    Repeating the checkpoints in every group would make the tree, and highdicom's
    copying and evidence search over it, several times larger (about 30 ms a box).
    """
    return hd.sr.AlgorithmIdentification(
        name=(name or result.bundle_name)[:64], version=result.version
    )


def _measurement(
    name: Code, fraction: float, algorithm_id: hd.sr.AlgorithmIdentification | None = None,
    inferred_from: hd.sr.CoordinatesForMeasurement | None = None,
) -> hd.sr.Measurement:
    """A probability or confidence (0..1 in the JSON) as a NUM in percent."""
    return hd.sr.Measurement(
        name=name, value=round(100.0 * float(fraction), 6), unit=codes.PERCENT,
        algorithm_id=algorithm_id,
        referenced_coordinates=None if inferred_from is None else [inferred_from],
    )


def whole_image(source: SourceImage) -> hd.sr.CoordinatesForMeasurement:
    """The outline of the whole image: what an image-level value is INFERRED FROM."""
    return hd.sr.CoordinatesForMeasurement(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=np.array(
            rectangle((0.0, 0.0, float(source.columns), float(source.rows))), dtype=np.float64
        ),
        source_image=hd.sr.SourceImageForRegion(
            source.sop_class_uid, source.sop_instance_uid  # type: ignore[arg-type]
        ),
    )


def _tracking(uids: ObjectUids, identifier: str) -> hd.sr.TrackingIdentifier:
    """A measurement group's tracking UID: derived from the SR's own UID, as stable as it."""
    return hd.sr.TrackingIdentifier(
        uid=derived_uid(uids.instance, "tracking", identifier), identifier=identifier
    )


def _image_group(
    source: SourceImage, result: AnalysisResult, uids: ObjectUids
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    region = whole_image(source)
    measurements = [
        _measurement(
            codes.PROBABILITY_OF_CALL[result.diagnosis], result.abnormal_probability,
            inferred_from=region,
        ),
        _measurement(codes.DECISION_THRESHOLD, result.threshold, inferred_from=region),
        *(
            _measurement(
                codes.MEMBER_PROBABILITY, p, short_algorithm(result, f"{result.bundle_name}/{m}"),
                inferred_from=region,
            )
            for m, p in result.members.items()
        ),
    ]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(uids, "Image-level finding"),
        # TID 1501 "Finding" (DCM 121071) of the whole image: SNOMED Normal / Abnormal
        finding_type=codes.DIAGNOSIS_VALUES[result.diagnosis],
        algorithm_id=algorithm(result),
        measurements=measurements,
        source_images=[
            hd.sr.SourceImageForMeasurementGroup(source.sop_class_uid, source.sop_instance_uid)
        ],
    )


def _box_groups(
    source: SourceImage, result: AnalysisResult, uids: ObjectUids
) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    groups = []
    algorithm_id = short_algorithm(result)
    for number, box in enumerate(result.boxes or (), start=1):
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=np.array(rectangle(box.bbox), dtype=np.float64),
            source_image=hd.sr.SourceImageForRegion(
                source.sop_class_uid, source.sop_instance_uid  # type: ignore[arg-type]
            ),
        )
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=_tracking(
                    uids, f"Detection {number}: {box.class_name}"[:64]
                ),
                referenced_region=region,
                finding_type=codes.finding_type(box.class_name),
                finding_category=codes.LESION,
                algorithm_id=algorithm_id,
                measurements=[
                    _measurement(codes.detection_confidence(box.class_name), box.confidence)
                ],
            )
        )
    return groups


def device_observer(result: AnalysisResult) -> hd.sr.ObserverContext:
    """The algorithm as the observer: a device named after the bundle (SR and KOS)."""
    return hd.sr.ObserverContext(
        observer_type=dcm_codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=[MANUFACTURER, result.bundle_name]),
            name=result.bundle_name[:64],
            manufacturer_name=MANUFACTURER,
            model_name=result.bundle_kind,
        ),
    )


def build_sr(
    source: SourceImage, result: AnalysisResult, uids: ObjectUids
) -> hd.sr.ComprehensiveSR:
    """The SR dataset (raises ResultWriteError when the source lacks its UIDs)."""
    evidence = reference_dataset(source)
    observer = device_observer(result)
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.PROCEDURE,
        imaging_measurements=[
            _image_group(source, result, uids), *_box_groups(source, result, uids)
        ],
    )
    root = report[0]
    root.ContentSequence.append(
        hd.sr.TextContentItem(
            name=codes.DISCLAIMER, value=result.disclaimer,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    )
    return hd.sr.ComprehensiveSR(
        evidence=[evidence],
        content=root,
        **series_identity(ResultKind.SR, uids),  # type: ignore[arg-type]
        is_complete=False,
        is_final=False,
        is_verified=False,
        series_description=series_description(result, "SR"),
        coding_schemes=coding_schemes(),
    )
