"""Back-pressure: full queues answer 503 with Retry-After at once, never a slow pile-up."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from shared import oip
from tests.integration.stack import Service, base_env, start_service, wait_ready
from tests.ops.conftest import INTERNAL_TOKEN, GatewayFactory
from tests.ops.load import record, run_load, summarize

pytestmark = pytest.mark.timeout(180)

FAST_S = 1.0  # a refusal must come this quickly, whatever the load


@pytest.fixture(scope="module")
def small_queue_classifier(tiny_bundle: Path, ops_dir: Path) -> Iterator[Service]:
    """A classifier that holds one image in compute and one in its queue, no more."""
    folder = ops_dir / "small-queue"
    folder.mkdir(exist_ok=True)
    env = base_env(
        folder, MODEL_DIR=str(tiny_bundle), INTERNAL_TOKEN=INTERNAL_TOKEN,
        MAX_QUEUE_SIZE="1", MAX_BATCH_SIZE="1", MAX_DELAY_MS="0",
    )
    service = start_service("classifier", env, folder)
    try:
        wait_ready(service)
        yield service
    finally:
        service.stop()


def test_full_model_queue_answers_503_fast(small_queue_classifier: Service) -> None:
    image = np.random.default_rng(1).integers(0, 255, (1, 1, 1024, 1024), dtype=np.uint8)
    body, headers = oip.encode_request({"IMAGE": image}, outputs=["abnormal_probability"])
    headers["Authorization"] = f"Bearer {INTERNAL_TOKEN}"
    url = f"{small_queue_classifier.url}/v2/models/spine-classifier/infer"
    gate = threading.Barrier(24)
    client = httpx.Client(timeout=60, limits=httpx.Limits(max_connections=32))

    def one(_: int) -> tuple[int, float, str | None]:
        gate.wait()
        started = time.perf_counter()
        response = client.post(url, content=body, headers=headers)
        return response.status_code, time.perf_counter() - started, response.headers.get(
            "Retry-After"
        )

    with client, ThreadPoolExecutor(24) as pool:
        results = list(pool.map(one, range(24)))
    statuses = [status for status, _, _ in results]
    assert set(statuses) <= {200, 503}, statuses
    refused = [(seconds, retry) for status, seconds, retry in results if status == 503]
    assert refused, "a burst of 24 never filled a queue of 1"
    assert all(retry for _, retry in refused)
    assert max(seconds for seconds, _ in refused) < FAST_S
    record("model_queue_burst", {
        "sent": len(results), "by_status": {s: statuses.count(s) for s in set(statuses)},
        "slowest_503_s": round(max(seconds for seconds, _ in refused), 3),
    })


def test_gateway_passes_upstream_overload_on_as_503(
    small_queue_classifier: Service, start_gateway: GatewayFactory, dicom_bytes: bytes
) -> None:
    gateway = start_gateway(
        "overload", CLASSIFIER_URLS=small_queue_classifier.url, MAX_UPLOADS_PER_CLIENT="0"
    )
    outcomes = run_load(
        f"{gateway.url}/upload", dicom_bytes, requests=24, concurrency=12, client_timeout_s=60
    )
    figures = summarize(outcomes)
    record("gateway_overload", figures)
    assert set(figures["by_status"]) <= {"200", "503"}, figures
    refused = [o for o in outcomes if o.status == 503]
    assert refused, figures
    assert all(o.body["_retry_after"] and "classifier" in o.body["message"] for o in refused)
    assert max(o.seconds for o in refused) < 5  # decode + one refused call, no queueing


def _slow_body(seconds: float) -> Iterator[bytes]:
    """A multipart body that takes ``seconds`` to arrive: holds an admission slot."""
    yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.dcm\"\r\n\r\n"
    time.sleep(seconds)
    yield b"not a dicom\r\n--b--\r\n"


def _hold_slot(url: str, seconds: float, **headers: str) -> threading.Thread:
    def send() -> None:
        httpx.post(
            f"{url}/upload", content=_slow_body(seconds), timeout=30,
            headers={"Content-Type": "multipart/form-data; boundary=b", **headers},
        )

    thread = threading.Thread(target=send)
    thread.start()
    time.sleep(0.5)  # the slow upload is admitted and in flight
    return thread


@pytest.fixture()
def silent_classifier() -> Iterator[str]:
    """A "classifier" that accepts connections and never answers: analyses wait on it."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for sock in held:
        sock.close()
    server.close()


def test_gateway_wide_upload_limit_answers_503_at_once(
    start_gateway: GatewayFactory, dicom_bytes: bytes, silent_classifier: str
) -> None:
    """The slot is an analysis in progress (its body arrived): the next body gets 503."""
    gateway = start_gateway("busy", MAX_INFLIGHT_UPLOADS="1", MAX_UPLOADS_PER_CLIENT="0",
                            CLASSIFIER_URLS=silent_classifier, CLASSIFIER_TIMEOUT_S="3")
    holder = threading.Thread(target=lambda: httpx.post(
        f"{gateway.url}/upload", files={"file": ("x.dcm", dicom_bytes)}, timeout=30))
    holder.start()
    time.sleep(1.0)  # the first upload is decoded and waiting on the classifier
    started = time.perf_counter()
    response = httpx.post(f"{gateway.url}/upload", files={"file": ("x.dcm", dicom_bytes)})
    elapsed = time.perf_counter() - started
    holder.join()
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == "1" and elapsed < FAST_S
    assert "capacity" in response.json()["message"]
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert 'spine_rejected_requests_total{reason="overloaded"} 1.0' in metrics


def test_concurrent_uploads_per_client_are_limited(
    start_gateway: GatewayFactory, dicom_bytes: bytes
) -> None:
    gateway = start_gateway("per-client", MAX_UPLOADS_PER_CLIENT="1")
    holder = _hold_slot(gateway.url, 2.0)
    response = httpx.post(f"{gateway.url}/upload", files={"file": ("x.dcm", dicom_bytes)})
    holder.join()
    assert response.status_code == 429, response.text
    assert response.headers["Retry-After"] == "1"
    # the slot is free again once the slow upload is answered
    again = httpx.post(f"{gateway.url}/preview", files={"file": ("x.dcm", dicom_bytes)})
    assert again.status_code == 200, again.text
