"""The sample step of the quick start: `spine samples` files through the real gateway,
and the gateway's own `GET /samples` (the same bytes, labelled synthetic)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from spine.cli import main
from training.samples import SAMPLE_NAMES

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def samples_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("samples")
    assert main(["samples", "--out", str(out)]) == 0
    return out


def test_the_real_gateway_analyses_every_sample(stack, samples_dir: Path) -> None:
    truth = json.loads((samples_dir / "truth.json").read_text())
    for sample in truth["samples"]:
        data = (samples_dir / sample["file"]).read_bytes()
        response = httpx.post(
            f"{stack.gateway}/upload", files={"file": (sample["file"], data, "application/dicom")},
            params={"annotate": "false"}, timeout=120,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "success" and body["diagnosis"] in ("Normal", "Abnormal")
        assert body["metadata"]["modality"] == "DX"
        assert isinstance(body["detections"], list)


def test_the_gateway_serves_the_same_samples(stack, samples_dir: Path) -> None:
    listing = httpx.get(f"{stack.gateway}/samples", timeout=10).json()
    assert listing["synthetic"] is True and "not patient images" in listing["note"]
    assert [s["name"] for s in listing["samples"]] == list(SAMPLE_NAMES)
    assert all(s["synthetic"] and s["label"] in s["name"] for s in listing["samples"])
    first = listing["samples"][0]
    response = httpx.get(f"{stack.gateway}{first['url']}", timeout=120)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom"
    assert response.content == (samples_dir / f"{first['name']}.dcm").read_bytes()
    missing = httpx.get(f"{stack.gateway}/samples/patient-1", timeout=10)
    assert missing.status_code == 404 and "GET /samples" in missing.json()["message"]
