"""The original system's serving, rebuilt faithfully as the benchmark's baseline.

    python -m bench.baseline --model-dir DIR [--port 0] [--device cpu]

What SEED.md's app did per request, in one process, one request at a time (a sync
single-worker server: the next upload waits in the listen backlog): save the upload
to a temporary file; read it three times with pydicom (validation, classification
image, detection image), each ``pixel_array`` + MONOCHROME1 inversion + min-max in
float; per member a torchvision ``Compose(Resize, ToTensor, Normalize)`` built for the
request on a PIL RGB image; members one after another at batch 1; then Ultralytics'
own ``YOLO.predict`` on the full-size image; then the full-size annotated image
(``Results.plot``) encoded as PNG by PIL and base64'd into the JSON.

The SAME bundle as our stack is used (checkpoints, each member's input size, detector
image size and thresholds), so only the serving differs. It answers SEED.md's JSON
plus ``timings_ms`` (decode, classify, detect, render, total) for the per-stage table.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from shared.paths import prepare_ultralytics_env


@dataclass
class _Member:
    name: str
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weight: float
    model: Any


class OriginalPipeline:
    """Models loaded once at start (as the original did); everything else per request."""

    def __init__(self, model_dir: Path, device: str = "cpu") -> None:
        prepare_ultralytics_env()
        import torch
        from ultralytics import YOLO

        from classifier_service.checkpoints import load_classifier
        from shared.bundle import load_manifest, resolve_checkpoint

        self.torch = torch
        self.device = torch.device(device)
        manifest = load_manifest(model_dir)
        self.threshold = manifest.classifier.threshold
        self.members = [
            _Member(
                spec.name, spec.input_size, spec.mean, spec.std, spec.weight,
                load_classifier(
                    resolve_checkpoint(model_dir, spec.checkpoint), spec.arch, spec.num_classes
                ).to(self.device).eval(),
            )
            for spec in manifest.classifier.members
        ]
        self.detector_spec = manifest.detector
        self.yolo = YOLO(str(resolve_checkpoint(model_dir, manifest.detector.checkpoint)))
        self.uploads = Path(tempfile.mkdtemp(prefix="spine-baseline-uploads-"))

    @staticmethod
    def _read_image(path: Path) -> np.ndarray:
        """pydicom ``pixel_array``, MONOCHROME1 inverted, float min-max to 8 bit."""
        import pydicom

        ds = pydicom.dcmread(str(path))
        pixels = ds.pixel_array.astype(np.float64)
        if ds.get("PhotometricInterpretation", "") == "MONOCHROME1":
            pixels = pixels.max() - pixels
        low, high = pixels.min(), pixels.max()
        pixels = (pixels - low) / (high - low) * 255.0 if high > low else np.zeros_like(pixels)
        return pixels.astype(np.uint8)

    def _validate(self, path: Path) -> dict[str, Any]:
        import pydicom

        ds = pydicom.dcmread(str(path))
        _ = ds.pixel_array  # the original's "is there an image" check decodes it
        return {
            "patient_id": str(ds.get("PatientID", "")),
            "study_date": str(ds.get("StudyDate", "")),
            "modality": str(ds.get("Modality", "")),
        }

    def _classify(self, image: np.ndarray) -> tuple[dict[str, float], float]:
        from PIL import Image
        from torchvision import transforms

        rgb = Image.fromarray(image).convert("RGB")
        scores: dict[str, float] = {}
        for member in self.members:
            transform = transforms.Compose([
                transforms.Resize((member.size, member.size)),
                transforms.ToTensor(),
                transforms.Normalize(member.mean, member.std),
            ])
            batch = transform(rgb).unsqueeze(0).to(self.device)
            with self.torch.no_grad():
                scores[member.name] = float(self.torch.sigmoid(member.model(batch))[0, 0])
        total = sum(m.weight for m in self.members)
        score = sum(scores[m.name] * m.weight for m in self.members) / total
        return scores, score

    def _detect(self, image: np.ndarray) -> tuple[Any, list[dict[str, Any]]]:
        import cv2

        spec = self.detector_spec
        results = self.yolo.predict(
            cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), imgsz=spec.image_size, conf=spec.conf,
            iou=spec.iou, max_det=spec.max_det, device=str(self.device), verbose=False,
        )
        result = results[0]
        boxes = result.boxes
        detections = [
            {
                "class": result.names[int(cls)], "confidence": float(conf),
                "bbox": [float(v) for v in xyxy],
            }
            for xyxy, conf, cls in zip(
                boxes.xyxy.tolist(), boxes.conf.tolist(), boxes.cls.tolist(), strict=True
            )
        ]
        return result, detections

    @staticmethod
    def _render(result: Any) -> str:
        from PIL import Image

        plotted = result.plot()  # full-size BGR with the boxes
        buffer = io.BytesIO()
        Image.fromarray(plotted[..., ::-1]).save(buffer, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")

    def analyse(self, data: bytes) -> dict[str, Any]:
        started = time.perf_counter()
        path = self.uploads / f"{os.getpid()}-{time.monotonic_ns()}.dcm"
        path.write_bytes(data)
        try:
            metadata = self._validate(path)
            image = self._read_image(path)  # for the classifiers
            detection_image = self._read_image(path)  # and again for the detector
        finally:
            path.unlink(missing_ok=True)
        decoded = time.perf_counter()
        members, score = self._classify(image)
        classified = time.perf_counter()
        result, detections = self._detect(detection_image)
        detected = time.perf_counter()
        annotated = self._render(result)
        rendered = time.perf_counter()
        abnormal = score > self.threshold
        return {
            "status": "success",
            "diagnosis": "Abnormal" if abnormal else "Normal",
            "confidence": score if abnormal else 1 - score,
            "ensemble_prediction": members,
            "detections": detections,
            "metadata": metadata,
            "annotated_image": annotated,
            "timings_ms": {
                "decode": (decoded - started) * 1000, "classify": (classified - decoded) * 1000,
                "detect": (detected - classified) * 1000, "render": (rendered - detected) * 1000,
                "total": (rendered - started) * 1000,
            },
        }


def file_from_multipart(body: bytes, content_type: str) -> bytes:
    """The ``file`` field of a multipart/form-data body (what Flask's ``request.files`` gives)."""
    marker = "boundary="
    if marker not in content_type:
        raise ValueError("not multipart/form-data")
    boundary = content_type.split(marker, 1)[1].split(";", 1)[0].strip().strip('"')
    for part in body.split(b"--" + boundary.encode()):
        head, sep, payload = part.partition(b"\r\n\r\n")
        if sep and b'name="file"' in head:
            return payload[:-2] if payload.endswith(b"\r\n") else payload
    raise ValueError("no file field")


class _Handler(BaseHTTPRequestHandler):
    pipeline: OriginalPipeline

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        pass

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self._send(200, {"status": "healthy", "models_loaded": True})

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        try:
            data = file_from_multipart(body, self.headers.get("Content-Type", ""))
            answer = self.pipeline.analyse(data)
        except Exception as exc:  # noqa: BLE001 - the original answered 500 with a message
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"status": "error", "message": str(exc)})
            return
        self._send(200, answer)


class _Server(HTTPServer):
    request_queue_size = 256  # queued uploads wait in the backlog, as behind one sync worker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    _Handler.pipeline = OriginalPipeline(args.model_dir, args.device)
    server = _Server((args.host, args.port), _Handler)
    print(f"baseline listening on http://{args.host}:{server.server_address[1]}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
