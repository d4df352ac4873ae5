"""The Grayscale Softcopy Presentation State: the original image as the models saw it.

For viewers that do not render SR: one graphic layer with a closed rectangle and a
label ("Disc space narrowing 57%") per returned box, a line naming the call and the
intended use at the top left, the VOI window that reproduces the models' rendering
(:func:`shared.dicom.render.display_window`) and the polarity they saw (INVERSE for
MONOCHROME1). All coordinates are the original image's pixels (PIXEL units).
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from shared.dicom.results.common import (
    DEVICE_SERIAL,
    ObjectUids,
    ResultKind,
    coding_schemes,
    rectangle,
    reference_dataset,
    series_description,
    series_identity,
)
from shared.dicom.results.model import AnalysisResult
from shared.dicom.source import SourceImage

LAYER = "AI_RESULTS"
LABEL_HEIGHT_FRACTION = 0.03  # a label's box above its rectangle, as a share of the rows


def _label_box(
    bbox: tuple[float, float, float, float], rows: int, columns: int
) -> tuple[float, float, float, float]:
    """Where a label goes: a strip just above the box (inside it at the top edge).

    Always a box of positive size inside the image, even for a box clipped flat
    against an edge (the in-process evaluation keeps those).
    """
    x1, y1, x2, _ = bbox
    height = min(max(8.0, rows * LABEL_HEIGHT_FRACTION), float(rows))
    top = y1 - height if y1 - height >= 0 else min(y1, rows - height)
    right = min(float(columns), max(x2, x1 + 1.0))
    left = max(0.0, min(x1, right - 1.0))
    return (left, top, right, top + height)


def _summary(result: AnalysisResult) -> str:
    kind = "" if result.bundle_kind == "user" else f" [{result.bundle_kind.upper()} BUNDLE]"
    return (
        f"{result.diagnosis} (p={result.abnormal_probability:.3f}, threshold "
        f"{result.threshold:.3f}){kind} - NOT FOR DIAGNOSTIC USE"
    )


def _annotation(
    source: SourceImage, result: AnalysisResult, image: Dataset
) -> tuple[hd.pr.GraphicAnnotation, hd.pr.GraphicLayer]:
    """Each box as a rectangle with its class and confidence above it, and the call on top."""
    rows, columns = source.rows, source.columns
    graphics, texts = [], []
    for box in result.boxes or ():
        graphics.append(hd.pr.GraphicObject(
            graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
            graphic_data=np.array(rectangle(box.bbox), dtype=np.float64),
            units=hd.pr.AnnotationUnitsValues.PIXEL,
        ))
        texts.append(hd.pr.TextObject(
            text_value=f"{box.class_name} {100 * box.confidence:.0f}%"[:64],
            units=hd.pr.AnnotationUnitsValues.PIXEL,
            bounding_box=_label_box(box.bbox, rows, columns),
            text_justification=hd.pr.TextJustificationValues.LEFT,
        ))
    texts.append(hd.pr.TextObject(
        text_value=_summary(result),
        units=hd.pr.AnnotationUnitsValues.PIXEL,
        bounding_box=(0.0, 0.0, float(columns), max(8.0, rows * LABEL_HEIGHT_FRACTION)),
        text_justification=hd.pr.TextJustificationValues.LEFT,
    ))
    layer = hd.pr.GraphicLayer(
        layer_name=LAYER, order=1, description="Detections of the spine lesion service"
    )
    annotation = hd.pr.GraphicAnnotation(
        referenced_images=[image],
        graphic_layer=layer,
        graphic_objects=graphics or None,
        text_objects=texts,
    )
    return annotation, layer


def _voi(source: SourceImage) -> list[hd.pr.SoftcopyVOILUTTransformation] | None:
    """The window the models saw (None: the source had none and min-max was used)."""
    if source.window is None:
        return None
    return [hd.pr.SoftcopyVOILUTTransformation(
        window_center=round(source.window.center, 4),
        window_width=round(source.window.width, 4),
        window_explanation="as analysed" if source.window_exact else "as analysed (approx.)",
        voi_lut_function=hd.VOILUTFunctionValues.LINEAR,
    )]


def build_gsps(
    source: SourceImage, result: AnalysisResult, uids: ObjectUids
) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """The presentation state dataset (raises ResultWriteError without the source's UIDs)."""
    image = reference_dataset(source)
    annotation, layer = _annotation(source, result, image)
    shape = (
        hd.PresentationLUTShapeValues.INVERSE if source.invert
        else hd.PresentationLUTShapeValues.IDENTITY
    )
    state = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[image],
        **series_identity(ResultKind.GSPS, uids),  # type: ignore[arg-type]
        manufacturer_model_name=result.bundle_name[:64],
        software_versions=result.version,
        device_serial_number=DEVICE_SERIAL,
        content_label="AI_RESULTS",
        content_description=result.disclaimer[:64],
        graphic_annotations=[annotation],
        graphic_layers=[layer],
        voi_lut_transformations=_voi(source),
        presentation_lut_transformation=hd.PresentationLUTTransformation(
            presentation_lut_shape=shape
        ),
        series_description=series_description(result, "PR"),
        coding_schemes=coding_schemes(),
    )
    # General Series Laterality is Type 2C (a paired body part); a spine has none: empty.
    state.Laterality = None
    return state
