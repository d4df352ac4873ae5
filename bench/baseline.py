"""The original system's request path, rebuilt as the benchmark's baseline.

    python -m bench.baseline --model-dir DIR [--mode faithful|equal-work] [--port 0]

``faithful`` follows ``shared/ORIGINAL_CODE.md`` ("What the original app does per
request"), step by step:

* Serving: "one gunicorn sync worker (``workers = 1``): one request at a time"; models on
  the CPU with ``torch.set_grad_enabled(False)``; "the upload is saved to a temporary file
  (``uploads/``), removed afterwards".
* "1. ``pydicom.dcmread(path)`` once as a readability check (header parse; pixels not
  decoded)."
* "2. ``validate_dicom``: ``dcmread`` again, header only. Refuses non-spine studies by
  keywords in BodyPartExamined + StudyDescription + SeriesDescription" (400).
* "3. ``ds.pixel_array`` decoded ONCE (pylibjpeg handler for JPEG 2000); MONOCHROME1
  inverted as ``max - x``; float64; negatives clipped; min-max to 0-255; uint8. No
  modality LUT, no VOI."
* "4. Classification: one torchvision ``Compose(Resize, ToTensor, Normalize(ImageNet))``
  built per request on a PIL RGB image (grey stacked x3); DenseNet121, ResNet50,
  EfficientNetV2-S one after another at batch 1 ...; sigmoid; weights ...; Abnormal iff
  score > 0.449; confidence = max(p, 1-p) * 100."
* "5. Detection ONLY when Abnormal: Ultralytics ``model(rgb_full_res, conf=0.25)``; if it
  finds nothing, once more at conf 0.15. Boxes drawn with ``cv2.rectangle`` +
  ``cv2.putText`` on the full-resolution RGB image, encoded with ``cv2.imencode('.png')``
  (zlib level 1), base64."
* "6. A full-resolution preview of the grey image, also ``cv2.imencode('.png')``, base64."
* "7. Errors inside the pipeline return 500 with the exception text."

Torch's thread count is the original's steady state: Ultralytics' first ``predict`` sets
it to ``cpu_count - 1`` for the process (a warm-up predict at start reaches that state).

One deliberate difference: the SAME bundle as our stack is served (its checkpoints,
weights, threshold, each member's ``input_size`` and the detector's ``image_size``), so
the networks do the same arithmetic on both sides; the original ran every member at 224
(a bundle whose members say 224 reproduces that exactly).

``equal-work`` is the same path with one change: the detector runs on EVERY image (once,
at the original's conf 0.25, no retry), and its annotated PNG is drawn for every image,
as our stack does. That is the like-for-like comparison; ``faithful`` is what the
original really spent per request (which depends on how many images are Abnormal).

Answers SEED.md's JSON plus ``timings_ms`` (decode, classify, detect, render, total) and
``baseline`` (mode, detector runs) so tests and reports see what was done.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
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

from shared.paths import keep_ultralytics_offline, prepare_ultralytics_env
from shared.settings import CommonSettings

FAITHFUL = "faithful"
EQUAL_WORK = "equal-work"
MODES = (FAITHFUL, EQUAL_WORK)
FIRST_CONF = 0.25  # the original's model(img, conf=0.25)
RETRY_CONF = 0.15  # ... and once more at 0.15 when the first run found nothing

NON_SPINE = (
    "CHEST", "LUNG", "BRAIN", "HEAD", "SKULL", "ABDOMEN", "PELVIS", "LEG", "ARM", "HAND",
    "FOOT", "KNEE", "SHOULDER", "ELBOW", "WRIST", "ANKLE", "CARDIAC", "HEART",
)
SPINE = (
    "SPINE", "VERTEBRA", "LUMBAR", "THORACIC", "CERVICAL", "SPINAL", "C-SPINE", "L-SPINE",
    "T-SPINE", "DORSAL", "SACRAL", "COCCYX",
)


class NotSpineError(ValueError):
    """The original's 400: the header names a non-spine body part."""


