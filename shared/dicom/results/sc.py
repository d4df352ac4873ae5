"""The burned-in fallback: a Secondary Capture image of what the models saw, boxes drawn.

For viewers that show neither the SR nor the presentation state. The pixels are the
canonical image (the grey image the models were given, long side ``CANONICAL_LONG_SIDE``)
in colour, each returned box and its "<class> <confidence>%" label drawn on it, and a
banner across the top: "AI RESULT - NOT FOR DIAGNOSTIC USE" (plus DEMO / UNTRAINED when
so) and the call with its probability and threshold. The header says it too: Burned In
Annotation YES, the series description, Image Comments (the intended-use text) and a
Source Image Sequence naming the analysed image. It is a new image in the source study.
"""

from __future__ import annotations

import cv2
import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes as dcm_codes

from shared.dicom.decode import CanonicalImage
from shared.dicom.results.common import (
    MANUFACTURER,
    ObjectUids,
    ResultKind,
    reference_dataset,
    series_description,
    series_identity,
)
from shared.dicom.results.model import AnalysisResult
from shared.dicom.source import SourceImage

BANNER = "AI RESULT - NOT FOR DIAGNOSTIC USE"
BOX_COLOUR = (255, 210, 0)  # RGB: amber, readable on any grey
TEXT_COLOUR = (255, 255, 255)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def banner_lines(result: AnalysisResult) -> list[str]:
    """The text burned in at the top: the warning, then the call."""
    kind = "" if result.bundle_kind == "user" else f" - {result.bundle_kind.upper()} MODEL"
    return [
        f"{BANNER}{kind}",
        f"{result.diagnosis}  P(abnormal) {100 * result.abnormal_probability:.1f}%  "
        f"threshold {100 * result.threshold:.1f}%",
    ]


def _text(canvas: np.ndarray, text: str, origin: tuple[int, int], scale: float) -> None:
    """White text on a black strip, legible on bright and dark bone alike."""
    thickness = max(1, round(scale * 2))
    (width, height), baseline = cv2.getTextSize(text, FONT, scale, thickness)
    x, y = origin
    cv2.rectangle(canvas, (x - 2, y - height - 3), (x + width + 2, y + baseline), (0, 0, 0), -1)
    cv2.putText(canvas, text, origin, FONT, scale, TEXT_COLOUR, thickness, cv2.LINE_AA)


def burn_in(image: CanonicalImage, result: AnalysisResult) -> np.ndarray:
    """RGB pixels: the canonical image with the boxes, labels and banner drawn."""
    canvas = np.ascontiguousarray(np.repeat(image.pixels[:, :, None], 3, axis=2))
    height, width = image.pixels.shape
    scale = max(0.4, max(height, width) / 1600)
    line = max(1, round(max(height, width) / 400))
    for box in result.boxes or ():
        x1, y1, x2, y2 = box.bbox
        p1 = (round(x1 * image.scale_x), round(y1 * image.scale_y))
        p2 = (round(x2 * image.scale_x), round(y2 * image.scale_y))
        cv2.rectangle(canvas, p1, p2, BOX_COLOUR, line)
        label = f"{box.class_name} {100 * box.confidence:.0f}%"
        _text(canvas, label, (p1[0], max(round(30 * scale), p1[1] - line - 2)), scale)
    for number, text in enumerate(banner_lines(result), start=1):
        _text(canvas, text, (6, round(number * 32 * scale)), scale)
    return canvas


def build_sc(
    source: SourceImage, result: AnalysisResult, image: CanonicalImage, uids: ObjectUids
) -> hd.sc.SCImage:
    """The Secondary Capture dataset (raises ResultWriteError without the source's UIDs)."""
    reference = reference_dataset(source)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=reference,
        pixel_array=burn_in(image, result),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        **series_identity(ResultKind.SC, uids),  # type: ignore[arg-type]
        patient_orientation=("A", "F"),  # highdicom insists; cleared below
    )
    sc.PatientOrientation = None  # Type 2C, empty: the source's orientation is not kept
    sc.Laterality = None  # Type 2C (paired body parts): a spine has none, as in the PR
    sc.BurnedInAnnotation = "YES"
    sc.SeriesDescription = series_description(result, "SC")
    sc.ImageComments = result.disclaimer
    sc.DerivationDescription = f"{BANNER}: boxes and labels burned in by {MANUFACTURER}"[:1024]
    source_item = hd.sr.SourceImageForRegion(  # a plain (SOP class, instance) reference
        source.sop_class_uid, source.sop_instance_uid  # type: ignore[arg-type]
    )
    sc.SourceImageSequence = [source_item.ReferencedSOPSequence[0]]
    sc.SourceImageSequence[0].PurposeOfReferenceCodeSequence = [
        hd.sr.CodedConcept.from_code(dcm_codes.DCM.SourceImageForImageProcessingOperation)
    ]
    sc.ImageType = ["DERIVED", "SECONDARY"]
    return sc
