"""Upstream garbage: a broken replica never turns an upload into a 500.

A stand-in replica (``tests/ops/standin.py``) plays a model service that answers wrong
shapes, NaN, scores above 1, missing outputs, HTTP 500s, or hangs, or whose model
configuration (the bundle facts) is missing or incomplete; the real gateway (a
subprocess) calls it, next to the ops stack's real model services. A bad classifier
answer is a 502 JSON error; a bad detector answer is a 200 with the classification only
and a warning; a replica whose facts cannot be read is out of rotation with a 503 saying
why (never answered with defaults); a replica that keeps failing is ejected and probed
back; ``/readyz`` answers from cached state while a replica hangs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared import contract
from tests.integration.scrape import metric
from tests.integration.stack import Service, Stack
from tests.ops.conftest import INTERNAL_TOKEN, PATIENT_ID, PATIENT_NAME, GatewayFactory
from tests.ops.standin import (
    CLASSIFIER_GARBAGE,
    CONFIG_GARBAGE,
    DETECTOR_GARBAGE,
    INTERNAL_DETAIL,
    StandIn,
    standin,
)

pytestmark = pytest.mark.timeout(180)

DETECTION_UNAVAILABLE = "Detection unavailable"


def upload(url: str, data: bytes, timeout: float = 60.0, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{url}/upload", files={"file": ("x.dcm", data, "application/dicom")},
        params={"annotate": "false"}, headers=headers, timeout=timeout,
    )


@pytest.fixture(scope="module")
def fake_classifier() -> Iterator[StandIn]:
    with standin(contract.CLASSIFIER_MODEL) as replica:
        yield replica


@pytest.fixture(scope="module")
def fake_detector() -> Iterator[StandIn]:
    with standin(contract.DETECTOR_MODEL) as replica:
        yield replica


@pytest.fixture(scope="module")
def on_fake_classifier(start_gateway: GatewayFactory, fake_classifier: StandIn) -> Service:
    """A gateway whose only classifier replica is the stand-in (never ejected here)."""
    return start_gateway(
        "garbage-classifier", CLASSIFIER_URLS=fake_classifier.url, BREAKER_FAILURES="1000"
    )


@pytest.fixture(scope="module")
def on_fake_detector(start_gateway: GatewayFactory, fake_detector: StandIn) -> Service:
    """A gateway whose only detector replica is the stand-in (never ejected here)."""
    return start_gateway(
        "garbage-detector", DETECTOR_URLS=fake_detector.url, BREAKER_FAILURES="1000"
    )


@pytest.mark.parametrize("mode", sorted(CLASSIFIER_GARBAGE))
def test_bad_classifier_answer_is_a_502_never_a_500(
    on_fake_classifier: Service, fake_classifier: StandIn, dicom_bytes: bytes, mode: str
) -> None:
    gateway = on_fake_classifier
    fake_classifier.mode = mode
    response = upload(gateway.url, dicom_bytes)
    assert response.status_code == 502, (CLASSIFIER_GARBAGE[mode], response.text)
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["status"] == "error" and "classifier" in body["message"], body
    assert "no diagnosis" in body["message"] and "diagnosis" not in body
    assert body["request_id"] == response.headers["X-Request-ID"]
    log = gateway.log_text()
    assert "invalid answer" in log and body["request_id"] in log  # details: the log only


def test_classifier_500_is_a_502_and_its_text_is_not_relayed(
    on_fake_classifier: Service, fake_classifier: StandIn, dicom_bytes: bytes
) -> None:
    gateway = on_fake_classifier
    fake_classifier.mode = "500"
    response = upload(gateway.url, dicom_bytes)
    assert response.status_code == 502, response.text
    assert INTERNAL_DETAIL not in response.text and "secret" not in response.text
    assert INTERNAL_DETAIL in gateway.log_text()  # the operator still sees what it said


@pytest.mark.parametrize("mode", sorted(DETECTOR_GARBAGE) + ["500"])
def test_bad_detector_answer_is_classification_only(
    on_fake_detector: Service, fake_detector: StandIn, dicom_bytes: bytes, mode: str
) -> None:
    fake_detector.mode = mode
    response = upload(on_fake_detector.url, dicom_bytes)
    assert response.status_code == 200, (DETECTOR_GARBAGE.get(mode, mode), response.text)
    body = response.json()
    assert body["diagnosis"] in ("Normal", "Abnormal") and body["detections"] is None
    assert any(DETECTION_UNAVAILABLE in w and "detector" in w for w in body["warnings"]), body
    assert INTERNAL_DETAIL not in response.text


def test_a_good_stand_in_answer_is_used(
    on_fake_detector: Service, on_fake_classifier: Service, fake_detector: StandIn,
    fake_classifier: StandIn, dicom_bytes: bytes,
) -> None:
    """The stand-in's own valid answers pass the checks: the tests above test the breakage."""
    fake_detector.mode = fake_classifier.mode = "ok"
    body = upload(on_fake_detector.url, dicom_bytes).json()
    assert body["detections"] is not None and len(body["detections"]) == 1, body
    response = upload(on_fake_classifier.url, dicom_bytes)
    assert response.status_code == 200, response.text
    assert response.json()["model_bundle"]["name"] == "standin"


