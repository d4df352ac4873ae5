"""Results delivery (shared/dicomnet) against a real Orthanc: STOW-RS, C-STORE, faults.

The peer is a real Orthanc on loopback (tests/peers/orthanc.py), stopped and started
again for the fault cases; a fake peer (httpx MockTransport) only plays a broken one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys

import httpx
import pydicom
import pytest
from prometheus_client import generate_latest
from pydicom.uid import generate_uid

from bench.dicoms import radiograph_pixels
from shared.dicom import decode_dicom
from shared.dicom.results import AnalysisResult, ResultBox, write_results
from shared.dicomnet import (
    DeliveryQueueFull,
    DestinationConfigError,
    DicomWebDestination,
    ResultsDelivery,
    StoreScuDestination,
)
from shared.dicomnet.delivery import RetryPolicy, results_config_problem
from shared.dicomnet.destinations import AeAddress, read_store_response
from shared.settings import ResultsDeliverySettings
from tests.integration.stack import free_port
from tests.peers.orthanc import Orthanc
from training.dicom_writer import file_bytes, xray_dataset

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
GSPS_CLASS = "1.2.840.10008.5.1.4.1.1.11.1"
PATIENT = "Delivery^Patient"
FAST = RetryPolicy(initial_s=0.2, max_s=0.5, budget_s=30.0)


def source_dicom() -> bytes:
    """A lumbar spine DX with fresh UIDs (so tests sharing one Orthanc stay apart)."""
    return file_bytes(xray_dataset(
        radiograph_pixels(256, 192, bits=12, seed=3), sop_instance_uid=generate_uid(),
        attributes={
            "StudyInstanceUID": generate_uid(), "SeriesInstanceUID": generate_uid(),
            "PatientID": "DELIVERY-0001", "PatientName": PATIENT, "Modality": "DX",
            "BodyPartExamined": "LSPINE",
        },
    ))


def results() -> tuple[str, list[bytes], list[str]]:
    """(study UID, [SR, GSPS], their SOP Instance UIDs) of one demo analysis."""
    _, metadata = decode_dicom(source_dicom())
    written = write_results(metadata.source, AnalysisResult(
        diagnosis="Abnormal", abnormal_probability=0.8, threshold=0.449, members={"a": 0.8},
        boxes=(ResultBox("Osteophytes", 0.7, (10.0, 20.0, 60.0, 90.0)),),
        bundle_name="demo", bundle_kind="demo",
    ))
    objects = [written.sr, written.gsps]
    uids = [str(pydicom.dcmread(pydicom.filebase.DicomBytesIO(o)).SOPInstanceUID) for o in objects]
    return metadata.study_instance_uid, objects, uids


def stow(orthanc: Orthanc) -> DicomWebDestination:
    return DicomWebDestination(orthanc.dicomweb, timeout_s=5.0)


def c_store(orthanc: Orthanc) -> StoreScuDestination:
    return StoreScuDestination(
        AeAddress.parse(orthanc.store_ae), calling_ae="SPINE", timeout_s=5.0
    )


async def delivered(delivery: ResultsDelivery, study: str, objects: list[bytes],
                    uids: list[str], timeout_s: float = 30.0) -> bool:
    await delivery.start()
    await delivery.submit(objects, study_uid=study, sop_uids=uids)
    return await delivery.drain(timeout_s)


@pytest.mark.parametrize("protocol", [stow, c_store], ids=["stow-rs", "c-store"])
async def test_sr_and_gsps_land_in_the_source_study(orthanc: Orthanc, protocol) -> None:
    study, objects, uids = results()
    delivery = ResultsDelivery([protocol(orthanc)], retry=FAST)
    try:
        assert await delivered(delivery, study, objects, uids)
    finally:
        await delivery.stop(5.0)
    assert orthanc.study_instances(study) == {uids[0]: SR_CLASS, uids[1]: GSPS_CLASS}
    counts = delivery.counts()
    assert (counts.delivered, counts.retried, counts.failed, counts.queued) == (2, 0, 0, 0)
    text = generate_latest(delivery.registry).decode()
    assert f'spine_results_delivered_total{{destination="{protocol(orthanc).name}"}} 2.0' in text
    assert "spine_results_queue_capacity 1000.0" in text  # RESULTS_QUEUE_SIZE's default


async def test_from_settings_sends_to_both_destinations(orthanc: Orthanc) -> None:
    settings = ResultsDeliverySettings(
        results_dicomweb_url=orthanc.dicomweb, results_store_ae=orthanc.store_ae,
        results_calling_ae="SPINETEST",
    )
    study, objects, uids = results()
    delivery = ResultsDelivery.from_settings(settings)
    assert delivery.describe() == f"STOW-RS {orthanc.dicomweb}/studies, C-STORE {orthanc.store_ae}"
    try:
        assert await delivered(delivery, study, objects, uids)
    finally:
        await delivery.stop(5.0)
    assert delivery.counts().delivered == 4  # two objects, two destinations
    assert set(orthanc.study_instances(study)) == set(uids)


async def test_a_peer_down_then_back_gets_its_results(orthanc_factory, caplog) -> None:
    orthanc: Orthanc = orthanc_factory()
    orthanc.stop()
    study, objects, uids = results()
    delivery = ResultsDelivery([stow(orthanc), c_store(orthanc)], retry=FAST)
    caplog.set_level(logging.WARNING, "shared.dicomnet")
    try:
        await delivery.start()
        await delivery.submit(objects, study_uid=study, sop_uids=uids)
        await asyncio.sleep(1.0)  # a few attempts fail while it is down
        assert delivery.counts().queued == 4
        await asyncio.to_thread(orthanc.start)
        assert await delivery.drain(20.0)
    finally:
        await delivery.stop(5.0)
    counts = delivery.counts()
    assert counts.delivered == 4 and counts.failed == 0 and counts.retried >= 4
    assert set(orthanc.study_instances(study)) == set(uids)
    assert uids[0] in caplog.text and PATIENT not in caplog.text


async def test_a_peer_down_past_the_budget_is_reported_never_silent(orthanc_factory, caplog) -> None:
    orthanc: Orthanc = orthanc_factory()
    orthanc.stop()
    study, objects, uids = results()
    delivery = ResultsDelivery(
        [stow(orthanc)], retry=RetryPolicy(initial_s=0.1, max_s=0.2, budget_s=1.0)
    )
    caplog.set_level(logging.WARNING, "shared.dicomnet")
    try:
        assert await delivered(delivery, study, objects, uids, timeout_s=10.0)
    finally:
        await delivery.stop(1.0)
    counts = delivery.counts()
    assert (counts.delivered, counts.failed, counts.queued) == (0, 2, 0) and counts.retried >= 2
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert failures and "budget" in failures[-1].getMessage()
    assert all(uid in failures[-1].getMessage() for uid in uids)
    assert PATIENT not in caplog.text and "DELIVERY-0001" not in caplog.text
    text = generate_latest(delivery.registry).decode()
    assert 'spine_results_failed_total{destination="dicomweb",reason="budget"} 2.0' in text


async def test_a_full_queue_refuses_instead_of_dropping() -> None:
    nobody = f"http://127.0.0.1:{free_port()}/dicom-web"  # nothing listens: never drains
    delivery = ResultsDelivery(
        [DicomWebDestination(nobody, timeout_s=1.0)], queue_size=3, retry=FAST
    )
    study, objects, uids = results()
    await delivery.start()
    try:
        await delivery.submit(objects, study_uid=study, sop_uids=uids)
        with pytest.raises(DeliveryQueueFull) as refused:
            await delivery.submit(objects, study_uid=study, sop_uids=uids)
        assert refused.value.status_code == 503 and "RESULTS_QUEUE_SIZE" in refused.value.message
        assert delivery.counts().refused == 2 and delivery.counts().queued == 2
    finally:
        await delivery.stop(0.3)
    counts = delivery.counts()
    assert counts.failed == 2 and counts.queued == 0  # left at shutdown: counted, logged
    with pytest.raises(DeliveryQueueFull):  # stopped: refuses too
        await delivery.submit(objects, study_uid=study, sop_uids=uids)


def broken_peer(status: int, failed: dict[str, int], stored: list[str]) -> httpx.MockTransport:
    """A STOW-RS server that answers ``status`` with these Failed/Referenced SOP items."""

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.headers["content-type"].startswith('multipart/related; type="application/dicom"')
        body = {
            "00081198": {"vr": "SQ", "Value": [
                {"00081155": {"vr": "UI", "Value": [uid]}, "00081197": {"vr": "US", "Value": [c]}}
                for uid, c in failed.items()
            ]},
            "00081199": {"vr": "SQ", "Value": [
                {"00081155": {"vr": "UI", "Value": [uid]}} for uid in stored
            ]},
        }
        return httpx.Response(status, content=json.dumps(body),
                              headers={"content-type": "application/dicom+json"})

    return httpx.MockTransport(answer)


async def test_a_rejected_object_fails_alone_and_out_of_resources_is_retried() -> None:
    study, objects, uids = results()
    calls = 0

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:  # SR rejected for good, GSPS: out of resources
            return broken_peer(202, {uids[0]: 0xC000, uids[1]: 0xA700}, []).handle_request(request)
        return broken_peer(200, {}, [uids[1]]).handle_request(request)

    destination = DicomWebDestination(
        "http://127.0.0.1:9/dicom-web", timeout_s=1.0, transport=httpx.MockTransport(answer)
    )
    delivery = ResultsDelivery([destination], retry=FAST)
    try:
        assert await delivered(delivery, study, objects, uids)
    finally:
        await delivery.stop(1.0)
    counts = delivery.counts()
    assert (counts.delivered, counts.failed, counts.retried, calls) == (1, 1, 1, 2)


async def test_on_settled_hears_each_object_once_with_the_worst_outcome(orthanc: Orthanc) -> None:
    study, objects, uids = results()
    rejecting = DicomWebDestination(  # a broken peer: refuses the SR for good, stores the GSPS
        "http://127.0.0.1:9/dicom-web", timeout_s=1.0,
        transport=broken_peer(202, {uids[0]: 0xC000}, [uids[1]]),
    )
    heard: list[tuple[str, str, int]] = []
    delivery = ResultsDelivery([stow(orthanc), rejecting], retry=FAST)

    def on_settled(uid: str, outcome: str) -> None:
        heard.append((uid, outcome, delivery.counts().delivered + delivery.counts().failed))

    await delivery.start()
    try:
        await delivery.submit(objects, study_uid=study, sop_uids=uids, on_settled=on_settled)
        assert await delivery.drain(30.0)
    finally:
        await delivery.stop(1.0)
    assert sorted((uid, outcome) for uid, outcome, _ in heard) == sorted(
        [(uids[0], "rejected"), (uids[1], "delivered")]
    )
    # Only once both destinations were done with the object (2 settled per UID).
    assert all(settled >= 2 for _, _, settled in heard)
    assert set(orthanc.study_instances(study)) == set(uids)  # Orthanc has both


async def test_on_settled_says_shutdown_when_stop_left_it_and_budget_when_spent() -> None:
    nobody = f"http://127.0.0.1:{free_port()}/dicom-web"  # nothing listens: never delivered
    study, objects, uids = results()
    rejecting = DicomWebDestination(
        "http://127.0.0.1:9/dicom-web", timeout_s=1.0, transport=broken_peer(409, {}, []),
    )
    heard: dict[str, list[str]] = {}

    def on_settled(uid: str, outcome: str) -> None:
        heard.setdefault(uid, []).append(outcome)

    delivery = ResultsDelivery([DicomWebDestination(nobody, timeout_s=1.0), rejecting], retry=FAST)
    await delivery.start()
    await delivery.submit(objects, study_uid=study, sop_uids=uids, on_settled=on_settled)
    await asyncio.sleep(0.3)  # rejected at one destination, still retrying at the other
    assert heard == {}
    await delivery.stop(0.1)
    assert heard == {uids[0]: ["shutdown"], uids[1]: ["shutdown"]}  # shutdown beats rejected

    heard.clear()
    spent = ResultsDelivery(
        [DicomWebDestination(nobody, timeout_s=1.0)],
        retry=RetryPolicy(initial_s=0.1, max_s=0.2, budget_s=0.5),
    )
    await spent.start()
    try:
        await spent.submit(objects, study_uid=study, sop_uids=uids,
                           on_settled=lambda uid, outcome: on_settled(uid, outcome) or 1 / 0)
        assert await spent.drain(10.0)  # a raising callback does not stop the delivery
    finally:
        await spent.stop(0.1)
    assert heard == {uids[0]: ["budget"], uids[1]: ["budget"]}


@pytest.mark.parametrize(
    ("status", "stored", "retry", "failed"),
    [(200, 2, 0, 0), (409, 0, 0, 2), (503, 0, 2, 0), (401, 0, 0, 2), (500, 0, 2, 0)],
)
def test_store_response_without_sequences_follows_the_status(status, stored, retry, failed) -> None:
    outcome = read_store_response(status, b"", ["1.2.3", "1.2.4"])
    assert (len(outcome.stored), len(outcome.retry), len(outcome.failed)) == (stored, retry, failed)


async def test_no_destination_is_a_no_op() -> None:
    delivery = ResultsDelivery.from_settings(ResultsDeliverySettings())
    assert not delivery.enabled and delivery.describe() == "off"
    await delivery.start()
    await delivery.submit([b"x"], study_uid="1.2", sop_uids=["1.2.3"])
    await delivery.stop(1.0)
    assert delivery.counts() == type(delivery.counts())()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"results_dicomweb_url": "http://pacs.example.org/dicom-web",
          "results_dicomweb_bearer_token": "t" * 20}, "https://"),
        ({"results_dicomweb_url": "http://10.0.0.5/dicom-web",
          "results_dicomweb_user": "u", "results_dicomweb_password": "p"}, "https://"),
        ({"results_dicomweb_url": "ftp://pacs/dicom-web"}, "http(s) URL"),
        ({"results_store_ae": "PACS@host"}, "AE@host:port"),
        ({"results_store_ae": "A-TITLE-LONGER-THAN-16@host:104"}, "1-16"),
        ({"results_store_ae": "PACS@host:70000"}, "out of range"),
    ],
)
def test_unusable_destinations_are_refused_naming_the_variable(settings, message) -> None:
    with pytest.raises(DestinationConfigError, match="RESULTS_") as refused:
        ResultsDelivery.from_settings(ResultsDeliverySettings(**settings))
    assert message in str(refused.value)
    assert results_config_problem(ResultsDeliverySettings(**settings)) == str(refused.value)


def test_the_gateway_refuses_to_start_with_an_unusable_destination(tmp_path) -> None:
    env = {**os.environ, "RESULTS_STORE_AE": "PACS@host", "SPINE_CACHE_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "spine.cli", "gateway", "--port", str(free_port())],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0
    assert "refusing to start: RESULTS_STORE_AE is AE@host:port" in done.stderr


def test_credentials_are_allowed_over_https_and_on_loopback() -> None:
    for url in ("https://pacs.example.org/dicom-web", "http://127.0.0.1:8042/dicom-web"):
        delivery = ResultsDelivery.from_settings(
            ResultsDeliverySettings(results_dicomweb_url=url, results_dicomweb_bearer_token="t" * 20)
        )
        assert delivery.enabled


def test_a_missing_orthanc_fails_under_ci_naming_the_packages(monkeypatch, tmp_path) -> None:
    from tests.peers import orthanc as peers

    monkeypatch.setenv("CI", "1")
    monkeypatch.setattr(peers, "ORTHANC", tmp_path / "Orthanc")
    with pytest.raises(pytest.fail.Exception, match="apt-get install orthanc orthanc-dicomweb"):
        peers.require_orthanc()
