"""API keys, rate limits, CORS, security headers, internal token, audit log, no PHI in logs."""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import httpx
import pytest

from gateway.audit import uid_hash
from tests.integration.stack import Service, Stack
from tests.ops.conftest import (
    INTERNAL_TOKEN,
    PATIENT_ID,
    PATIENT_NAME,
    PSEUDONYM_SECRET,
    GatewayFactory,
)

pytestmark = pytest.mark.timeout(120)

KEYS = {"lab-a": "key-for-lab-a-0f3c9", "lab-b": "key-for-lab-b-77e21"}
ORIGIN = "https://viewer.example.org"


@pytest.fixture(scope="module")
def locked(start_gateway: GatewayFactory) -> Service:
    """A gateway with API keys, a rate limit of 3 per minute (burst 3) and one CORS origin."""
    digests = ",".join(f"{i}:{hashlib.sha256(k.encode()).hexdigest()}" for i, k in KEYS.items())
    return start_gateway(
        "locked", API_KEYS_SHA256=digests, RATE_LIMIT_PER_MINUTE="3", RATE_LIMIT_BURST="3",
        CORS_ALLOW_ORIGINS=ORIGIN, MAX_HEADER_BYTES="4096", HSTS_SECONDS="31536000",
    )


def preview(url: str, data: bytes, **headers: str) -> httpx.Response:
    return httpx.post(f"{url}/preview", files={"file": ("x.dcm", data)}, headers=headers)


def test_without_a_key_nothing_is_read(locked: Service, dicom_bytes: bytes) -> None:
    for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"},
                    {"Authorization": f"Basic {KEYS['lab-a']}"}):
        response = preview(locked.url, dicom_bytes, **headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.json()["request_id"] == response.headers["X-Request-ID"]
    # probes, health, the page and the docs stay open
    for path in ("/livez", "/readyz", "/health", "/", "/docs", "/openapi.json", "/metrics"):
        assert httpx.get(locked.url + path).status_code == 200, path


def test_keys_by_bearer_or_header_and_rate_limit_per_key(
    locked: Service, dicom_bytes: bytes
) -> None:
    assert preview(locked.url, dicom_bytes, Authorization=f"Bearer {KEYS['lab-a']}").status_code == 200
    for _ in range(2):
        assert preview(locked.url, dicom_bytes, **{"X-API-Key": KEYS["lab-a"]}).status_code == 200
    limited = preview(locked.url, dicom_bytes, **{"X-API-Key": KEYS["lab-a"]})
    assert limited.status_code == 429, limited.text
    assert 1 <= int(limited.headers["Retry-After"]) <= 20  # one token per 20 s
    # another key has its own bucket
    assert preview(locked.url, dicom_bytes, **{"X-API-Key": KEYS["lab-b"]}).status_code == 200
    log = locked.log_text()
    assert '"key_id": "lab-a"' in log and KEYS["lab-a"] not in log
    metrics = httpx.get(f"{locked.url}/metrics").text
    assert 'spine_rejected_requests_total{reason="rate_limited"} 1.0' in metrics


def test_openapi_declares_the_key_schemes(locked: Service) -> None:
    schema = httpx.get(f"{locked.url}/openapi.json").json()
    assert set(schema["components"]["securitySchemes"]) == {"ApiKeyHeader", "BearerKey"}
    assert schema["paths"]["/upload"]["post"]["security"]


def test_cors_only_for_the_allowed_origin(locked: Service) -> None:
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "x-api-key"}
    ok = httpx.options(f"{locked.url}/upload", headers={"Origin": ORIGIN, **preflight})
    assert ok.status_code == 200 and ok.headers["Access-Control-Allow-Origin"] == ORIGIN
    other = httpx.options(f"{locked.url}/upload",
                          headers={"Origin": "https://evil.example", **preflight})
    assert "Access-Control-Allow-Origin" not in other.headers
    simple = httpx.get(f"{locked.url}/livez", headers={"Origin": ORIGIN})
    assert simple.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "X-Request-ID" in simple.headers["Access-Control-Expose-Headers"]


def test_default_gateway_sends_no_cors_headers(ops_stack: Stack) -> None:
    response = httpx.get(f"{ops_stack.gateway}/livez", headers={"Origin": ORIGIN})
    assert "Access-Control-Allow-Origin" not in response.headers


def test_security_headers_on_every_response(locked: Service, ops_stack: Stack) -> None:
    responses = [
        httpx.get(f"{ops_stack.gateway}{path}") for path in
        ("/", "/static/app.js", "/livez", "/health", "/nope", "/openapi.json", "/metrics")
    ] + [
        httpx.post(f"{ops_stack.gateway}/upload", content=b"x"),  # 415
        httpx.post(f"{locked.url}/upload"),  # 401
        httpx.get(f"{locked.url}/livez", headers={"X-Big": "x" * 5000}),  # 431
    ]
    for response in responses:
        where = (response.request.url.path, response.status_code)
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, where
        assert "'unsafe-inline'" not in csp and "script-src 'self';" in csp, where
        assert response.headers["X-Content-Type-Options"] == "nosniff", where
        assert response.headers["X-Frame-Options"] == "DENY", where
        assert response.headers["Referrer-Policy"] == "no-referrer", where
        assert response.headers["X-Request-ID"], where
    assert responses[-1].status_code == 431
    assert responses[-2].headers["Strict-Transport-Security"] == "max-age=31536000"
    assert responses[2].headers["Cache-Control"] == "no-store"
    assert "no-store" not in responses[1].headers.get("Cache-Control", "")  # static files cache


