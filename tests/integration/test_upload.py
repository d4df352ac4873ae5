"""End to end through the real gateway and model services on loopback."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from pydicom.uid import JPEG2000Lossless

from tests.factories import make_dicom, radiograph_pixels

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def mono1_j2k() -> bytes:
    """12-bit MONOCHROME1 JPEG 2000 DX, non-square (1500 x 1000)."""
    pixels = radiograph_pixels(1500, 1000, bits=12, seed=3)
    return make_dicom(
        4095 - pixels, photometric="MONOCHROME1", transfer_syntax=JPEG2000Lossless,
        patient_id="PID-SENTINEL-7731",
    )


def upload(url: str, data: bytes, **params: str) -> httpx.Response:
    return httpx.post(
        f"{url}/upload", files={"file": ("x.dcm", data, "application/dicom")},
        params=params, timeout=120,
    )


def preview(url: str, data: bytes) -> tuple[np.ndarray, httpx.Response]:
    response = httpx.post(f"{url}/preview", files={"file": ("x.dcm", data)}, timeout=60)
    assert response.status_code == 200, response.text
    image = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_UNCHANGED)
    return image, response


def test_upload_returns_the_documented_json(stack, mono1_j2k: bytes, tiny_bundle: Path) -> None:
    response = upload(stack.gateway, mono1_j2k)
    assert response.status_code == 200, response.text
    body = response.json()
    # SEED.md's contract
    assert body["status"] == "success"
    assert body["diagnosis"] in ("Normal", "Abnormal")
    assert 0 <= body["confidence"] <= 1
    assert set(body["ensemble_prediction"]) == {"densenet121", "resnet50", "efficientnetv2"}
    assert isinstance(body["detections"], list)
    assert body["metadata"]["modality"] == "DX"
    assert body["metadata"]["study_date"] == "2026"  # pseudonymize: the year only
    assert body["metadata"]["rows"] == 1500 and body["metadata"]["columns"] == 1000
    assert body["metadata"]["photometric_interpretation"] == "MONOCHROME1"
    assert body["metadata"]["transfer_syntax_uid"] == JPEG2000Lossless
    assert body["annotated_image"].startswith("data:image/png;base64,")
    # additions
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert body["demo"] is False and body["model_bundle"]["name"] == "tiny-test-bundle"
    assert body["metadata"]["patient_id"] != "PID-SENTINEL-7731"  # pseudonymised by default
    assert body["image"] == {
        "original_width": 1000, "original_height": 1500, "canonical_width": 683,
        "canonical_height": 1024, "scale_x": pytest.approx(0.683), "scale_y": pytest.approx(1024 / 1500),
    }
    assert set(body["timings_ms"]) == {"decode", "classify", "detect", "merge", "render", "total"}
    manifest = yaml.safe_load((tiny_bundle / "manifest.yaml").read_text())
    for member in manifest["classifier"]["members"]:
        digest = hashlib.sha256((tiny_bundle / member["checkpoint"]).read_bytes()).hexdigest()
        assert body["model_bundle"]["checkpoints"][member["checkpoint"]] == digest


def test_weighted_vote_and_confidence(stack, mono1_j2k: bytes) -> None:
    body = upload(stack.gateway, mono1_j2k, annotate="false").json()
    members = body["ensemble_prediction"]
    weights = body["ensemble_weights"]
    expected = sum(weights[k] * members[k] for k in members) / sum(weights.values())
    assert body["abnormal_probability"] == pytest.approx(expected, abs=1e-5)
    abnormal = body["abnormal_probability"] > body["threshold"]
    assert body["diagnosis"] == ("Abnormal" if abnormal else "Normal")
    stated = body["abnormal_probability"] if abnormal else 1 - body["abnormal_probability"]
    assert body["confidence"] == pytest.approx(stated, abs=1e-5)
    assert body["annotated_image"] is None


def _direct_member_probability(checkpoint: Path, arch: str, size: int, canonical: np.ndarray) -> float:
    """Independent of the service code: timm + torch.load + a hand-written preprocessing."""
    import timm

    model = timm.create_model(arch, pretrained=False, num_classes=1)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu")["model_state_dict"])
    model.eval()
    x = torch.from_numpy(canonical).float()[None, None] / 255.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    x = x.repeat(1, 3, 1, 1)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        return torch.sigmoid(model((x - mean) / std))[0, 0].item()


def test_member_scores_match_the_checkpoints(stack, mono1_j2k: bytes, tiny_bundle: Path) -> None:
    canonical, _ = preview(stack.gateway, mono1_j2k)
    body = upload(stack.gateway, mono1_j2k, annotate="false").json()
    manifest = yaml.safe_load((tiny_bundle / "manifest.yaml").read_text())
    for member in manifest["classifier"]["members"]:
        direct = _direct_member_probability(
            tiny_bundle / member["checkpoint"], member["arch"], member["input_size"], canonical
        )
        assert body["ensemble_prediction"][member["name"]] == pytest.approx(direct, abs=1e-4)


def _detector_boxes_on(detector_url: str, canonical: np.ndarray) -> list[tuple[float, list[float]]]:
    """Ask the detector service directly (same process as the gateway's call: same numbers)."""
    from shared import oip

    body, headers = oip.encode_request(
        {"IMAGE": canonical[None, None]},
        outputs=["num_detections", "detection_boxes", "detection_scores"],
    )
    response = httpx.post(f"{detector_url}/v2/models/spine-detector/infer", content=body,
                          headers=headers, timeout=60)
    _, tensors = oip.decode_response(response.content, int(response.headers[oip.HEADER_LENGTH]))
    count = int(tensors["num_detections"][0, 0])
    return [
        (float(score), [float(v) for v in box])
        for box, score in zip(tensors["detection_boxes"][0, :count],
                              tensors["detection_scores"][0, :count], strict=True)
    ]


def test_boxes_are_in_original_pixel_coordinates(stack, mono1_j2k: bytes) -> None:
    canonical, _ = preview(stack.gateway, mono1_j2k)
    body = upload(stack.gateway, mono1_j2k, annotate="false").json()
    detections = body["detections"]
    assert detections, "the test detector is built to always fire"
    direct = _detector_boxes_on(stack.detector, canonical)
    height, width = canonical.shape
    for _, (x1, y1, x2, y2) in direct:  # the detector answers in canonical pixels
        assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
    sx, sy = body["image"]["scale_x"], body["image"]["scale_y"]
    expected = [
        (s, [b[0] / sx, b[1] / sy, b[2] / sx, b[3] / sy])
        for s, b in direct
        if b[2] > b[0] and b[3] > b[1]  # flat boxes are dropped by the gateway
    ]
    if body["diagnosis"] == "Normal":  # paper fusion keeps only confident boxes
        expected = [item for item in expected if item[0] >= 0.5]
    expected.sort(key=lambda item: -item[0])
    assert len(detections) == len(expected) > 0
    for detection, (score, box) in zip(detections, expected, strict=True):
        assert detection["confidence"] == pytest.approx(score, abs=1e-4)
        assert detection["bbox"] == pytest.approx(box, abs=0.06)
        x1, y1, x2, y2 = detection["bbox"]
        assert 0 <= x1 < x2 <= 1000 and 0 <= y1 < y2 <= 1500
        assert detection["class"] == "Disc space narrowing"


def test_annotated_image_is_bounded(stack, mono1_j2k: bytes) -> None:
    body = upload(stack.gateway, mono1_j2k).json()
    png = base64.b64decode(body["annotated_image"].split(",", 1)[1])
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert max(image.shape[:2]) <= 1024
    assert image.shape[2] == 3


def test_health_reports_every_service(stack) -> None:
    body = httpx.get(f"{stack.gateway}/health", timeout=10).json()
    assert body["status"] == "healthy"
    assert body["models_loaded"] is True
    assert body["device"] == "cpu"
    assert body["timestamp"].endswith("Z")
    assert body["services"]["classifier"]["ready"] and body["services"]["detector"]["ready"]
    assert body["decodable_transfer_syntaxes"]
    assert httpx.get(f"{stack.gateway}/readyz", timeout=10).status_code == 200


def test_request_id_is_passed_through(stack, mono1_j2k: bytes) -> None:
    response = httpx.post(
        f"{stack.gateway}/upload", files={"file": ("x.dcm", mono1_j2k)},
        headers={"X-Request-ID": "trace-abc-123"}, params={"annotate": "false"}, timeout=60,
    )
    assert response.headers["X-Request-ID"] == "trace-abc-123"
    assert response.json()["request_id"] == "trace-abc-123"
    assert "trace-abc-123" in stack.services["classifier"].log_text() + stack.services["gateway"].log_text()


@pytest.mark.parametrize(
    ("name", "payload", "status"),
    [
        ("random bytes", np.random.default_rng(0).bytes(5000), 400),
        ("png", cv2.imencode(".png", np.zeros((32, 32), np.uint8))[1].tobytes(), 400),
        ("html", b"<html><body>not an image</body></html>", 400),
        ("empty", b"", 400),
    ],
)
def test_bad_files_get_a_clear_4xx(stack, name: str, payload: bytes, status: int) -> None:
    response = upload(stack.gateway, payload)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == "error" and len(body["message"]) > 10


def test_truncated_dicom_is_refused(stack, mono1_j2k: bytes) -> None:
    response = upload(stack.gateway, mono1_j2k[: len(mono1_j2k) // 2])
    assert response.status_code in (400, 422), response.text
    assert response.json()["status"] == "error"


def test_missing_file_field_and_wrong_content_type(stack) -> None:
    response = httpx.post(f"{stack.gateway}/upload", files={"other": ("x", b"abc")}, timeout=10)
    assert response.status_code == 400 and "file" in response.json()["message"]
    response = httpx.post(f"{stack.gateway}/upload", content=b"abc", timeout=10)
    assert response.status_code == 415 and response.json()["status"] == "error"


def test_too_large_upload_gets_413(stack) -> None:
    big = b"\0" * (9 * 1024 * 1024)  # the stack's limit is 8 MB
    response = upload(stack.gateway, big)
    assert response.status_code == 413
    assert "limit" in response.json()["message"]


def test_too_large_streamed_upload_gets_413(stack) -> None:
    """No Content-Length (chunked): the gateway still stops reading past the limit."""

    def body():
        yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\n\r\n"
        for _ in range(20):
            yield b"\0" * (1024 * 1024)
        yield b"\r\n--b--\r\n"

    response = httpx.post(
        f"{stack.gateway}/upload", content=body(),
        headers={"Content-Type": "multipart/form-data; boundary=b"}, timeout=30,
    )
    assert response.status_code == 413


def test_service_stays_healthy_after_bad_input(stack, mono1_j2k: bytes) -> None:
    for payload in (b"", b"DICM" * 100, mono1_j2k[:1000]):
        upload(stack.gateway, payload)
    assert upload(stack.gateway, mono1_j2k, annotate="false").status_code == 200


def test_openapi_types_every_route(stack) -> None:
    spec = httpx.get(f"{stack.gateway}/openapi.json", timeout=10).json()
    upload_op = spec["paths"]["/upload"]["post"]
    assert "multipart/form-data" in upload_op["requestBody"]["content"]
    assert upload_op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "UploadResponse"
    )
    for code in ("400", "413", "422", "503"):
        assert upload_op["responses"][code]["content"]["application/json"]["schema"]["$ref"].endswith(
            "ErrorResponse"
        )
    assert spec["paths"]["/health"]["get"]["responses"]["200"]["content"]["application/json"][
        "schema"
    ]["$ref"].endswith("HealthResponse")
    assert httpx.get(f"{stack.gateway}/docs", timeout=10).status_code == 200
