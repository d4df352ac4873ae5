"""Hostile bundles against the real model services: refused at start-up, nothing runs."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import timm
import torch
import yaml

from model_server.safe_load import ULTRALYTICS, safe_load
from shared.bundle import sha256_file
from shared.settings import ModelServerSettings
from tests.factories import TouchMarker
from tests.integration.stack import base_env, start_service

pytestmark = pytest.mark.timeout(300)

MEMBER = "ensemble output/resnet50_optimized/model_best.pth"
DETECTOR = "detection output/yolo11/weights/best.pt"


def _bundle(root: Path, marker: Path, *, sha256: str | None = None) -> Path:
    """One tiny classifier member and a YOLO11n, both carrying a ``touch MARKER`` pickle."""
    from training.datasets import CLASS_NAMES
    from training.untrained_bundle import save_yolo_checkpoint

    (root / MEMBER).parent.mkdir(parents=True)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=1)
    torch.save({"epoch": 3, "model_state_dict": model.state_dict(), "note": TouchMarker(marker)},
               root / MEMBER)
    save_yolo_checkpoint("yolo11n.yaml", root / DETECTOR, CLASS_NAMES)
    checkpoint = safe_load(root / DETECTOR, ULTRALYTICS)
    checkpoint["date"] = TouchMarker(marker)
    torch.save(checkpoint, root / DETECTOR)
    member = {"name": "resnet50", "arch": "resnet10t", "checkpoint": MEMBER, "weight": 1.0,
              "input_size": 64}
    if sha256:
        member["sha256"] = sha256
    (root / "manifest.yaml").write_text(yaml.safe_dump({
        "name": "hostile", "classifier": {"members": [member]},
    }))
    return root


def _load_error(url: str, timeout_s: float = 180) -> tuple[int, str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/v2/health/ready", timeout=2)
        except httpx.HTTPError:
            time.sleep(0.5)
            continue
        if response.status_code == 200 or response.json().get("error"):
            return response.status_code, response.json().get("error") or ""
        time.sleep(0.5)
    raise AssertionError(f"{url} neither ready nor failed in {timeout_s} s")


def _model_state(url: str) -> dict[str, float]:
    """The model-state metrics the alert rules read (deploy/prometheus/), from /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return {
        line.split("{", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(("spine_model_ready{", "spine_model_load_failures_total{"))
    }


def test_model_services_refuse_a_hostile_bundle_and_run_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    bundle = _bundle(tmp_path / "bundle", marker)
    env = base_env(tmp_path, MODEL_DIR=str(bundle))
    services = [start_service(name, env, tmp_path) for name in ("classifier", "detector")]
    try:
        for service, checkpoint in zip(services, (MEMBER, DETECTOR), strict=True):
            status, error = _load_error(service.url)
            assert status == 503, service.log_text()[-2000:]
            assert checkpoint in error and "posix.system" in error, error
            assert "spine convert-checkpoint" in error
            assert _model_state(service.url) == {"spine_model_ready": 0.0,
                                                 "spine_model_load_failures_total": 1.0}
    finally:
        for service in services:
            service.stop()
    assert not marker.exists()


def test_a_wrong_sha256_pin_is_a_startup_error(tmp_path: Path) -> None:
    from classifier_service.model import ClassifierModel

    bundle = _bundle(tmp_path / "bundle", tmp_path / "MARKER", sha256="0" * 64)
    actual = sha256_file(bundle / MEMBER)
    model = ClassifierModel(bundle, "cpu", settings=ModelServerSettings())
    with pytest.raises(RuntimeError, match=rf"model_best\.pth.*sha256 mismatch.*{'0' * 64}.*{actual}"):
        model.load()
    assert not (tmp_path / "MARKER").exists()
