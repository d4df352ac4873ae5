"""STOW-RS in and results delivery through the real stack, with real peers on both ends.

dicomweb-client (a client we did not write) stores instances into our
``/dicomweb/studies``; the SR and presentation state of each analysed image are
delivered by STOW-RS to one real Orthanc (its DICOMweb plugin) and by C-STORE to
another, both checked through Orthanc's REST API. Faults: both Orthancs stopped while
results are pending (back within the retry budget: delivered; away longer: reported
in the log and ``/metrics``), a full results queue (503), a malformed instance among
good ones (fails alone). One stack and two Orthancs for the module.
"""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import shutil
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pydicom
import pytest
import yaml
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from tests.factories import make_dicom, radiograph_pixels
from tests.integration.scrape import metric
from tests.integration.stack import Stack, start_stack
from tests.peers.orthanc import Orthanc, start_orthanc

pytestmark = pytest.mark.timeout(600)

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
GSPS_CLASS = "1.2.840.10008.5.1.4.1.1.11.1"
KEY = secrets.token_urlsafe(24)
BUDGET_S = 8.0
QUEUE = 24  # objects: 4 instances (x SR + GSPS x 2 destinations = 16) fit, 7 do not


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Orthanc, Orthanc]]:
    """(the STOW-RS destination, the C-STORE destination): two real Orthancs."""
    web = start_orthanc(tmp_path_factory.mktemp("orthanc-web"))
    dimse = start_orthanc(tmp_path_factory.mktemp("orthanc-dimse"))
    yield web, dimse
    web.stop()
    dimse.stop()


def demo_bundle(tiny_bundle: Path, bundle: Path) -> Path:
    """A demo-kind copy of the tiny bundle at ``bundle``, threshold 0: every image Abnormal."""
    shutil.copytree(tiny_bundle, bundle)
    manifest = yaml.safe_load((bundle / "manifest.yaml").read_text())
    manifest["classifier"]["threshold"], manifest["kind"] = 0.0, "demo"
    (bundle / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return bundle


@pytest.fixture(scope="module")
def stack(
    tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory, peers: tuple[Orthanc, Orthanc]
) -> Iterator[Stack]:
    """The real services on a demo-kind copy of the tiny bundle (threshold 0: Abnormal)."""
    tmp = tmp_path_factory.mktemp("stowrs")
    bundle = demo_bundle(tiny_bundle, tmp / "bundle")
    web, dimse = peers
    running = start_stack(
        bundle, tmp / "stack",
        API_KEYS_SHA256=f"tests:{hashlib.sha256(KEY.encode()).hexdigest()}",
        RESULTS_DICOMWEB_URL=web.dicomweb, RESULTS_STORE_AE=dimse.store_ae,
        RESULTS_RETRY_INITIAL_S="0.3", RESULTS_RETRY_MAX_S="1",
        RESULTS_RETRY_BUDGET_S=str(BUDGET_S), RESULTS_QUEUE_SIZE=str(QUEUE),
        RESULTS_DRAIN_TIMEOUT_S="1", STOWRS_MAX_INSTANCES="6",
        MAX_CONTENT_LENGTH=str(8 * 1024 * 1024),
    )
    yield running
    running.stop()


def spine(seed: int) -> bytes:
    """A lumbar spine DX phantom of its own study."""
    return make_dicom(
        radiograph_pixels(320, 240, bits=12, seed=seed), patient_id=f"STOW-{seed:04d}",
        extra={"StudyInstanceUID": generate_uid()},
    )


def chest() -> bytes:
    return Path(get_testdata_file("RG1_J2KR.dcm")).read_bytes()  # CR, BodyPartExamined CHEST


def uids(data: bytes) -> tuple[str, str]:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)


def related(*instances: bytes, part_type: str = "application/dicom") -> tuple[bytes, str]:
    boundary = secrets.token_hex(8)
    body = b"".join(
        f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode() + data + b"\r\n"
        for data in instances
    ) + f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def stow(gateway: str, *instances: bytes, path: str = "/dicomweb/studies",
         key: str | None = KEY) -> httpx.Response:
    body, content_type = related(*instances)
    headers = {"Content-Type": content_type, "Accept": "application/dicom+json"}
    if key:
        headers["X-API-Key"] = key
    return httpx.post(gateway + path, content=body, headers=headers, timeout=120)


def items(answer: dict, tag: str) -> list[dict]:
    return answer.get(tag, {}).get("Value", [])


def value(item: dict, tag: str) -> object:
    return item.get(tag, {}).get("Value", [None])[0]


def extension(item: dict) -> dict:
    assert value(item, "00090010") == "SPINE ANALYSIS 1"
    return json.loads(value(item, "00091001"))


def drained(gateway: str, timeout_s: float = 30.0) -> None:
    """Wait until the gateway has no result pending (delivered or given up)."""
    deadline = time.monotonic() + timeout_s
    while metric(gateway, "spine_results_queued") and time.monotonic() < deadline:
        time.sleep(0.2)


