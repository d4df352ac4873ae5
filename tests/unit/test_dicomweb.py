"""The STOW-RS answer without services: statuses, failure reasons, a standard client's parse."""

from __future__ import annotations

import json

import pydicom
import pytest

from gateway.dicomweb.stow import (
    Stored,
    StudyMismatchError,
    failure_reason,
    store_response,
)
from gateway.upstream.errors import UpstreamTimeoutError, UpstreamUnavailableError
from shared import dicom
from shared.dicomnet import DeliveryQueueFull

OK = Stored(1, "1.2.840.10008.5.1.4.1.1.1.1", "1.2.3.1", analysis={"diagnosis": "Normal"})
BAD = Stored(2, None, None, failure=0xC000, status=400, message="not DICOM")


@pytest.mark.parametrize(
    ("results", "status"), [([OK], 200), ([OK, BAD], 202), ([BAD], 409)]
)
def test_status_follows_ps3_18(results, status) -> None:
    assert store_response(results)[0] == status


def test_a_standard_parser_reads_the_answer_and_our_extension() -> None:
    _, body = store_response([OK, BAD])
    ds = pydicom.Dataset.from_json(json.loads(json.dumps(body)))
    assert ds.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == "1.2.3.1"
    assert ds.FailedSOPSequence[0].FailureReason == 0xC000
    assert "ReferencedSOPInstanceUID" not in ds.FailedSOPSequence[0]  # unreadable: no UID
    extension = json.loads(ds.ReferencedSOPSequence[0][0x00091001].value)
    assert extension == {"part": 1, "diagnosis": "Normal"}
    assert ds.ReferencedSOPSequence[0][0x00090010].value == "SPINE ANALYSIS 1"
    failed = json.loads(ds.FailedSOPSequence[0][0x00091001].value)
    assert failed == {"part": 2, "status": 400, "message": "not DICOM"}


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (StudyMismatchError("x"), 0xA900),
        (dicom.NotSelectedError("not a spine radiograph: x", rule="body_part"), 0x0122),
        (dicom.NotDicomError("x"), 0xC000),
        (dicom.DicomLimitError("x", "MAX_PIXELS"), 0xC000),
        (dicom.UnsupportedDicomError("x"), 0xA900),
        (DeliveryQueueFull("x"), 0xA700),
        (UpstreamUnavailableError("classifier", "x"), 0xA700),
        (UpstreamTimeoutError("classifier", "x"), 0x0110),
    ],
)
def test_failure_reasons(error, reason) -> None:
    assert failure_reason(error) == reason