def _real_facts(url: str, model: str, facts_type: type[contract.ServedFacts],
                outputs: tuple[contract.TensorSpec, ...]) -> contract.ServedFacts:
    config = httpx.get(f"{url}/v2/models/{model}/config",
                       headers={"Authorization": f"Bearer {INTERNAL_TOKEN}"}, timeout=10).json()
    return contract.facts_from_config(config, facts_type, model=model, outputs=outputs)


@pytest.fixture(scope="module")
def agreeing_classifier(ops_stack: Stack) -> Iterator[StandIn]:
    """A stand-in that reports the real classifier's facts, so the two agree."""
    facts = _real_facts(ops_stack.classifier, contract.CLASSIFIER_MODEL,
                        contract.ClassifierFacts, contract.CLASSIFIER_OUTPUTS)
    with standin(contract.CLASSIFIER_MODEL, facts) as replica:
        yield replica


def test_the_models_decision_is_read_never_recomputed_from_a_threshold(
    on_fake_classifier: Service, fake_classifier: StandIn, dicom_bytes: bytes
) -> None:
    """Score 0.7 above the facts' threshold 0.5, but the model decided Normal: Normal."""
    fake_classifier.mode = "decided-normal"
    try:
        response = upload(on_fake_classifier.url, dicom_bytes)
    finally:
        fake_classifier.mode = "ok"
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["abnormal_probability"] == pytest.approx(0.7) and body["threshold"] == 0.5
    assert body["diagnosis"] == "Normal", body


def test_failing_replica_is_ejected_then_probed_back(
    start_gateway: GatewayFactory, ops_stack: Stack, agreeing_classifier: StandIn,
    dicom_bytes: bytes,
) -> None:
    """Classifier replicas: the stand-in (answering 500) first, the real one second."""
    cooldown = 6.0
    fake = agreeing_classifier
    fake.mode = "500"
    gateway = start_gateway(
        "breaker", CLASSIFIER_URLS=f"{fake.url},{ops_stack.classifier}",
        BREAKER_FAILURES="2", BREAKER_COOLDOWN_S=str(cooldown),
    )
    fake.calls = 0
    ejected_at = 0.0
    for index in range(4):  # every upload succeeds: a 500 is retried on the real replica
        response = upload(gateway.url, dicom_bytes)
        assert response.status_code == 200, response.text
        if index == 1:
            ejected_at = time.monotonic()
    assert fake.calls == 2  # ejected after BREAKER_FAILURES, then left alone
    assert "ejected" in gateway.log_text()
    assert _classifier_replicas(gateway.url) == {"ready": 1, "ejected": 1, "not_ready": 0}
    assert metric(gateway.url, "spine_upstream_ejections_total", service="classifier") == 1

    # The rest is over: the next call is a trial, which fails again (and is retried).
    time.sleep(max(0.0, ejected_at + cooldown + 0.3 - time.monotonic()))
    assert upload(gateway.url, dicom_bytes).status_code == 200
    assert fake.calls == 3
    assert upload(gateway.url, dicom_bytes).status_code == 200
    assert fake.calls == 3  # ejected again at once
    assert metric(gateway.url, "spine_upstream_ejections_total", service="classifier") == 2

    fake.mode = "ok"
    time.sleep(cooldown + 0.3)
    response = upload(gateway.url, dicom_bytes)  # the trial succeeds: back in use
    assert response.status_code == 200, response.text
    assert fake.calls == 4
    upload(gateway.url, dicom_bytes)
    assert fake.calls == 5
    assert fake.config_reads == 1  # its facts were read once, not per answer
    assert _classifier_replicas(gateway.url) == {"ready": 2, "ejected": 0, "not_ready": 0}