def test_docs_are_served_by_the_gateway_with_no_cdn(ops_stack: Stack) -> None:
    """Swagger UI's files come from the gateway (a pinned package), the CSP names no host."""
    import base64

    response = httpx.get(f"{ops_stack.gateway}/docs")
    assert response.status_code == 200
    csp = response.headers["Content-Security-Policy"]
    inline = re.findall(r"<script>(.*?)</script>", response.text, flags=re.DOTALL)
    assert len(inline) == 1
    digest = base64.b64encode(hashlib.sha256(inline[0].encode()).digest()).decode()
    assert f"script-src 'self' 'sha256-{digest}';" in csp
    assert "'unsafe-eval'" not in csp and "frame-ancestors 'none'" in csp
    assert not re.search(r"https?:|//|cdn|\*", csp), csp  # no external host at all
    assert "cdn" not in response.text.lower() and "https://" not in response.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', response.text)
    assert len(assets) == 3, assets  # the css, the favicon and the script
    for asset in assets:
        assert asset.startswith("/"), asset  # local URLs only
        served = httpx.get(f"{ops_stack.gateway}{asset}")
        assert served.status_code == 200 and len(served.content) > 100, asset
    assert '"validatorUrl": null' in response.text


def test_model_services_refuse_calls_without_the_internal_token(ops_stack: Stack) -> None:
    for service, model in ((ops_stack.classifier, "spine-classifier"),
                           (ops_stack.detector, "spine-detector")):
        infer = f"{service}/v2/models/{model}/infer"
        assert httpx.post(infer, content=b"{}").status_code == 401
        assert httpx.post(infer, content=b"{}",
                          headers={"Authorization": "Bearer nope"}).status_code == 401
        assert httpx.get(f"{service}/v2/models/{model}").status_code == 401
        authorized = {"Authorization": f"Bearer {INTERNAL_TOKEN}"}
        assert httpx.get(f"{service}/v2/models/{model}", headers=authorized).status_code == 200
        for open_path in ("/v2/health/live", "/v2/health/ready", "/metrics"):
            assert httpx.get(service + open_path).status_code == 200, open_path


def test_request_id_travels_and_audit_line_has_no_phi(
    ops_stack: Stack, ops_dir: Path, dicom_bytes: bytes
) -> None:
    import pydicom

    request_id = "ops-trace-0001"
    response = httpx.post(
        f"{ops_stack.gateway}/upload", files={"file": ("x.dcm", dicom_bytes)},
        headers={"X-Request-ID": request_id}, timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.headers["X-Request-ID"] == request_id == response.json()["request_id"]
    time.sleep(0.3)
    for name in ("classifier", "detector"):  # the model services log under the same id
        assert request_id in ops_stack.services[name].log_text(), name
    bad = httpx.get(f"{ops_stack.gateway}/livez", headers={"X-Request-ID": "bad id {\"x\": 1}"})
    assert re.fullmatch(r"[0-9a-f]{32}", bad.headers["X-Request-ID"])

    lines = [json.loads(line) for line in (ops_dir / "audit.jsonl").read_text().splitlines()]
    mine = [line for line in lines if line["request_id"] == request_id]
    assert len(mine) == 1
    entry = mine[0]
    dataset = pydicom.dcmread(__import__("io").BytesIO(dicom_bytes))
    assert entry["study_uid_hash"] == uid_hash(PSEUDONYM_SECRET, dataset.StudyInstanceUID)
    assert entry["sop_uid_hash"] == uid_hash(PSEUDONYM_SECRET, dataset.SOPInstanceUID)
    assert entry["event"] == "analysis" and entry["status"] == 200
    assert entry["outcome"] in ("complete", "partial") and entry["diagnosis"]
    assert entry["bundle"] == "tiny-test-bundle" and len(entry["checkpoints"]) == 4
    assert entry["duration_ms"] > 0 and entry["time"].endswith("Z")
    everything = (ops_dir / "audit.jsonl").read_text() + ops_stack.logs()
    for secret in (PATIENT_ID, PATIENT_NAME, "Sentinel", str(dataset.StudyInstanceUID),
                   str(dataset.SOPInstanceUID), "19700101"):
        assert secret not in everything, secret


def test_metrics_cover_routes_upstreams_and_decode(ops_stack: Stack) -> None:
    text = httpx.get(f"{ops_stack.gateway}/metrics").text
    for name in (
        'spine_http_requests_total{method="POST",route="/upload",status="200"}',
        'spine_http_request_duration_seconds_bucket{le="1.0",method="POST",route="/upload"}',
        "spine_http_requests_in_flight",
        "spine_decode_duration_seconds_count",
        'spine_upstream_request_duration_seconds_count{outcome="ok",service="classifier"}',
        'spine_upstream_requests_total{outcome="ok",service="detector"}',
        'spine_analyses_total{result="complete"}',
        "spine_uploads_in_flight",
        'spine_upstream_replicas{service="classifier",state="ready"} 1.0',
        'spine_upstream_replicas{service="detector",state="ready"} 1.0',
    ):
        assert name in text, name
    model = httpx.get(f"{ops_stack.classifier}/metrics").text
    for name in (
        "nv_inference_request_success_total", "nv_inference_queue_duration_us_total",
        "nv_inference_compute_infer_duration_us_total", "nv_inference_pending_request_count",
        "spine_queue_duration_seconds_bucket", "spine_compute_duration_seconds_bucket",
        "spine_batch_size_bucket",
        'spine_http_requests_total{method="POST",route="/v2/models/{name}/infer",status="200"}',
        'spine_model_ready{model="spine-classifier"} 1.0',
        'spine_model_load_failures_total{model="spine-classifier"} 0.0',
    ):
        assert name in model, name
