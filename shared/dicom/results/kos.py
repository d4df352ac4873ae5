"""A Key Object Selection document flagging the analysed image (IHE AI Results lists KOS
among the result objects): for worklists and viewers that show a study's key images.

Title "Of Interest" (DCM 113000, CID 7010), the algorithm as the observer device, one
referenced instance (the analysed image), and a description with the call and the
intended use ("AI: Abnormal, P(abnormal) 73.4% - NOT FOR DIAGNOSTIC USE - DEMO").
"""

from __future__ import annotations

import highdicom as hd
from pydicom.sr.codedict import codes as dcm_codes

from shared.dicom.results.common import (
    ObjectUids,
    ResultKind,
    reference_dataset,
    series_description,
    series_identity,
)
from shared.dicom.results.model import AnalysisResult
from shared.dicom.results.sr import device_observer
from shared.dicom.source import SourceImage


def description(result: AnalysisResult) -> str:
    """The call and the warning, in the 1024 characters of a TEXT item."""
    return (
        f"AI: {result.diagnosis}, P(abnormal) {100 * result.abnormal_probability:.1f}% "
        f"(threshold {100 * result.threshold:.1f}%). {result.disclaimer}"
    )[:1024]


def build_kos(
    source: SourceImage, result: AnalysisResult, uids: ObjectUids
) -> hd.ko.KeyObjectSelectionDocument:
    """The KOS dataset (raises ResultWriteError without the source's UIDs)."""
    image = reference_dataset(source)
    content = hd.ko.KeyObjectSelection(
        document_title=dcm_codes.DCM.OfInterest,
        referenced_objects=[image],
        observer_device_context=device_observer(result),
        description=description(result),
    )
    document = hd.ko.KeyObjectSelectionDocument(
        evidence=[image],
        content=content,
        **series_identity(ResultKind.KOS, uids),  # type: ignore[arg-type]
    )
    document.SeriesDescription = series_description(result, "KO")
    return document