def _classifier_replicas(url: str) -> dict[str, float]:
    """``spine_upstream_replicas`` of the classifier by state (what the alerts read)."""
    return {
        state: metric(url, "spine_upstream_replicas", service="classifier", state=state)
        for state in ("ready", "ejected", "not_ready")
    }


# ------------------------------------------------------------------ facts unreadable


@pytest.mark.parametrize("config_mode", sorted(CONFIG_GARBAGE))
def test_a_classifier_whose_facts_cannot_be_read_is_refused_with_the_reason(
    start_gateway: GatewayFactory, dicom_bytes: bytes, config_mode: str
) -> None:
    with standin(contract.CLASSIFIER_MODEL) as fake:
        fake.config_mode = config_mode
        gateway = start_gateway(f"config-{config_mode}", CLASSIFIER_URLS=fake.url)
        ready = httpx.get(f"{gateway.url}/readyz", timeout=10)
        assert ready.status_code == 503, (CONFIG_GARBAGE[config_mode], ready.text)
        assert "classifier service not ready: replica 1: " in ready.json()["message"]
        response = upload(gateway.url, dicom_bytes)
        assert response.status_code == 503, response.text
        body = response.json()
        assert "replica 1: " in body["message"] and "no diagnosis" in body["message"], body
        assert fake.calls == 0  # never asked to infer, so never read with defaults
        assert "bundle facts unreadable" in gateway.log_text()
        gateway.stop()


