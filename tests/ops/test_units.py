"""Pure pieces of the operations layer: limits, keys, settings, audit hashing, supervisor."""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time

import pytest

from gateway.audit import AuditFacts, AuditLog, uid_hash
from gateway.http.ratelimit import ConcurrencyLimiter, TokenBucketLimiter, retry_after_header
from gateway.http.security import ApiKeys, docs_page, security_headers
from model_server.infer import caller_timeout_s
from shared.settings import CliSettings, GatewaySettings
from spine.supervisor import Child, stop_all, supervise


def test_token_bucket_allows_bursts_then_paces() -> None:
    bucket = TokenBucketLimiter(per_minute=60, burst=3)
    assert [bucket.acquire("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = bucket.acquire("a", now=0.0)
    assert wait == pytest.approx(1.0) and retry_after_header(wait) == "1"
    assert bucket.acquire("b", now=0.0) == 0.0  # another caller, another bucket
    assert bucket.acquire("a", now=1.0) == 0.0  # one token back after a second


def test_concurrency_limiter_per_caller_and_total() -> None:
    slots = ConcurrencyLimiter(per_caller=2, total=3)
    assert slots.try_acquire("a") is None and slots.try_acquire("a") is None
    assert slots.try_acquire("a") == "caller"
    assert slots.try_acquire("b") is None
    assert slots.try_acquire("c") == "total"
    slots.release("a")
    assert slots.try_acquire("c") is None and slots.in_flight == 3


def test_api_keys_match_by_sha256_only() -> None:
    keys = ApiKeys({"lab": hashlib.sha256(b"s3cret").hexdigest()})
    assert keys.identify([(b"authorization", b"Bearer s3cret")]) == "lab"
    assert keys.identify([(b"x-api-key", b"s3cret")]) == "lab"
    assert keys.identify([(b"authorization", b"bearer s3cret")]) == "lab"
    for headers in ([], [(b"x-api-key", b"S3CRET")], [(b"authorization", b"Basic s3cret")]):
        assert keys.identify(headers) is None
    assert not ApiKeys({}).enabled


def test_settings_parse_keys_and_origins(monkeypatch: pytest.MonkeyPatch) -> None:
    digest = hashlib.sha256(b"k").hexdigest()
    monkeypatch.setenv("API_KEYS_SHA256", f"a:{digest}, b:{digest.upper()}")
    monkeypatch.setenv("CORS_ALLOW_ORIGINS", "https://a.org, https://b.org/")
    settings = GatewaySettings()
    assert settings.api_keys_sha256 == {"a": digest, "b": digest}
    assert settings.cors_allow_origins == ["https://a.org", "https://b.org"]
    monkeypatch.setenv("API_KEYS_SHA256", "a:not-a-digest")
    with pytest.raises(ValueError, match="API_KEYS_SHA256"):
        GatewaySettings()


def test_defaults_keep_the_door_as_it_was() -> None:
    settings = GatewaySettings()
    assert settings.api_keys_sha256 == {} and settings.rate_limit_per_minute == 0
    assert settings.cors_allow_origins == [] and settings.internal_token is None


def test_security_headers_and_docs_csp() -> None:
    page = dict(security_headers("/"))
    assert "script-src 'self';" in page["Content-Security-Policy"]
    assert page["Cache-Control"] == "no-store"
    assert "Cache-Control" not in dict(security_headers("/static/app.js"))
    assert "Strict-Transport-Security" not in page
    docs_html = docs_page("/openapi.json", "t")
    docs = docs_html.headers["content-security-policy"]
    assert "script-src 'self' 'sha256-" in docs and "unsafe-eval" not in docs
    assert "http" not in docs  # no external host, no CDN
    assert "cdn" not in bytes(docs_html.body).decode().lower()
    assert "Cache-Control" not in dict(security_headers("/docs/assets/swagger-ui.css"))


def test_uid_hash_is_keyed_and_stable() -> None:
    assert uid_hash("k", "1.2.3") == uid_hash("k", "1.2.3") != uid_hash("other", "1.2.3")
    assert len(uid_hash("k", "1.2.3") or "") == 32 and uid_hash("k", None) is None


def test_audit_file_has_one_json_line_per_record(tmp_path) -> None:
    import json

    log = AuditLog(tmp_path / "a" / "audit.jsonl", "secret")
    log.record(event="analysis", key_id="lab", request_id="r1", status=503,
               facts=AuditFacts("1.2.3", "1.2.3.4"), duration_ms=12.3, error="classifier down")
    log.close()
    (line,) = (tmp_path / "a" / "audit.jsonl").read_text().splitlines()
    entry = json.loads(line)
    assert entry["outcome"] == "error" and entry["key_id"] == "lab"
    assert "1.2.3" not in line and entry["study_uid_hash"] == uid_hash("secret", "1.2.3")


def test_caller_timeout_parameter_is_tritons_microseconds() -> None:
    assert caller_timeout_s({"timeout": 2_500_000}) == 2.5
    for bad in ({}, {"timeout": 0}, {"timeout": "5"}, {"timeout": True}, {"timeout": -1}):
        assert caller_timeout_s(bad) is None


def _sleeper(name: str) -> Child:
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    return Child(name, argv, {}, "http://127.0.0.1:9/unused")


def test_supervisor_restarts_a_crashed_child_and_stops_all() -> None:
    children = [_sleeper("classifier"), _sleeper("gateway")]
    for child in children:
        child.start()
    first_pid = children[0].process.pid
    stop = [False]
    thread = threading.Thread(target=supervise, args=(children, stop))
    thread.start()
    try:
        children[0].process.kill()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (
            children[0].alive() and children[0].process.pid != first_pid
        ):
            time.sleep(0.1)
        assert children[0].alive() and children[0].process.pid != first_pid
        assert children[0].restarts == 1 and children[1].restarts == 0
    finally:
        stop[0] = True
        thread.join(10)
        stop_all(children, grace_s=5)
    assert not any(child.alive() for child in children)


def test_gpu_memory_gauges_read_torch_cuda_when_present(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU here: a stand-in for torch.cuda shows what the scrape exports on one."""
    from types import SimpleNamespace

    from prometheus_client import generate_latest

    from model_server.metrics import ModelMetrics

    cuda = SimpleNamespace(
        is_available=lambda: True, device_count=lambda: 1,
        mem_get_info=lambda i: (30 * 2**30, 80 * 2**30),
        get_device_properties=lambda i: SimpleNamespace(uuid="GPU-abc"),
        memory_allocated=lambda i: 7 * 2**30,
    )
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=cuda))
    metrics = ModelMetrics("m")
    metrics.observe_gpus()
    values = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in generate_latest(metrics.registry).decode().splitlines()
        if line.startswith(("nv_gpu", "spine_gpu"))
    }
    assert values == {
        'nv_gpu_memory_used_bytes{gpu_uuid="GPU-abc"}': 50 * 2**30,
        'nv_gpu_memory_total_bytes{gpu_uuid="GPU-abc"}': 80 * 2**30,
        'spine_gpu_memory_allocated_bytes{gpu_uuid="GPU-abc"}': 7 * 2**30,
    }


def _asgi_call(app, path: str = "/upload") -> list[dict]:
    """Run one request through an ASGI app; the messages it sent."""
    import asyncio

    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": [],
             "client": ("10.1.2.3", 5555), "state": {"key_id": "lab"}}
    asyncio.run(app(scope, receive, send))
    return sent


def test_refusals_and_unexpected_failures_are_audited_once(tmp_path) -> None:
    import json

    from gateway.http.errors import error_body
    from gateway.http.refusals import RefusalAuditMiddleware, mark_audited
    from shared.logging import request_id_var
    from shared.observability import send_json

    log = AuditLog(tmp_path / "audit.jsonl", "secret")

    async def refuse(scope, receive, send) -> None:
        await send_json(send, 429, error_body(429, "rate limit exceeded"))

    async def crash(scope, receive, send) -> None:
        raise RuntimeError("PID-SENTINEL in an exception text")

    async def audited_route(scope, receive, send) -> None:
        mark_audited(scope)
        await send_json(send, 413, error_body(413, "too large"))

    async def probe(scope, receive, send) -> None:
        await send_json(send, 503, error_body(503, "not ready"))

    token = request_id_var.set("rid-1")
    try:
        _asgi_call(RefusalAuditMiddleware(refuse, audit=lambda scope: log))
        with pytest.raises(RuntimeError):
            _asgi_call(RefusalAuditMiddleware(crash, audit=lambda scope: log))
        _asgi_call(RefusalAuditMiddleware(audited_route, audit=lambda scope: log))
        _asgi_call(RefusalAuditMiddleware(probe, audit=lambda scope: log), path="/readyz")
        _asgi_call(RefusalAuditMiddleware(refuse, audit=lambda scope: log), path="/PID-SENTINEL")
    finally:
        request_id_var.reset(token)
    log.close()
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(e["event"], e["status"]) for e in lines] == [
        ("refused", 429), ("failure", 500), ("refused", 429)
    ]
    assert lines[0]["request_id"] == "rid-1" and lines[0]["key_id"] == "lab"
    assert lines[0]["error"] == "rate limit exceeded" and lines[0]["client"] == "10.1.2.3"
    assert lines[1]["error"] == "unexpected failure"
    assert lines[2]["route"] == "unmatched"  # a path the app does not serve is not written
    assert "PID-SENTINEL" not in (tmp_path / "audit.jsonl").read_text()


def test_spine_serve_shares_the_cores_as_the_operator_says(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Default: half the cores per model service, one detector; CLASSIFIER_THREADS,
    DETECTOR_THREADS and DETECTOR_REPLICAS change the split and the gateway's URLs."""
    from spine.supervisor import build_children

    def children(env: dict[str, str]) -> dict[str, Child]:
        for name in ("CLASSIFIER_THREADS", "DETECTOR_THREADS", "DETECTOR_REPLICAS"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():  # `spine serve` reads its settings from this env
            monkeypatch.setenv(name, value)
        built = build_children(CliSettings(), host="127.0.0.1", gateway_port=1,
                               classifier_port=2, detector_port=3, model_dir=tmp_path,
                               base_env=env)
        return {child.name: child for child in built}

    half = str(max(1, (os.cpu_count() or 2) // 2))
    plain = children({})
    assert set(plain) == {"gateway", "classifier", "detector"}
    assert plain["classifier"].env["TORCH_THREADS"] == plain["detector"].env["TORCH_THREADS"] == half
    assert plain["gateway"].env["DETECTOR_URLS"] == "http://127.0.0.1:3"
    shared = children({"DETECTOR_THREADS": "2", "CLASSIFIER_THREADS": "1",
                       "DETECTOR_REPLICAS": "2"})
    assert set(shared) == {"gateway", "classifier", "detector", "detector-2"}
    assert shared["detector"].env["TORCH_THREADS"] == shared["detector-2"].env["TORCH_THREADS"] == "2"
    assert shared["classifier"].env["TORCH_THREADS"] == "1"
    urls = shared["gateway"].env["DETECTOR_URLS"].split(",")
    assert urls[0] == "http://127.0.0.1:3" and len(set(urls)) == 2
    assert shared["detector-2"].ready_url.startswith(urls[1])
    assert children({"TORCH_THREADS": "1", "DETECTOR_THREADS": "2"})["detector"].env[
        "TORCH_THREADS"] == "1"  # an explicit TORCH_THREADS still wins