@dataclass
class _Member:
    name: str
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weight: float
    model: Any


def validate_header(ds: Any) -> None:
    """The original's keyword check on BodyPartExamined + StudyDescription +
    SeriesDescription: a spine keyword accepts, else a non-spine one refuses, else accept."""
    text = " ".join(
        str(ds.get(key, "") or "") for key in
        ("BodyPartExamined", "StudyDescription", "SeriesDescription")
    ).upper()
    if any(word in text for word in SPINE):
        return
    for word in NON_SPINE:
        if word in text:
            modality = str(ds.get("Modality", "") or "image")
            raise NotSpineError(
                f"This appears to be a {word.lower()} {modality} scan. This system only "
                "analyzes spine X-rays."
            )


def to_uint8(pixels: np.ndarray, photometric: str) -> np.ndarray:
    """MONOCHROME1 inverted as ``max - x``; float64; negatives clipped; min-max to uint8."""
    image = pixels.astype(np.float64)
    if photometric == "MONOCHROME1":
        image = image.max() - image
    image = np.clip(image, 0, None)
    low, high = image.min(), image.max()
    image = (image - low) / (high - low) * 255.0 if high > low else np.zeros_like(image)
    return image.astype(np.uint8)


def png_data_url(image: np.ndarray) -> str:
    """``cv2.imencode('.png')`` with OpenCV's default (zlib level 1), base64."""
    import cv2

    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError("cv2.imencode failed")
    return "data:image/png;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


def draw_boxes(rgb: np.ndarray, detections: list[dict[str, Any]]) -> np.ndarray:
    """``cv2.rectangle`` + ``cv2.putText`` per box on (a copy of) the full-size image."""
    import cv2

    canvas = rgb.copy()
    for det in detections:
        x1, y1, x2, y2 = (int(v) for v in det["bbox"])
        cv2.rectangle(canvas, (x1, y1), (x2, y2), (255, 0, 0), 3)
        label = f"{det['class']}: {det['confidence']:.2f}"
        cv2.putText(canvas, label, (x1, max(y1 - 10, 0)), cv2.FONT_HERSHEY_SIMPLEX, 0.9,
                    (255, 0, 0), 2)
    return canvas


