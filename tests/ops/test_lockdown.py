"""Hostile clients (issue 12, items 3-6): exposed model services, slow clients,
multipart bombs, secrets and PHI defaults, each against the real services.

Nothing here sends traffic off loopback: the binds on 0.0.0.0 only check that the
process refuses and exits; the "other addresses" of the slow-client test are
127.0.0.2-5, all on the loopback interface.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from shared import contract, oip
from tests.integration.stack import REPO, Service, base_env, free_port, start_service, wait_ready
from tests.ops.conftest import INTERNAL_TOKEN, GatewayFactory
from tests.ops.load import record

pytestmark = pytest.mark.timeout(180)

BODY_TIMEOUT_S = 2.0
INFER_PATH = f"/v2/models/{contract.CLASSIFIER_MODEL}/infer"
OPERATOR_KEY = "operator-key-for-the-ops-tests-5d1e"
K8S_PLACEHOLDER = "replace-with-a-long-random-secret"


# ---------------------------------------------------------------- start-up refusals


def _start_public(service: str, env: dict[str, str], timeout_s: float = 30.0) -> tuple[int, str]:
    """Start ``spine <service>`` on 0.0.0.0; its exit code and output (it must exit)."""
    argv = [sys.executable, "-m", "spine.cli", service, "--host", "0.0.0.0",
            "--port", str(free_port())]
    process = subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail(f"spine {service} bound 0.0.0.0 and kept running")
    return process.returncode, output.decode(errors="replace")


def test_a_model_service_without_a_token_refuses_a_public_bind(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    env = base_env(tmp_path, MODEL_DIR=str(tiny_bundle))
    env.pop("INTERNAL_TOKEN", None)
    started = time.perf_counter()
    code, output = _start_public("classifier", env)
    elapsed = time.perf_counter() - started
    record("lockdown-public-bind", {"exit_code": code, "seconds": round(elapsed, 3)})
    assert code != 0 and "INTERNAL_TOKEN is not set" in output, output
    assert elapsed < 30
    env["INTERNAL_TOKEN"] = "short"
    code, output = _start_public("detector", env)
    assert code != 0 and "INTERNAL_TOKEN is shorter than" in output, output


@pytest.mark.parametrize("secret", [None, "change-me", K8S_PLACEHOLDER, "tiny-secret"])
def test_a_gateway_with_a_default_or_weak_pseudonym_secret_refuses_a_public_bind(
    tmp_path: Path, secret: str | None
) -> None:
    env = base_env(tmp_path)
    env.pop("PSEUDONYM_SECRET", None)
    if secret is not None:
        env["PSEUDONYM_SECRET"] = secret
    code, output = _start_public("gateway", env)
    assert code != 0 and "PSEUDONYM_SECRET is" in output, output


# ---------------------------------------------------------------- exposed model services


@pytest.fixture(scope="module")
def guarded_classifier(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A classifier with the token and a short body deadline."""
    folder = tmp_path_factory.mktemp("guarded-classifier")
    env = base_env(folder, MODEL_DIR=str(tiny_bundle), INTERNAL_TOKEN=INTERNAL_TOKEN,
                   MODEL_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S))
    service = start_service("classifier", env, folder)
    wait_ready(service)
    yield service
    service.stop()


def _raw_request(url: str, head: str, body: bytes = b"", *,
                 source: str = "127.0.0.1") -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(15)
    sock.connect((host, int(port)))
    sock.sendall(head.encode() + b"\r\n" + body)
    return sock


def _status_of(sock: socket.socket) -> tuple[int, bytes]:
    """The response's status and bytes (headers and the Content-Length body)."""
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(rest) < length and (chunk := sock.recv(65536)):
            rest += chunk
        data = head + b"\r\n\r\n" + rest
    except TimeoutError:
        pass
    finally:
        sock.close()
    assert data.startswith(b"HTTP/1.1 "), data[:200]
    return int(data[9:12]), data


def _infer_head(url: str, length: int, header_length: int) -> str:
    return (
        f"POST {INFER_PATH} HTTP/1.1\r\nHost: {url.removeprefix('http://')}\r\n"
        f"Authorization: Bearer {INTERNAL_TOKEN}\r\nContent-Type: application/octet-stream\r\n"
        f"Inference-Header-Content-Length: {header_length}\r\nContent-Length: {length}\r\n"
    )


