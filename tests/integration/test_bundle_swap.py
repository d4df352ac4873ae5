"""A bundle swapped under load: real services, the real gateway, ``spine swap``.

A classifier and two detector replicas serve bundle A from under their
MODEL_REPOSITORY_ROOT; a gateway knows all three (its operator ``/health`` lists them).
While 8 clients upload without pause, ``spine swap`` loads bundle B (another name and
threshold: other facts) into each replica in turn. Every upload must be answered 200;
those answered before the swap name A for both parts, those sent after it name B; each
part's bundle agrees with the facts the answer was read with (the threshold). A bundle
whose sha256 pin is wrong fails to load and leaves B serving; a folder outside the root
is refused with 403. The counts go to test-artifacts/swap/.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.factories import make_dicom, radiograph_pixels
from tests.integration.stack import REPO, Service, base_env, start_service, wait_ready

pytestmark = pytest.mark.timeout(600)

TOKEN = "swap-test-internal-token"
OPERATOR_KEY = "swap-test-operator-key"
CONCURRENCY = 8
MAX_REQUESTS = 600  # the load is bounded whatever happens
AFTER_SWAP = 24  # answers still collected once the swap has returned
ARTIFACTS = REPO / "test-artifacts" / "swap"


def _bundle(source: Path, out: Path, **changes: object) -> Path:
    shutil.copytree(source, out)
    manifest = yaml.safe_load((out / "manifest.yaml").read_text())
    for key, value in changes.items():
        if key == "threshold":
            manifest["classifier"]["threshold"] = value
        elif key == "pin":
            manifest["classifier"]["members"][0]["sha256"] = value
        else:
            manifest[key] = value
    (out / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return out


@dataclass
class Deployment:
    root: Path
    gateway: Service
    models: list[Service]

    def swap(self, model_dir: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "INTERNAL_TOKEN": TOKEN, "SPINE_API_KEY": OPERATOR_KEY}
        return subprocess.run(
            [sys.executable, "-m", "spine.cli", "swap", "--model-dir", model_dir,
             "--gateway", self.gateway.url],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=420, check=False,
        )


@pytest.fixture(scope="module")
def deployment(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    work = tmp_path_factory.mktemp("swap")
    root = work / "repository"
    _bundle(tiny_bundle, root / "a")
    _bundle(tiny_bundle, root / "b", name="tiny-swapped-in", threshold=0.5)
    _bundle(root / "b", root / "bad", name="tiny-bad-pin", pin="0" * 64)
    env = base_env(work, MODEL_DIR=str(root / "a"), MODEL_REPOSITORY_ROOT=str(root),
                   INTERNAL_TOKEN=TOKEN)
    models = []
    for folder, name in (("classifier", "classifier"), ("detector-1", "detector"),
                         ("detector-2", "detector")):
        (work / folder).mkdir()
        models.append(start_service(name, env, work / folder))
    try:
        for service in models:
            wait_ready(service)
        gateway_env = {
            **env, "CLASSIFIER_URLS": models[0].url,
            "DETECTOR_URLS": f"{models[1].url},{models[2].url}",
            "OPERATOR_KEYS_SHA256": f"ops:{hashlib.sha256(OPERATOR_KEY.encode()).hexdigest()}",
            "READINESS_INTERVAL_S": "0.5", "MAX_CONTENT_LENGTH": str(8 * 1024 * 1024),
        }
        (work / "gateway").mkdir()
        gateway = start_service("gateway", gateway_env, work / "gateway")
        try:
            wait_ready(gateway)
            yield Deployment(root, gateway, models)
        finally:
            gateway.stop()
    finally:
        for service in models:
            service.stop()


@pytest.fixture(scope="module")
def dicom_bytes() -> bytes:
    return make_dicom(radiograph_pixels(480, 360, seed=11))


@dataclass
class Answer:
    started: float
    ended: float
    status: int
    parts: dict[str, str]  # service -> bundle name
    threshold: float | None


def _upload(client: httpx.Client, url: str, data: bytes) -> Answer:
    started = time.monotonic()
    try:
        response = client.post(f"{url}/upload", files={"file": ("x.dcm", data, "application/dicom")},
                               params={"annotate": "false"})
    except httpx.HTTPError:
        return Answer(started, time.monotonic(), 0, {}, None)
    body = response.json() if response.status_code == 200 else {}
    parts = {service: part["name"]
             for service, part in body.get("model_bundle", {}).get("parts", {}).items()}
    return Answer(started, time.monotonic(), response.status_code, parts, body.get("threshold"))


def _load_during(url: str, data: bytes, action: threading.Event, stop: threading.Event,
                 answers: list[Answer]) -> None:
    """``CONCURRENCY`` clients upload until ``stop`` (bounded by MAX_REQUESTS); ``action``
    is set once the first answers are in."""
    lock = threading.Lock()

    def client_loop() -> None:
        with httpx.Client(timeout=120) as client:
            while not stop.is_set():
                with lock:
                    if len(answers) >= MAX_REQUESTS:
                        return
                answer = _upload(client, url, data)
                with lock:
                    answers.append(answer)
                    if len(answers) >= CONCURRENCY:
                        action.set()

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        for _ in range(CONCURRENCY):
            pool.submit(client_loop)


def _collect_until(answers: list[Answer], count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while len(answers) < count and time.monotonic() < deadline:
        time.sleep(0.1)


def test_a_swap_under_load_answers_every_request_and_names_each_parts_bundle(
    deployment: Deployment, dicom_bytes: bytes
) -> None:
    answers: list[Answer] = []
    ready, stop = threading.Event(), threading.Event()
    load = threading.Thread(target=_load_during,
                            args=(deployment.gateway.url, dicom_bytes, ready, stop, answers))
    load.start()
    try:
        assert ready.wait(120), "no answers before the swap"
        swap_started = time.monotonic()
        swapped = deployment.swap("b")
        swap_ended = time.monotonic()
        _collect_until(answers, len(answers) + AFTER_SWAP, 120)
    finally:
        stop.set()
        load.join(180)
    assert swapped.returncode == 0, swapped.stdout + swapped.stderr
    assert swapped.stdout.count("now serving tiny-swapped-in (user)") == 3, swapped.stdout

    statuses: dict[int, int] = {}
    for answer in answers:
        statuses[answer.status] = statuses.get(answer.status, 0) + 1
    before = [a for a in answers if a.ended < swap_started]
    during = [a for a in answers if a.started < swap_ended and a.ended >= swap_started]
    after = [a for a in answers if a.started > swap_ended]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    report = {
        "requests": len(answers), "statuses": statuses, "concurrency": CONCURRENCY,
        "swap_seconds": round(swap_ended - swap_started, 2), "before": len(before),
        "during": len(during), "after": len(after),
        "mixed_parts_during": sum(1 for a in during if len(set(a.parts.values())) > 1),
        "swap_stdout": swapped.stdout,
    }
    (ARTIFACTS / "swap-under-load.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "swap_stdout"}))

    assert statuses == {200: len(answers)}, report  # zero non-200 answers
    assert during and after and before, report
    for answer in before:
        assert answer.parts == {"classifier": "tiny-test-bundle", "detector": "tiny-test-bundle"}
    for answer in after:
        assert answer.parts == {"classifier": "tiny-swapped-in", "detector": "tiny-swapped-in"}
    for answer in answers:  # each part read with its own bundle's facts
        expected = 0.5 if answer.parts["classifier"] == "tiny-swapped-in" else 0.449
        assert answer.threshold == expected, answer


def test_a_load_that_fails_leaves_the_old_bundle_serving(
    deployment: Deployment, dicom_bytes: bytes
) -> None:
    serving = _served_bundle(deployment)
    before = _index(deployment.models[0])
    assert [entry["state"] for entry in before] == ["READY"]
    result = deployment.swap("bad")
    assert result.returncode != 0
    assert "sha256 mismatch" in result.stderr, result.stderr
    assert "still serves its previous bundle" in result.stderr, result.stderr
    assert _index(deployment.models[0]) == before  # same version, still READY
    with httpx.Client(timeout=120) as client:
        answer = _upload(client, deployment.gateway.url, dicom_bytes)
    assert answer.status == 200, answer
    assert answer.parts == {"classifier": serving, "detector": serving}, answer


def _served_bundle(deployment: Deployment) -> str:
    """The classifier's bundle name, as the gateway's operator /health reports it."""
    key = {"X-API-Key": OPERATOR_KEY}
    health = httpx.get(f"{deployment.gateway.url}/health", headers=key, timeout=30).json()
    return str(health["services"]["classifier"]["model_bundle"]["name"])


def test_a_rollback_is_a_swap_back(deployment: Deployment, dicom_bytes: bytes) -> None:
    result = deployment.swap("a")
    assert result.returncode == 0, result.stdout + result.stderr
    with httpx.Client(timeout=120) as client:
        answer = _upload(client, deployment.gateway.url, dicom_bytes)
    assert answer.status == 200, answer
    assert answer.parts == {"classifier": "tiny-test-bundle", "detector": "tiny-test-bundle"}
    assert answer.threshold == 0.449


def test_a_folder_outside_the_repository_root_is_refused(deployment: Deployment) -> None:
    classifier = deployment.models[0]
    for model_dir in (str(deployment.root.parent), "../a", "/etc"):
        response = httpx.post(
            f"{classifier.url}/v2/repository/models/spine-classifier/load",
            json={"parameters": {"model_dir": model_dir}},
            headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30,
        )
        assert response.status_code == 403, response.text
        assert "MODEL_REPOSITORY_ROOT" in response.json()["error"]
    no_token = httpx.post(f"{classifier.url}/v2/repository/index", json={}, timeout=30)
    assert no_token.status_code == 401


def _index(service: Service) -> list[dict[str, str]]:
    response = httpx.post(f"{service.url}/v2/repository/index", json={},
                          headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()