def test_the_reason_names_what_is_missing_and_a_fixed_replica_comes_back(
    start_gateway: GatewayFactory, dicom_bytes: bytes
) -> None:
    with standin(contract.CLASSIFIER_MODEL) as fake:
        fake.config_mode = "no-threshold"
        gateway = start_gateway("config-fixed", CLASSIFIER_URLS=fake.url,
                                READINESS_INTERVAL_S="0.3")
        message = httpx.get(f"{gateway.url}/readyz", timeout=10).json()["message"]
        assert "threshold" in message and "Field required" in message, message
        missing = upload(gateway.url, dicom_bytes)
        assert missing.status_code == 503 and "threshold" in missing.json()["message"]

        fake.config_mode = "ok"  # the poller reads it again while it is out
        deadline = time.monotonic() + 30
        while httpx.get(f"{gateway.url}/readyz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "the fixed replica never came back"
            time.sleep(0.2)
        response = upload(gateway.url, dicom_bytes)
        assert response.status_code == 200, response.text
        assert response.json()["threshold"] == 0.5  # the stand-in's own facts
        gateway.stop()


def test_a_detector_whose_facts_cannot_be_read_gives_classification_only(
    start_gateway: GatewayFactory, dicom_bytes: bytes
) -> None:
    with standin(contract.DETECTOR_MODEL) as fake:
        fake.config_mode = "missing"
        gateway = start_gateway("detector-config-missing", DETECTOR_URLS=fake.url)
        response = upload(gateway.url, dicom_bytes)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["detections"] is None
        assert any("detector service: replica 1: GET /v2/models/spine-detector/config "
                   "answered HTTP 404" in w for w in body["warnings"]), body["warnings"]
        assert fake.calls == 0
        gateway.stop()


def test_an_answer_from_another_model_version_is_not_read_with_old_facts(
    start_gateway: GatewayFactory, dicom_bytes: bytes
) -> None:
    with standin(contract.CLASSIFIER_MODEL) as fake:
        gateway = start_gateway("version-change", CLASSIFIER_URLS=fake.url)
        assert upload(gateway.url, dicom_bytes).status_code == 200
        reads = fake.config_reads
        fake.mode = "version"  # answers as a version its metadata does not list
        response = upload(gateway.url, dicom_bytes)
        assert response.status_code == 503, response.text
        assert "bundle changed" in response.json()["message"]
        # read again at once after each answer: the first may be a call in flight during a
        # bundle swap, so the replica is asked once more, and answers another version again
        assert fake.config_reads == reads + 2
        assert "reading its facts again" in gateway.log_text()
        gateway.stop()


def test_readyz_answers_quickly_while_a_replica_hangs(
    start_gateway: GatewayFactory, ops_stack: Stack, fake_classifier: StandIn
) -> None:
    fake_classifier.ready_hangs = True
    try:
        both = start_gateway(
            "hanging-and-real", CLASSIFIER_URLS=f"{fake_classifier.url},{ops_stack.classifier}"
        )
        alone = start_gateway("hanging-alone", CLASSIFIER_URLS=fake_classifier.url)
        for gateway, status in ((both, 200), (alone, 503)):
            for _ in range(3):
                started = time.perf_counter()
                response = httpx.get(f"{gateway.url}/readyz", timeout=10)
                elapsed = time.perf_counter() - started
                assert response.status_code == status, response.text
                assert elapsed < 1.0, elapsed
                time.sleep(0.5)
    finally:
        fake_classifier.ready_hangs = False


# ------------------------------------------------------------------ refusals audited


# One key per refusal that needs a fresh rate-limit token (the limit is per key).
AUDIT_KEYS = {"lab-a": "audit-key-a-123", "lab-b": "audit-key-b-456", "lab-c": "audit-key-c-789"}
AUDIT_MAX_BYTES = 1_000_000


def _audit_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def audited(start_gateway: GatewayFactory, ops_dir: Path, fake_classifier: StandIn) -> Service:
    """API keys, a rate limit of 1 (burst 1), one upload at a time, its own audit file."""
    import hashlib

    keys = ",".join(f"{name}:{hashlib.sha256(key.encode()).hexdigest()}"
                    for name, key in AUDIT_KEYS.items())
    return start_gateway(
        "audited", API_KEYS_SHA256=keys, RATE_LIMIT_PER_MINUTE="1",
        RATE_LIMIT_BURST="1", MAX_INFLIGHT_UPLOADS="1", MAX_UPLOADS_PER_CLIENT="0",
        AUDIT_LOG_PATH=str(ops_dir / "audit-refusals.jsonl"), CLASSIFIER_URLS=fake_classifier.url,
        CLASSIFIER_TIMEOUT_S="4", MAX_CONTENT_LENGTH=str(AUDIT_MAX_BYTES),
    )


def test_every_refusal_is_audited_with_its_request_id(
    audited: Service, ops_dir: Path, fake_classifier: StandIn, dicom_bytes: bytes
) -> None:
    import concurrent.futures

    key_a, key_b, key_c = ({"X-API-Key": key} for key in AUDIT_KEYS.values())
    refused: dict[str, int] = {}
    response = upload(audited.url, dicom_bytes)  # no key
    refused[response.headers["X-Request-ID"]] = response.status_code
    response = upload(audited.url, dicom_bytes, **{"X-API-Key": "wrong"})
    refused[response.headers["X-Request-ID"]] = response.status_code

    fake_classifier.mode = "hang"  # the one upload slot stays taken for CLASSIFIER_TIMEOUT_S
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            hanging = pool.submit(upload, audited.url, dicom_bytes, 30.0, **key_a)
            time.sleep(1.0)
            response = upload(audited.url, dicom_bytes, **key_b)  # the slot is taken: 503
            refused[response.headers["X-Request-ID"]] = response.status_code
            slow = hanging.result()
        refused[slow.headers["X-Request-ID"]] = slow.status_code  # 504, audited by the route
    finally:
        fake_classifier.mode = "ok"
    response = upload(audited.url, dicom_bytes, **key_a)  # lab-a's bucket is empty: 429
    refused[response.headers["X-Request-ID"]] = response.status_code
    response = upload(audited.url, b"\0" * (AUDIT_MAX_BYTES + 1), **key_c)  # too large: 413
    refused[response.headers["X-Request-ID"]] = response.status_code

    assert sorted(refused.values()) == [401, 401, 413, 429, 503, 504], refused
    path = ops_dir / "audit-refusals.jsonl"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        by_id = {line["request_id"]: line for line in _audit_lines(path)}
        if set(refused) <= set(by_id):
            break
        time.sleep(0.2)
    for request_id, status in refused.items():
        line = by_id.get(request_id)
        assert line is not None, (request_id, status, by_id)
        assert line["status"] == status and line["outcome"] in ("refused", "error"), line
    assert all(len([line for line in _audit_lines(path) if line["request_id"] == r]) == 1
               for r in refused)  # one line each: the route's own lines are not repeated
    text = path.read_text()
    assert PATIENT_ID not in text and PATIENT_NAME not in text
    assert not any(key in text for key in AUDIT_KEYS.values())