def test_a_declared_gigabyte_body_is_refused_at_once(guarded_classifier: Service) -> None:
    started = time.perf_counter()
    sock = _raw_request(guarded_classifier.url, _infer_head(guarded_classifier.url, 1 << 30, 100),
                        b"{" + b" " * 4095)
    status, data = _status_of(sock)
    elapsed = time.perf_counter() - started
    record("lockdown-gigabyte-body", {"status": status, "seconds": round(elapsed, 3)})
    assert status == 413 and b"MODEL_MAX_BODY_BYTES" in data, data[:400]
    assert elapsed < 2


def test_a_thousand_images_in_one_request_are_refused(guarded_classifier: Service) -> None:
    images = np.zeros((1000, 1, 8, 8), np.uint8)  # 64 KB: small, but N = 1000
    body, headers = oip.encode_request({contract.IMAGE.name: images},
                                       outputs=[contract.ABNORMAL_PROBABILITY.name])
    started = time.perf_counter()
    response = httpx.post(guarded_classifier.url + INFER_PATH, content=body, timeout=30,
                          headers={**headers, "Authorization": f"Bearer {INTERNAL_TOKEN}"})
    elapsed = time.perf_counter() - started
    record("lockdown-n1000", {"status": response.status_code, "seconds": round(elapsed, 3)})
    assert response.status_code == 413, response.text
    assert "MODEL_MAX_IMAGES_PER_REQUEST" in response.json()["error"]
    assert elapsed < 2
    metrics = httpx.get(guarded_classifier.url + "/metrics").text
    assert 'reason="too_large"' in metrics


def test_a_trickled_body_is_cut_off_at_the_read_deadline(guarded_classifier: Service) -> None:
    url = guarded_classifier.url
    sock = _raw_request(url, _infer_head(url, 1000, 100), b"{")
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(0.5):
            try:
                sock.send(b" ")
            except OSError:
                return

    threading.Thread(target=trickle, daemon=True).start()
    started = time.perf_counter()
    try:
        status, data = _status_of(sock)
    finally:
        stop.set()
    elapsed = time.perf_counter() - started
    record("lockdown-trickled-infer", {"status": status, "seconds": round(elapsed, 3)})
    assert status == 408, data[:400]
    assert elapsed < BODY_TIMEOUT_S + 3


# ---------------------------------------------------------------- slow clients, multipart


def _upload_head(url: str, length: int, boundary: str = "b0undary") -> str:
    return (
        f"POST /upload HTTP/1.1\r\nHost: {url.removeprefix('http://')}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {length}\r\n"
    )


def test_slow_clients_on_every_slot_do_not_starve_a_normal_upload(
    start_gateway: GatewayFactory, dicom_bytes: bytes
) -> None:
    """32 connections from 4 addresses trickle bodies at 1 byte/s; another caller gets in."""
    gateway = start_gateway("trickle", MAX_INFLIGHT_UPLOADS="32", MAX_UPLOADS_PER_CLIENT="8")
    sockets = [
        _raw_request(gateway.url, _upload_head(gateway.url, 100_000), b"--b0undary\r\n",
                     source=f"127.0.0.{2 + index % 4}")
        for index in range(32)
    ]
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(1.0):
            for sock in sockets:
                with contextlib.suppress(OSError):
                    sock.send(b"x")

    threading.Thread(target=trickle, daemon=True).start()
    try:
        time.sleep(1.5)  # every trickler has been admitted and is sending its body
        started = time.perf_counter()
        response = httpx.post(f"{gateway.url}/upload", files={"file": ("x.dcm", dicom_bytes)},
                              params={"annotate": "false"}, timeout=30)
        elapsed = time.perf_counter() - started
    finally:
        stop.set()
        for sock in sockets:
            sock.close()
    record("lockdown-slow-clients", {"status": response.status_code, "seconds": round(elapsed, 3)})
    assert response.status_code == 200, response.text
    assert elapsed < 20


