"""The compute ceiling: what the machine's cores could serve if nothing but the work ran.

    python -m bench.ceiling --model-dir DIR [--rounds 3] [--image-size 2455x1606]

On the bench's own uploads (same generator, same seeds) and the same bundle, in one
thread: each model service's whole graph at batch 1 with ONNX Runtime (the graph our
services cached and Triton is exported with: resize or letterbox, networks, vote or NMS)
on the canonical image, and the same steps by the torch path (eager PyTorch); the decode
of each upload to the canonical image (``shared.dicom.decode_dicom``); and the annotated
PNG our gateway draws. The ceiling is ``cores / (decode + render + classifier graph +
detector graph)`` in CPU-seconds per image with ONNX Runtime (what ``spine serve`` runs
on CPU): the most any layout of this work on these cores can reach. Every figure is CPU
time (``time.process_time``), not wall time: OpenJPEG decodes one JPEG 2000 image on
several threads, so its wall time is about half its CPU time on 2 cores, and a
wall-clock ceiling would promise more than the cores hold (the decode's wall time is kept
beside it, for reading the stage columns).
Prints one JSON object; ``bench.runner`` runs it in a child process (its own thread
settings) between starting the systems and loading them.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from shared.paths import prepare_ultralytics_env
from shared.settings import GatewaySettings, ModelServerSettings

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

@dataclass
class Ceiling:
    """Per-image single-thread milliseconds and the throughput they imply."""

    cores: int
    decode_ms: float  # CPU ms, all of the decoder's threads
    render_ms: float
    onnx_ms: dict[str, float] = field(default_factory=dict)
    torch_ms: dict[str, float] = field(default_factory=dict)
    detector_input: str = ""
    decode_wall_ms: float | None = None  # the same decodes by the wall clock

    @property
    def per_image_ms(self) -> float:
        """CPU milliseconds per image as our CPU stack does it (ONNX Runtime networks)."""
        return self.decode_ms + self.render_ms + sum(self.onnx_ms.values())

    @property
    def images_per_s(self) -> float:
        return self.cores * 1000.0 / self.per_image_ms

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "per_image_ms": self.per_image_ms,
                "images_per_s": self.images_per_s}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Ceiling:
        keys = ("cores", "decode_ms", "render_ms", "onnx_ms", "torch_ms", "detector_input",
                "decode_wall_ms")
        return cls(**{key: data[key] for key in keys if key in data})  # type: ignore[arg-type]


def cpu_and_wall_ms(work: Callable[[], object], rounds: int) -> tuple[float, float]:
    """Median CPU milliseconds (every thread of this process) and median wall milliseconds
    of ``rounds`` runs of ``work``, after one unmeasured warm-up run."""
    work()  # warm-up (allocations, ONNX Runtime's first-run planning)
    cpu, wall = [], []
    for _ in range(rounds):
        started_cpu, started_wall = time.process_time(), time.perf_counter()
        work()
        cpu.append((time.process_time() - started_cpu) * 1000)
        wall.append((time.perf_counter() - started_wall) * 1000)
    return statistics.median(cpu), statistics.median(wall)


def _median_ms(work: Callable[[], object], rounds: int) -> float:
    """Median CPU milliseconds of ``work`` (what the ceiling adds up)."""
    return cpu_and_wall_ms(work, rounds)[0]


def annotated_png(pixels: np.ndarray, boxes: int = 3) -> str:
    """What the gateway's ``annotate`` does per upload (bench may not import the gateway):
    grey to BGR, a few boxes with labels, PNG at zlib level 1, base64."""
    import cv2

    height, width = pixels.shape
    canvas = cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
    for index in range(boxes):
        top_left = (width // 4 + 20 * index, height // 4 + 20 * index)
        bottom_right = (width // 2 + 20 * index, height // 2 + 20 * index)
        cv2.rectangle(canvas, top_left, bottom_right, (0, 140, 255), 3)
        cv2.putText(canvas, "finding 0.60", top_left, cv2.FONT_HERSHEY_SIMPLEX, 1.2,
                    (0, 140, 255), 1, cv2.LINE_AA)
    ok, encoded = cv2.imencode(".png", canvas, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return base64.b64encode(encoded.tobytes()).decode("ascii")


def _graphs(model_dir: Path, settings: ModelServerSettings) -> dict[str, object]:
    """The services' cached graphs (exported now if missing), each in a one-thread
    session: ``{"classifier": runner, "detector": runner}``."""
    from classifier_service.model import ClassifierModel
    from detector_service.model import DetectorModel

    runners = {}
    for label, model_type in (("classifier", ClassifierModel), ("detector", DetectorModel)):
        model = model_type(model_dir, "cpu", 1, settings=settings)
        runners[label] = model.graph_runner(model.graph_entry())
    return runners


def measure(model_dir: Path, rows: int, cols: int, kinds: tuple[str, ...],
            rounds: int, gateway: GatewaySettings, models: ModelServerSettings) -> Ceiling:
    """``gateway`` (the canonical size) and ``models`` (graph cache, letterbox): the
    settings our services would read from this environment."""
    import torch

    torch.set_num_threads(1)
    from bench.dicoms import bench_uploads
    from classifier_service.ensemble import Ensemble
    from detector_service.letterbox import letterbox_shape
    from detector_service.yolo import detect, load_yolo, reset_anchor_cache
    from shared.bundle import check_pins, load_manifest, resolve_checkpoint
    from shared.dicom import decode_dicom

    settings = models.model_copy(update={"model_backend": "onnx", "ort_threads": 1})
    manifest = load_manifest(model_dir)
    uploads = bench_uploads(rows, cols, kinds)
    cpu = torch.device("cpu")
    decodes = [
        cpu_and_wall_ms(lambda u=u: decode_dicom(u.data, gateway.canonical_long_side), rounds)
        for u in uploads
    ]
    decode_ms = statistics.mean(cpu for cpu, _ in decodes)
    canonical = decode_dicom(uploads[0].data, gateway.canonical_long_side)[0].pixels
    height, width = canonical.shape
    render_ms = _median_ms(lambda: annotated_png(canonical), rounds)
    ceiling = Ceiling(os.cpu_count() or 1, decode_ms, render_ms,
                      decode_wall_ms=statistics.mean(wall for _, wall in decodes))
    members = ", ".join(f"{m.arch}@{m.input_size}" for m in manifest.classifier.members)
    spec = manifest.detector
    rect = settings.detector_letterbox == "rect"  # what the detector service does
    shape = letterbox_shape(height, width, spec.image_size, 32 if rect else None)
    labels = {"classifier": f"classifier graph ({members})",
              "detector": f"detector graph @{shape[0]}x{shape[1]}"}
    ceiling.detector_input = f"{width}x{height} canonical -> {labels['detector']}"
    for name, runner in _graphs(model_dir, settings).items():
        ceiling.onnx_ms[labels[name]] = _median_ms(
            lambda r=runner: r.run([canonical]), rounds  # type: ignore[attr-defined]
        )
    with torch.inference_mode():
        ensemble = Ensemble(manifest.classifier, model_dir, cpu, precision="fp32")
        ceiling.torch_ms[labels["classifier"]] = _median_ms(
            lambda e=ensemble: e.predict([canonical]), rounds
        )
        path = resolve_checkpoint(model_dir, spec.checkpoint)
        network, _ = load_yolo(path, trusted=check_pins(path, spec)[1])
        network = network.float().fuse(verbose=False) if hasattr(network, "fuse") else network
        reset_anchor_cache(network)
        stride = max(int(torch.as_tensor(network.stride).max()), 1) if rect else None
        ceiling.torch_ms[labels["detector"]] = _median_ms(
            lambda: detect([canonical], network, spec=spec, stride=stride, device=cpu,
                           end2end=False), rounds
        )
    return ceiling


def main(argv: list[str] | None = None) -> int:
    for name in THREAD_VARIABLES:  # one thread, before numpy/torch start their pools
        os.environ[name] = "1"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--image-size", default="2455x1606", metavar="ROWSxCOLS")
    parser.add_argument("--inputs", default="j2k,raw")
    args = parser.parse_args(argv)
    rows, _, cols = args.image_size.partition("x")
    models = ModelServerSettings()  # this process's entry point: the services' settings
    prepare_ultralytics_env(models)
    ceiling = measure(args.model_dir, int(rows), int(cols), tuple(args.inputs.split(",")),
                      max(1, args.rounds), GatewaySettings(), models)
    print(json.dumps(ceiling.as_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
