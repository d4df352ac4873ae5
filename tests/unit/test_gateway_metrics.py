"""The gateway's metrics the alert rules read (gateway.telemetry, deploy/prometheus/)."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from gateway.telemetry import GatewayMetrics, decode_refusal_reason
from shared import dicom


@pytest.mark.parametrize(("error", "reason"), [
    (dicom.NotDicomError("not a DICOM file"), "not_dicom"),
    (dicom.DicomLimitError("too many elements", "MAX_DICOM_ELEMENTS"), "limit"),
    (dicom.NotSelectedError("not a spine radiograph: CHEST", rule="body_part"), "not_selected"),
    (dicom.UnsupportedDicomError("multi-frame"), "unsupported"),
])
def test_a_refused_decode_is_labelled_by_its_kind(error: dicom.DicomError, reason: str) -> None:
    assert decode_refusal_reason(error) == reason
    metrics = GatewayMetrics()
    metrics.decode_refused(error)
    text = generate_latest(metrics.registry).decode()
    assert f'spine_decode_refusals_total{{reason="{reason}"}} 1.0' in text


def test_replicas_are_read_at_each_scrape_and_ejections_counted() -> None:
    metrics = GatewayMetrics()
    states = {"detector": {"ready": 2, "ejected": 0, "not_ready": 0}}
    metrics.watch_replicas(lambda: states)
    assert 'spine_upstream_replicas{service="detector",state="ready"} 2.0' in (
        generate_latest(metrics.registry).decode()
    )
    states["detector"] = {"ready": 1, "ejected": 1, "not_ready": 0}
    metrics.ejected("detector")
    text = generate_latest(metrics.registry).decode()
    assert 'spine_upstream_replicas{service="detector",state="ready"} 1.0' in text
    assert 'spine_upstream_replicas{service="detector",state="ejected"} 1.0' in text
    assert 'spine_upstream_ejections_total{service="detector"} 1.0' in text


def test_before_a_gateway_watches_them_no_replica_is_exported() -> None:
    text = generate_latest(GatewayMetrics().registry).decode()
    assert "spine_upstream_replicas{" not in text