def test_headers_sent_byte_by_byte_are_cut_off(start_gateway: GatewayFactory) -> None:
    gateway = start_gateway("slow-headers", HTTP_HEADER_TIMEOUT_S="2")
    host, port = gateway.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    started = time.perf_counter()
    closed_after = None
    try:
        for byte in b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
            sock.send(bytes([byte]))
            time.sleep(0.25)
            if time.perf_counter() - started > 8:
                break
    except OSError:
        closed_after = time.perf_counter() - started
    if closed_after is None:
        sock.settimeout(2)
        try:
            closed = sock.recv(1) == b""
        except (TimeoutError, OSError):
            closed = False
        closed_after = time.perf_counter() - started if closed else None
    sock.close()
    record("lockdown-slow-headers", {"closed_after_s": closed_after and round(closed_after, 3)})
    assert closed_after is not None and closed_after < 6, closed_after


def test_a_hundred_thousand_empty_parts_are_refused_fast(
    start_gateway: GatewayFactory, dicom_bytes: bytes
) -> None:
    gateway = start_gateway("multipart")
    boundary = "b0undary"
    part = f'--{boundary}\r\nContent-Disposition: form-data; name="x"\r\n\r\n\r\n'.encode()
    body = part * 100_000 + (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.dcm"\r\n'
        "Content-Type: application/dicom\r\n\r\n"
    ).encode() + dicom_bytes + f"\r\n--{boundary}--\r\n".encode()
    started = time.perf_counter()
    response = httpx.post(f"{gateway.url}/upload", content=body, timeout=60,
                          headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    elapsed = time.perf_counter() - started
    record("lockdown-multipart-bomb", {"status": response.status_code,
                                       "seconds": round(elapsed, 3)})
    assert response.status_code == 400, response.text
    assert "MULTIPART_MAX_PARTS" in response.json()["message"]
    assert elapsed < 1.0
    # a normal form with one extra text field still works
    ok = httpx.post(f"{gateway.url}/upload", params={"annotate": "false"}, timeout=30,
                    data={"note": "ignored"}, files={"file": ("x.dcm", dicom_bytes)})
    assert ok.status_code == 200, ok.text


# ---------------------------------------------------------------- PHI and /health


@pytest.mark.parametrize(
    ("env", "expected"),
    [({}, "2026"), ({"PHI_MODE": "redact"}, None), ({"PHI_MODE": "passthrough"}, "20260128"),
     ({"STUDY_DATE_MODE": "full"}, "20260128"), ({"STUDY_DATE_MODE": "omit"}, None)],
    ids=["pseudonymize-year", "redact-omitted", "passthrough-full", "configured-full",
         "configured-omit"],
)
def test_study_date_follows_the_phi_mode(
    start_gateway: GatewayFactory, dicom_bytes: bytes, env: dict[str, str], expected: str | None
) -> None:
    gateway = start_gateway("date-" + "-".join(f"{k}-{v}" for k, v in env.items()).lower(), **env)
    response = httpx.post(f"{gateway.url}/upload", files={"file": ("x.dcm", dicom_bytes)},
                          params={"annotate": "false"}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["metadata"]["study_date"] == expected


def test_health_details_need_an_operator_key(start_gateway: GatewayFactory) -> None:
    digest = hashlib.sha256(OPERATOR_KEY.encode()).hexdigest()
    gateway = start_gateway("operator", OPERATOR_KEYS_SHA256=f"ops:{digest}")
    public = httpx.get(f"{gateway.url}/health", timeout=30).json()
    assert {"status", "models_loaded", "device", "timestamp"} <= set(public)
    assert public["status"] == "healthy" and public["services"]["classifier"]["ready"]
    text = json.dumps(public)
    assert "127.0.0.1" not in text and "checkpoints" not in text.replace('"checkpoints": null', "")
    assert all(s["replicas"] == {} and s["model_bundle"] is None
               for s in public["services"].values())
    full = httpx.get(f"{gateway.url}/health", timeout=30,
                     headers={"X-API-Key": OPERATOR_KEY}).json()
    assert any("127.0.0.1" in url for url in full["services"]["classifier"]["replicas"])
    assert full["services"]["classifier"]["model_bundle"]["checkpoints"]
