"""Bundle facts per replica, read from the model configuration, against real services.

The session stack's classifier serves the tiny bundle (threshold 0.449); a second real
classifier serves a copy whose threshold is 0.5. A gateway given both must refuse to
diagnose (503 naming the difference, in ``/readyz`` and the upload answer) rather than
read one replica's scores with the other's facts. A gateway on the second one alone
uses its facts, and re-reads them when that replica restarts on another bundle.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.factories import make_dicom, radiograph_pixels
from tests.integration.stack import Service, base_env, free_port, start_service, wait_ready

pytestmark = pytest.mark.timeout(300)


def _bundle_copy(tiny: Path, out: Path, *, threshold: float) -> Path:
    shutil.copytree(tiny, out)
    manifest = yaml.safe_load((out / "manifest.yaml").read_text())
    manifest["classifier"]["threshold"] = threshold
    (out / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return out


@pytest.fixture(scope="module")
def other_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _bundle_copy(tiny_bundle, tmp_path_factory.mktemp("other") / "b", threshold=0.5)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("replica-facts")


def _classifier(bundle: Path, work: Path, name: str, port: int | None = None) -> Service:
    folder = work / name
    folder.mkdir(exist_ok=True)
    service = start_service("classifier", base_env(folder, MODEL_DIR=str(bundle)), folder, port)
    wait_ready(service)
    return service


def _gateway(work: Path, name: str, classifiers: str, detector: str) -> Service:
    folder = work / name
    folder.mkdir(exist_ok=True)
    env = base_env(folder, CLASSIFIER_URLS=classifiers, DETECTOR_URLS=detector,
                   READINESS_INTERVAL_S="0.5")
    service = start_service("gateway", env, folder)
    wait_ready(service)
    return service


@pytest.fixture(scope="module")
def other_classifier(other_bundle: Path, work: Path) -> Iterator[Service]:
    service = _classifier(other_bundle, work, "classifier-0.5")
    yield service
    service.stop()


@pytest.fixture(scope="module")
def dicom_bytes() -> bytes:
    return make_dicom(radiograph_pixels(480, 360, seed=5))


def _upload(url: str, data: bytes) -> httpx.Response:
    return httpx.post(f"{url}/upload", files={"file": ("x.dcm", data, "application/dicom")},
                      params={"annotate": "false"}, timeout=120)


def test_replicas_that_disagree_are_refused_with_the_difference(
    stack, other_classifier: Service, work: Path, dicom_bytes: bytes
) -> None:
    gateway = _gateway(work, "gateway-both", f"{stack.classifier},{other_classifier.url}",
                       stack.detector)
    try:
        ready = httpx.get(f"{gateway.url}/readyz", timeout=10)
        assert ready.status_code == 503, ready.text
        message = ready.json()["message"]
        assert "replica 1 reports facts that disagree with replica 2: threshold 0.449 vs 0.5" in (
            message
        ), message
        assert "replica 2 reports facts that disagree with replica 1: threshold 0.5 vs 0.449" in (
            message
        ), message
        assert stack.classifier not in message  # clients are not told the replica URLs

        response = _upload(gateway.url, dicom_bytes)
        assert response.status_code == 503, response.text
        body = response.json()
        assert body["status"] == "error" and "diagnosis" not in body
        assert "threshold 0.449 vs 0.5" in body["message"], body
        assert "no diagnosis was made" in body["message"]
        log = gateway.log_text()  # the operator is told which replica is which
        assert (f"classifier replica {other_classifier.url} reports facts that disagree with "
                f"{stack.classifier}: threshold 0.5 vs 0.449") in log, log[-3000:]
    finally:
        gateway.stop()


def test_one_replica_facts_are_used_and_reread_after_a_restart(
    stack, tiny_bundle: Path, other_bundle: Path, work: Path, dicom_bytes: bytes
) -> None:
    """Facts come from the configuration, once; a restart on another bundle is noticed."""
    port = free_port()
    replica = _classifier(other_bundle, work, "classifier-restarting", port)
    gateway = _gateway(work, "gateway-one", replica.url, stack.detector)
    try:
        response = _upload(gateway.url, dicom_bytes)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["threshold"] == 0.5
        assert body["diagnosis"] == ("Abnormal" if body["abnormal_probability"] > 0.5 else "Normal")
        assert len(body["ensemble_prediction"]) == 3  # member names from the facts

        replica.stop()  # the same address comes back with the tiny bundle (0.449)
        replica = _classifier(tiny_bundle, work, "classifier-restarted", port)
        deadline = time.monotonic() + 60
        while True:  # a request in the restart gap may be a 503; none may use 0.5
            response = _upload(gateway.url, dicom_bytes)
            if response.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert response.status_code == 200, response.text
        assert response.json()["threshold"] == 0.449
        assert "bundle facts read" in gateway.log_text()
    finally:
        gateway.stop()
        replica.stop()
