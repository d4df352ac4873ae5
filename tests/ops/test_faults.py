"""Fault injection against the real stack: a model service dies, is slow, or is missing."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from shared import contract, oip
from tests.integration.stack import Stack
from tests.ops.conftest import INTERNAL_TOKEN, GatewayFactory, restart_detector
from tests.ops.load import record, run_load, summarize

pytestmark = pytest.mark.timeout(240)

REQUEST_TIMEOUT_S = 30.0  # the ops stack's REQUEST_TIMEOUT_S
DETECTION_UNAVAILABLE = "Detection unavailable"


def upload(url: str, data: bytes, timeout: float = 60.0, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{url}/upload", files={"file": ("x.dcm", data, "application/dicom")},
        params={"annotate": "false"}, headers=headers, timeout=timeout,
    )


def test_detector_killed_under_load_then_restarted(
    ops_stack: Stack, tiny_bundle: Path, ops_dir: Path, dicom_bytes: bytes
) -> None:
    """40 uploads, 8 at a time; the detector is SIGKILLed after the 8th answer."""
    assert upload(ops_stack.gateway, dicom_bytes).json()["detections"] is not None  # warm
    detector = ops_stack.services["detector"]
    killed_at: list[float] = []

    def kill_detector() -> None:
        detector.process.kill()
        detector.process.wait(10)
        killed_at.append(time.perf_counter())

    try:
        outcomes = run_load(
            f"{ops_stack.gateway}/upload", dicom_bytes, requests=40, concurrency=8,
            client_timeout_s=REQUEST_TIMEOUT_S + 15, fault_after=8, fault=kill_detector,
        )
        assert killed_at, "the fault was never injected"
        figures = summarize(outcomes)
        # every request ended, within its deadline, with 200 or 503: never 500, never a hang
        assert all(o.status in (200, 503) for o in outcomes), [
            (o.status, o.error or o.body.get("message")) for o in outcomes if o.status not in (200, 503)
        ]
        assert max(o.seconds for o in outcomes) < REQUEST_TIMEOUT_S
        for o in outcomes:
            if o.status == 200:  # a diagnosis, always; detections may be missing, with a warning
                assert o.body["diagnosis"] in ("Normal", "Abnormal")
                if o.body["detections"] is None:
                    assert any(DETECTION_UNAVAILABLE in w for w in o.body["warnings"]), o.body
            else:
                assert o.body["_retry_after"], o.body
        after = [o for o in outcomes if o.started_after_fault]
        assert after and all(o.status == 200 and o.body["detections"] is None for o in after)
        figures["started_after_kill"] = len(after)
        record("detector_kill", figures)
    finally:
        restart_detector(ops_stack, tiny_bundle, ops_dir)

    # detections come back once the restarted replica is tried again (ejection is 5 s)
    deadline = time.monotonic() + 30
    body: dict = {}
    while time.monotonic() < deadline:
        body = upload(ops_stack.gateway, dicom_bytes).json()
        if body.get("detections") is not None:
            break
        time.sleep(1)
    assert body.get("detections") is not None, body
    assert not any(DETECTION_UNAVAILABLE in w for w in body["warnings"])


def test_infer_is_retried_on_another_replica(
    start_gateway: GatewayFactory, ops_stack: Stack, dicom_bytes: bytes
) -> None:
    """Detector replicas: one dead from the start (never asked to infer: its facts could
    not be read), one that dies after its facts were read (the call to it is retried on
    the third, real one)."""
    from tests.integration.stack import free_port
    from tests.ops.standin import StandIn

    config = httpx.get(f"{ops_stack.detector}/v2/models/{contract.DETECTOR_MODEL}/config",
                       headers={"Authorization": f"Bearer {INTERNAL_TOKEN}"}, timeout=10).json()
    facts = contract.facts_from_config(config, contract.DetectorFacts,
                                       model=contract.DETECTOR_MODEL,
                                       outputs=contract.DETECTOR_OUTPUTS)
    dead = f"http://127.0.0.1:{free_port()}"
    dying = StandIn(contract.DETECTOR_MODEL, facts).start()
    try:
        gateway = start_gateway(
            "replicas", DETECTOR_URLS=f"{dead},{dying.url},{ops_stack.detector}"
        )
        assert dying.config_reads == 1  # read once at start-up, like the real one
    finally:
        dying.stop()
    response = upload(gateway.url, dicom_bytes)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["detections"] is not None and body["warnings"] == []
    assert dying.calls == 0
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert 'spine_upstream_requests_total{outcome="unreachable",service="detector"} 1.0' in metrics
    assert 'spine_upstream_requests_total{outcome="ok",service="detector"} 1.0' in metrics
    log = gateway.log_text()
    assert dead in log and dying.url in log and "ejected" in log


def test_classifier_down_is_a_fast_503_with_retry_after(
    start_gateway: GatewayFactory, dicom_bytes: bytes
) -> None:
    from tests.integration.stack import free_port

    gateway = start_gateway("no-classifier", CLASSIFIER_URLS=f"http://127.0.0.1:{free_port()}")
    started = time.perf_counter()
    response = upload(gateway.url, dicom_bytes)
    assert time.perf_counter() - started < 5
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"].isdigit()
    body = response.json()
    assert body["status"] == "error" and "classifier" in body["message"]
    assert "no diagnosis" in body["message"] and "diagnosis" not in body.get("result", {})
    assert httpx.get(f"{gateway.url}/readyz").status_code == 503
    assert httpx.get(f"{gateway.url}/livez").status_code == 200


def test_slow_detector_gives_classification_with_a_warning(
    start_gateway: GatewayFactory, dicom_bytes: bytes
) -> None:
    gateway = start_gateway("slow-detector", DETECTOR_TIMEOUT_S="0.02")
    response = upload(gateway.url, dicom_bytes)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["diagnosis"] in ("Normal", "Abnormal") and body["detections"] is None
    assert any(DETECTION_UNAVAILABLE in w and "detector" in w for w in body["warnings"])


def test_request_deadline_is_never_exceeded(
    start_gateway: GatewayFactory, dicom_bytes: bytes
) -> None:
    gateway = start_gateway("short-deadline", REQUEST_TIMEOUT_S="0.5")
    started = time.perf_counter()
    response = upload(gateway.url, dicom_bytes)
    assert time.perf_counter() - started < 3
    assert response.status_code == 504, response.text
    assert "no diagnosis" in response.json()["message"]


def _infer_body(
    size: int, timeout_us: int | None = None, output: str = "abnormal_probability"
) -> tuple[bytes, dict[str, str]]:
    image = np.random.default_rng(0).integers(0, 255, (1, 1, size, size), dtype=np.uint8)
    body, headers = oip.encode_request(
        {"IMAGE": image}, outputs=[output], request_id="ops",
        parameters={"timeout": timeout_us} if timeout_us else None,
    )
    headers["Authorization"] = f"Bearer {INTERNAL_TOKEN}"
    return body, headers


def _failures(url: str, reason: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("nv_inference_request_failure_total{") and f'reason="{reason}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_model_server_drops_work_past_the_callers_deadline(ops_stack: Stack) -> None:
    """Triton's ``timeout`` parameter (us): an image whose caller gave up is not computed."""
    url = f"{ops_stack.classifier}/v2/models/spine-classifier/infer"
    before = _failures(ops_stack.classifier, "deadline")
    body, headers = _infer_body(256, timeout_us=1)
    response = httpx.post(url, content=body, headers=headers, timeout=30)
    assert response.status_code == 504, response.text
    assert _failures(ops_stack.classifier, "deadline") == before + 1


def test_model_server_drops_work_of_a_client_that_disconnected(ops_stack: Stack) -> None:
    """Keep the detector's batcher busy, then abandon one request: dropped, not computed."""
    import concurrent.futures

    url = f"{ops_stack.detector}/v2/models/spine-detector/infer"
    before = _failures(ops_stack.detector, "cancelled")
    busy_body, headers = _infer_body(1024, output="num_detections")

    def busy() -> int:
        return httpx.post(url, content=busy_body, headers=headers, timeout=60).status_code

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        running = [pool.submit(busy) for _ in range(5)]
        time.sleep(0.2)
        with pytest.raises(httpx.TimeoutException):
            httpx.post(url, content=busy_body, headers=headers, timeout=0.3)
        assert all(f.result() == 200 for f in running)
    deadline = time.monotonic() + 5
    while _failures(ops_stack.detector, "cancelled") <= before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _failures(ops_stack.detector, "cancelled") == before + 1