class OriginalPipeline:
    """Models loaded once (the original loaded them on the first request and kept them);
    everything else per request."""

    def __init__(self, model_dir: Path, device: str = "cpu", mode: str = FAITHFUL) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        keep_ultralytics_offline()
        import torch
        from ultralytics import YOLO

        from classifier_service.checkpoints import load_classifier
        from shared.bundle import load_manifest, resolve_checkpoint

        torch.set_grad_enabled(False)
        self.torch = torch
        self.mode = mode
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
        self.image_size = manifest.detector.image_size
        self.yolo = YOLO(str(resolve_checkpoint(model_dir, manifest.detector.checkpoint)))
        # Ultralytics' first predict calls select_device("cpu"), which sets torch to
        # cpu_count - 1 threads (1 on 2 cores) for the rest of the process: the state the
        # original runs in after its first Abnormal upload. Reach it now, so both modes
        # (and any mix of Normal and Abnormal uploads) measure the same process state.
        self._predict(np.zeros((64, 64, 3), dtype=np.uint8), FIRST_CONF)
        self.uploads = Path(tempfile.mkdtemp(prefix="spine-baseline-uploads-"))

    def _classify(self, image: np.ndarray) -> tuple[dict[str, float], float]:
        from PIL import Image
        from torchvision import transforms

        rgb = Image.fromarray(np.stack([image] * 3, axis=-1))
        scores: dict[str, float] = {}
        for member in self.members:
            transform = transforms.Compose([
                transforms.Resize((member.size, member.size)),
                transforms.ToTensor(),
                transforms.Normalize(member.mean, member.std),
            ])
            batch = transform(rgb).unsqueeze(0).to(self.device)
            scores[member.name] = float(self.torch.sigmoid(member.model(batch))[0, 0])
        total = sum(m.weight for m in self.members)
        score = sum(scores[m.name] * m.weight for m in self.members) / total
        return scores, score

    def _predict(self, rgb: np.ndarray, conf: float) -> list[dict[str, Any]]:
        result = self.yolo(rgb, conf=conf, imgsz=self.image_size, device=str(self.device),
                           verbose=False)[0]
        boxes = result.boxes
        return [
            {"class": result.names[int(cls)], "confidence": float(score),
             "bbox": [float(v) for v in xyxy]}
            for xyxy, score, cls in zip(
                boxes.xyxy.tolist(), boxes.conf.tolist(), boxes.cls.tolist(), strict=True
            )
        ]

    def _detect(self, rgb: np.ndarray) -> tuple[list[dict[str, Any]], int]:
        """The detections and how many detector runs they took."""
        detections = self._predict(rgb, FIRST_CONF)
        if detections or self.mode == EQUAL_WORK:
            return detections, 1
        return self._predict(rgb, RETRY_CONF), 2

    def analyse(self, data: bytes) -> dict[str, Any]:
        import pydicom

        started = time.perf_counter()
        path = self.uploads / f"{os.getpid()}-{time.monotonic_ns()}.dcm"
        path.write_bytes(data)
        try:
            pydicom.dcmread(str(path), stop_before_pixels=True)  # 1. readability check
            validate_header(pydicom.dcmread(str(path), stop_before_pixels=True))  # 2.
            ds = pydicom.dcmread(str(path))  # 3. the one pixel decode
            image = to_uint8(ds.pixel_array, str(ds.get("PhotometricInterpretation", "")))
        finally:
            path.unlink(missing_ok=True)
        metadata = {
            "patient_id": str(ds.get("PatientID", "")),
            "study_date": str(ds.get("StudyDate", "")),
            "modality": str(ds.get("Modality", "")),
        }
        decoded = time.perf_counter()
        members, score = self._classify(image)
        abnormal = score > self.threshold
        classified = time.perf_counter()
        rgb = np.stack([image] * 3, axis=-1)
        detections: list[dict[str, Any]] = []
        runs = 0
        if abnormal or self.mode == EQUAL_WORK:
            detections, runs = self._detect(rgb)
        detected = time.perf_counter()
        annotated = png_data_url(draw_boxes(rgb, detections)) if runs else None
        preview = png_data_url(image)
        rendered = time.perf_counter()
        return {
            "status": "success",
            "diagnosis": "Abnormal" if abnormal else "Normal",
            "confidence": max(score, 1 - score) * 100,
            "ensemble_prediction": members,
            "detections": detections,
            "metadata": metadata,
            "annotated_image": annotated,
            "preview_image": preview,
            "baseline": {"mode": self.mode, "detector_runs": runs},
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
        self._send(200, {"status": "healthy", "models_loaded": True,
                         "mode": self.pipeline.mode})

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        try:
            data = file_from_multipart(body, self.headers.get("Content-Type", ""))
            answer = self.pipeline.analyse(data)
        except NotSpineError as exc:
            self._send(HTTPStatus.BAD_REQUEST, {"status": "error", "message": str(exc)})
            return
        except Exception as exc:  # noqa: BLE001 - the original answered 500 with the text
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
    parser.add_argument("--mode", default=FAITHFUL, choices=MODES)
    args = parser.parse_args(argv)
    prepare_ultralytics_env(CommonSettings())  # this process's entry point
    _Handler.pipeline = OriginalPipeline(args.model_dir, args.device, args.mode)
    server = _Server((args.host, args.port), _Handler)
    print(f"baseline ({args.mode}) listening on http://{args.host}:{server.server_address[1]}",
          flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