def sr_and_gsps(orthanc: Orthanc, study: str, timeout_s: float = 30.0) -> dict[str, str]:
    """The results in ``study`` once both have arrived: SOP Class UID -> SOP Instance UID."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = {cls: uid for uid, cls in orthanc.study_instances(study).items()}
        if {SR_CLASS, GSPS_CLASS} <= set(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def both(action: str, peers: tuple[Orthanc, Orthanc]) -> None:
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda o: getattr(o, action)(), peers))


def test_dicomweb_client_stores_a_spine_and_the_chest_is_refused(
    stack: Stack, peers: tuple[Orthanc, Orthanc]
) -> None:
    spine_data, chest_data = spine(1), chest()
    study, sop = uids(spine_data)
    client = DICOMwebClient(url=f"{stack.gateway}/dicomweb", headers={"X-API-Key": KEY})
    started = time.perf_counter()
    answer = client.store_instances(
        [pydicom.dcmread(io.BytesIO(spine_data)), pydicom.dcmread(io.BytesIO(chest_data))]
    )
    assert [item.ReferencedSOPInstanceUID for item in answer.ReferencedSOPSequence] == [sop]
    assert answer.ReferencedSOPSequence[0].ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.1.1"
    failed = answer.FailedSOPSequence
    assert [item.ReferencedSOPInstanceUID for item in failed] == [uids(chest_data)[1]]
    assert failed[0].FailureReason == 0x0122
    body = stow(stack.gateway, spine_data, chest_data).json()  # the same, as raw DICOM JSON
    analysed, refused = extension(items(body, "00081199")[0]), extension(items(body, "00081198")[0])
    assert analysed["part"] == 1 and analysed["diagnosis"] == "Abnormal"
    assert analysed["model_bundle"]["kind"] == "demo"
    assert refused["part"] == 2 and refused["status"] == 422
    assert "BodyPartExamined is CHEST" in refused["message"]
    web, dimse = peers
    for orthanc in (web, dimse):  # by STOW-RS and by C-STORE, into the source's study
        found = sr_and_gsps(orthanc, study)
        assert {SR_CLASS, GSPS_CLASS} <= set(found), orthanc.log_text()[-2000:]
        sr = orthanc.tags(orthanc.find_instance(found[SR_CLASS]))
        assert sr["StudyInstanceUID"] == study and "DEMO" in json.dumps(sr)
    print(f"\n[stow-rs] submit -> SR + GSPS in both Orthancs: "
          f"{1000 * (time.perf_counter() - started):.0f} ms (2 requests, 2 images)")
    assert web.study_instances(uids(chest_data)[0]) == {}  # nothing for the refused chest


def test_a_malformed_instance_fails_alone(stack: Stack) -> None:
    good = spine(2)
    truncated = spine(3)[:2000]
    response = stow(stack.gateway, b"not a DICOM file at all", good, truncated)
    assert response.status_code == 202
    assert response.headers["content-type"] == "application/dicom+json"
    body = response.json()
    assert [value(i, "00081155") for i in items(body, "00081199")] == [uids(good)[1]]
    failed = items(body, "00081198")
    assert [value(i, "00081197") for i in failed] == [0xC000, 0xC000]
    assert [extension(i)["part"] for i in failed] == [1, 3]
    assert value(failed[1], "00081155") == uids(truncated)[1]  # its header was readable


def test_an_instance_of_another_study_than_the_path_fails(stack: Stack) -> None:
    data = spine(4)
    study, sop = uids(data)
    right = stow(stack.gateway, data, path=f"/dicomweb/studies/{study}")
    assert right.status_code == 200
    wrong = stow(stack.gateway, data, path=f"/dicomweb/studies/{generate_uid()}")
    assert wrong.status_code == 409
    (item,) = items(wrong.json(), "00081198")
    assert (value(item, "00081155"), value(item, "00081197")) == (sop, 0xA900)
    assert extension(item)["status"] == 409


@pytest.mark.parametrize(
    ("case", "status"),
    [("no key", 401), ("form-data", 415), ("pdf part", 415), ("too many", 413),
     ("empty", 400), ("too large", 413)],
)
def test_requests_we_do_not_read_are_refused_clearly(stack: Stack, case: str, status: int) -> None:
    data = spine(5)
    headers = {"X-API-Key": KEY}
    if case == "no key":
        response = stow(stack.gateway, data, key=None)
    elif case == "form-data":
        response = httpx.post(f"{stack.gateway}/dicomweb/studies", headers=headers,
                              files={"file": ("x.dcm", data)})
    elif case == "pdf part":
        body, content_type = related(data, part_type="application/pdf")
        response = httpx.post(f"{stack.gateway}/dicomweb/studies", content=body,
                              headers={**headers, "Content-Type": content_type})
    elif case == "too many":
        response = stow(stack.gateway, *[b"x"] * 7)
    elif case == "empty":
        body, content_type = related()
        response = httpx.post(f"{stack.gateway}/dicomweb/studies", content=body,
                              headers={**headers, "Content-Type": content_type})
    else:
        response = stow(stack.gateway, b"\0" * (9 * 1024 * 1024))
    assert response.status_code == status
    assert response.json()["status"] == "error" and response.json()["message"]


def test_the_route_is_in_the_openapi_document_with_the_api_key(stack: Stack) -> None:
    paths = httpx.get(f"{stack.gateway}/openapi.json").json()["paths"]
    for path in ("/dicomweb/studies", "/dicomweb/studies/{study}"):
        operation = paths[path]["post"]
        assert operation["security"] and "application/dicom+json" in str(operation["responses"])
        assert "SPINE ANALYSIS 1" in json.dumps(operation["responses"]["200"])


def test_timings_of_one_and_four_instances(stack: Stack, peers: tuple[Orthanc, Orthanc]) -> None:
    """Median of 5 STOW-RS requests of 1 and of 4 images; submit -> SR in each Orthanc."""
    requests: dict[int, list[float]] = {1: [], 4: []}
    visible: dict[str, list[float]] = {"STOW-RS": [], "C-STORE": []}
    for count in (1, 4):
        for repeat in range(5):
            instances = [spine(100 + 10 * count + repeat * count + i) for i in range(count)]
            drained(stack.gateway)
            started = time.perf_counter()
            assert stow(stack.gateway, *instances).status_code == 200
            requests[count].append(time.perf_counter() - started)
            if count == 1:
                study = uids(instances[0])[0]
                for name, orthanc in zip(visible, peers, strict=True):
                    assert SR_CLASS in sr_and_gsps(orthanc, study)
                    visible[name].append(time.perf_counter() - started)

    def summary(times: list[float]) -> str:
        return (f"median {1000 * statistics.median(times):.0f} ms "
                f"(min {1000 * min(times):.0f}, max {1000 * max(times):.0f})")

    print(
        f"\n[stow-rs] request of 1 instance: {summary(requests[1])}; of 4 instances: "
        f"{summary(requests[4])}; submit -> SR + GSPS in Orthanc by STOW-RS: "
        f"{summary(visible['STOW-RS'])}, by C-STORE (polled after): {summary(visible['C-STORE'])}"
    )


def test_results_wait_for_an_orthanc_that_comes_back(
    stack: Stack, peers: tuple[Orthanc, Orthanc]
) -> None:
    drained(stack.gateway)  # what earlier tests sent is delivered
    both("stop", peers)
    try:
        data = spine(6)
        study, _ = uids(data)
        delivered = metric(stack.gateway, "spine_results_delivered_total", destination="dicomweb")
        assert stow(stack.gateway, data).status_code == 200
        time.sleep(1.0)
        assert metric(stack.gateway, "spine_results_queued") == 4
    finally:
        both("start", peers)
    for orthanc in peers:
        assert {SR_CLASS, GSPS_CLASS} <= set(sr_and_gsps(orthanc, study, BUDGET_S + 5))
    assert metric(stack.gateway, "spine_results_delivered_total",
                  destination="dicomweb") == delivered + 2
    assert metric(stack.gateway, "spine_results_retried_total", destination="dimse") >= 2
    assert metric(stack.gateway, "spine_results_failed_total", destination="dicomweb",
                  reason="budget") == 0


def test_results_for_an_orthanc_gone_past_the_budget_are_reported(
    stack: Stack, peers: tuple[Orthanc, Orthanc]
) -> None:
    drained(stack.gateway)  # what earlier tests sent is delivered (or given up)
    before = {destination: metric(stack.gateway, "spine_results_failed_total",
                                  destination=destination, reason="budget")
              for destination in ("dicomweb", "dimse")}
    both("stop", peers)
    try:
        instances = [spine(200 + i) for i in range(4)]
        assert stow(stack.gateway, *instances).status_code == 200  # 16 objects queued
        full = stow(stack.gateway, spine(210), spine(211), spine(212))  # 12 more: past 24
        assert full.status_code == 503 and int(full.headers["retry-after"]) >= 1
        assert "RESULTS_QUEUE_SIZE" in full.json()["message"]
        drained(stack.gateway, BUDGET_S + 10)
        for destination in ("dicomweb", "dimse"):  # this test's 8 objects, nothing else
            assert metric(stack.gateway, "spine_results_failed_total",
                          destination=destination, reason="budget") == before[destination] + 8
        log = stack.services["gateway"].log_text()
        assert "failed (budget) for" in log and "STOW-0200" not in log
    finally:
        both("start", peers)


def test_results_left_at_shutdown_are_logged(stack: Stack, peers: tuple[Orthanc, Orthanc]) -> None:
    """Last in the module: it stops the gateway with results pending for a stopped Orthanc."""
    drained(stack.gateway)
    peers[0].stop()
    try:
        assert stow(stack.gateway, spine(300)).status_code == 200
        time.sleep(1.0)  # a few attempts fail
        stack.services["gateway"].stop()  # RESULTS_DRAIN_TIMEOUT_S=1, then given up
        (line,) = [x for x in stack.services["gateway"].log_text().splitlines()
                   if "failed (shutdown)" in x]
        assert "dicomweb failed (shutdown) for 2 object(s)" in line
        assert line.count("(not delivered at shutdown)") == 2 and "STOW-0300" not in line
    finally:
        peers[0].start()
