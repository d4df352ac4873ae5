"""``spine export-triton``: a bundle as a Triton model repository that answers as we do.

Writes ``REPO/spine-classifier`` and ``REPO/spine-detector``, each a Python-backend model:
``config.pbtxt`` (our tensor names, datatypes and shapes from :mod:`shared.contract`,
``max_batch_size`` / ``dynamic_batching`` from our batching settings, the instance kind,
the bundle facts as ``parameters``) and ``1/`` with ``model.py``, ``spine_runtime.py``
(numpy: resize, letterbox, vote, NMS), ``runtime.json`` and one ONNX file per network.

The networks are loaded with our services' own loaders (strict checkpoint load, sha256
pins) and exported with our services' exporter; each graph also holds what can be
expressed on a fixed-size tensor (3-channel normalisation and sigmoid/softmax for a
member, the grey-to-3-channel copy for YOLO), so the numpy side stays small. Every graph
is checked against the torch module on fresh random inputs before it is written; a
graph that does not match is an :class:`ExportError`, never a repository.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from classifier_service.checkpoints import load_classifier
from classifier_service.ensemble import (
    PROBABILITY_ATOL,
    normalise,
    probability_from_logits,
    resize_square,
    to_device_batch,
)
from classifier_service.ensemble import check_images as classifier_check_images
from detector_service.yolo import (
    RawOutput,
    letterbox_batch,
    load_yolo,
    reset_anchor_cache,
)
from detector_service.yolo import check_images as detector_check_images
from model_server.onnx_runtime import create_session, export_onnx, max_abs_diff
from shared import contract
from shared.bundle import BundleManifest, MemberSpec, check_pins, load_manifest, resolve_checkpoint
from shared.settings import ModelServerSettings

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
VERSION = "1"
RUNTIME_FILE = "runtime.json"
# The raw YOLO predictions (box centres and sizes in input pixels, class scores) must
# agree as closely as our services demand of their own ONNX export (OnnxOptions).
DETECTOR_RTOL = 1e-3
DETECTOR_ATOL = 1e-3
TRITON_TYPES = {"UINT8": "TYPE_UINT8", "FP32": "TYPE_FP32", "INT32": "TYPE_INT32",
                "BOOL": "TYPE_BOOL"}


class ExportError(RuntimeError):
    """The bundle cannot be exported faithfully (a graph that does not match torch)."""


@dataclass(frozen=True)
class ExportOptions:
    """How the repository serves: batching limits, instances, threads, opset."""

    max_batch_size: int = 8
    max_delay_ms: float = 5.0
    max_queue_size: int = 64
    instance_kind: str = "cpu"  # cpu | gpu (KIND_CPU | KIND_GPU)
    instances: int = 1
    threads: int = 0  # ONNX Runtime intra-op threads per session; 0 = its default
    opset: int = 18
    letterbox: str = "rect"  # DETECTOR_LETTERBOX: rect (minimal stride rectangle) | square

    @classmethod
    def from_settings(cls, settings: ModelServerSettings, **overrides: object) -> ExportOptions:
        """Our services' own batching limits (MAX_BATCH_SIZE, MAX_DELAY_MS, MAX_QUEUE_SIZE)."""
        values: dict[str, object] = {
            "max_batch_size": settings.max_batch_size,
            "max_delay_ms": settings.max_delay_ms,
            "max_queue_size": settings.max_queue_size,
            "threads": settings.ort_threads or settings.torch_threads,
            "opset": settings.onnx_opset,
            "letterbox": settings.detector_letterbox,
        }
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)  # type: ignore[arg-type]

    @property
    def device(self) -> str:
        return "cuda" if self.instance_kind == "gpu" else "cpu"


@dataclass(frozen=True)
class ExportReport:
    """What was written, for the command's output and the tests."""

    repo: Path
    models: dict[str, Path]
    max_abs_diff: dict[str, float]
    seconds: float


class MemberGraph(nn.Module):
    """A member as served: resized grey ``[N,1,S,S]`` in [0,1] -> P(Abnormal) ``[N]``."""

    def __init__(self, network: nn.Module, spec: MemberSpec) -> None:
        super().__init__()
        self.network = network
        self.mean = tuple(spec.mean)
        self.std = tuple(spec.std)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return probability_from_logits(self.network(normalise(batch, self.mean, self.std)))


class GreyYolo(nn.Module):
    """YOLO as served: letterboxed grey ``[N,1,S,S]`` -> decoded predictions (RawOutput)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.raw = RawOutput(network)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.raw(batch.expand(-1, 3, -1, -1))


def _pbtxt_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _tensor(spec: contract.TensorSpec, *, columns: int | None = None, ragged: bool = False) -> str:
    dims = list(spec.shape[1:])  # the batch axis is Triton's (max_batch_size > 0)
    if columns is not None:
        dims[-1] = columns
    lines = [
        f"    name: {_pbtxt_string(spec.name)}",
        f"    data_type: {TRITON_TYPES[spec.datatype]}",
        f"    dims: [ {', '.join(str(d) for d in dims)} ]",
    ]
    if ragged:  # images of different sizes share one dynamic batch (model.py resizes each)
        lines.append("    allow_ragged_batch: true")
    return "  {\n" + "\n".join(lines) + "\n  }"


def config_pbtxt(
    name: str,
    outputs: list[str],
    parameters: dict[str, dict[str, str]],
    options: ExportOptions,
) -> str:
    """The model configuration in protobuf text format."""
    kind = "KIND_GPU" if options.instance_kind == "gpu" else "KIND_CPU"
    params = "\n".join(
        f"parameters {{\n  key: {_pbtxt_string(key)}\n"
        f"  value: {{ string_value: {_pbtxt_string(value['string_value'])} }}\n}}"
        for key, value in sorted(parameters.items())
    )
    output_block = ",\n".join(outputs)
    return (
        f"# Written by `spine export-triton`; the parameters are the bundle facts.\n"
        f"name: {_pbtxt_string(name)}\n"
        f'backend: "python"\n'
        f"max_batch_size: {options.max_batch_size}\n"
        f"input [\n{_tensor(contract.IMAGE, ragged=True)}\n]\n"
        f"output [\n{output_block}\n]\n"
        f"dynamic_batching {{\n"
        f"  max_queue_delay_microseconds: {round(options.max_delay_ms * 1000)}\n"
        f"  default_queue_policy {{ max_queue_size: {options.max_queue_size} }}\n"
        f"}}\n"
        f"instance_group [\n  {{ count: {options.instances} kind: {kind} }}\n]\n"
        f"{params}\n"
    )


def _export_checked(
    module: nn.Module, checks: list[torch.Tensor], path: Path, options: ExportOptions,
    *, rtol: float, atol: float, spatial_dynamic: bool = False,
) -> float:
    """Export ``module`` to ``path`` (traced on the first check batch) and prove ONNX
    Runtime answers as torch does on every check batch (a second input shape proves
    dynamic height and width)."""
    module = module.eval()
    export_onnx(module, checks[0][:1], path, options.opset, spatial_dynamic)
    session = create_session(path.read_bytes(), options.threads)
    worst = 0.0
    for check in checks:
        with torch.no_grad():
            expected = module(check).float().numpy()
        try:
            actual = session.run(None, {session.get_inputs()[0].name: check.numpy()})[0]
            worst = max(worst, max_abs_diff(expected, actual, rtol, atol))
        except Exception as exc:
            raise ExportError(f"{path.name} at {list(check.shape)}: {exc}") from exc
    return worst


def _write_version(folder: Path, runtime: dict[str, object]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(HERE / "triton_model.py", folder / "model.py")
    shutil.copyfile(HERE / "spine_runtime.py", folder / "spine_runtime.py")
    (folder / RUNTIME_FILE).write_text(json.dumps(runtime, indent=2, sort_keys=True) + "\n")


def export_classifier(
    manifest: BundleManifest, model_dir: Path, out: Path, options: ExportOptions
) -> tuple[contract.ClassifierFacts, float]:
    """``out/spine-classifier``: one probability graph per member, the vote in numpy."""
    spec = manifest.classifier
    version = out / VERSION
    version.mkdir(parents=True)
    members, checkpoints, worst = [], {}, 0.0
    images = to_device_batch(classifier_check_images(), torch.device("cpu"))
    for index, member in enumerate(spec.members):
        field = f"classifier.members[{index}].checkpoint"
        path = resolve_checkpoint(model_dir, member.checkpoint, field)
        sha256, trusted = check_pins(path, member, field)
        network = load_classifier(path, member.arch, member.num_classes, trusted=trusted)
        file = f"member{index}-{member.name}.onnx"
        with torch.no_grad():
            check = resize_square(images, member.input_size)
        worst = max(worst, _export_checked(
            MemberGraph(network, member), [check], version / file, options,
            rtol=0.0, atol=PROBABILITY_ATOL,
        ))
        members.append({"name": member.name, "file": file, "input_size": member.input_size})
        checkpoints[member.checkpoint] = sha256
    facts = contract.ClassifierFacts(
        name=manifest.name, kind=manifest.kind, checkpoints=checkpoints, device=options.device,
        threshold=spec.threshold, members=[m.name for m in spec.members],
        weights=[m.weight for m in spec.members],
        backends={m.name: "onnx" for m in spec.members},
    )
    _write_version(version, {
        "model": "classifier", "members": members, "weights": facts.weights,
        "threshold": spec.threshold, "threads": options.threads, "kind": options.instance_kind,
    })
    outputs = [
        _tensor(contract.ABNORMAL_PROBABILITY),
        _tensor(contract.MEMBER_PROBABILITIES, columns=len(spec.members)),
        _tensor(contract.ABNORMAL),
    ]
    (out / "config.pbtxt").write_text(
        config_pbtxt(contract.CLASSIFIER_MODEL, outputs, facts.to_config_parameters(), options)
    )
    return facts, worst


def export_detector(
    manifest: BundleManifest, model_dir: Path, out: Path, options: ExportOptions
) -> tuple[contract.DetectorFacts, float]:
    """``out/spine-detector``: the fused YOLO graph; letterbox and NMS in numpy."""
    spec = manifest.detector
    version = out / VERSION
    version.mkdir(parents=True)
    path = resolve_checkpoint(model_dir, spec.checkpoint, "detector.checkpoint")
    sha256, trusted = check_pins(path, spec, "detector.checkpoint")
    network, class_names = load_yolo(path, trusted=trusted)
    end2end = bool(getattr(network, "end2end", False))
    network = network.float()
    if hasattr(network, "fuse"):
        network = network.fuse(verbose=False)  # conv+bn folded, as our detector serves it
    reset_anchor_cache(network)
    stride = max(int(torch.as_tensor(network.stride).max()), 1) if options.letterbox == "rect" \
        else None
    portrait, landscape = detector_check_images()
    cpu = torch.device("cpu")
    if stride is None:
        checks = [letterbox_batch([portrait, landscape], spec.image_size, cpu)[0]]
    else:  # one rectangle per batch: the image and its mirror; then another rectangle
        checks = [
            letterbox_batch([portrait, portrait[:, ::-1].copy()], spec.image_size, cpu, stride)[0],
            letterbox_batch([landscape], spec.image_size, cpu, stride)[0],
        ]
    file = f"detector-{Path(spec.checkpoint).stem}.onnx"
    diff = _export_checked(
        GreyYolo(network), [check[:, :1].contiguous() for check in checks], version / file,
        options, rtol=DETECTOR_RTOL, atol=DETECTOR_ATOL, spatial_dynamic=stride is not None,
    )
    facts = contract.DetectorFacts(
        name=manifest.name, kind=manifest.kind, checkpoints={spec.checkpoint: sha256},
        device=options.device, class_names=dict(sorted(class_names.items())), conf=spec.conf,
        iou=spec.iou, max_det=spec.max_det, image_size=spec.image_size, backend="onnx",
    )
    _write_version(version, {
        "model": "detector", "file": file, "image_size": spec.image_size, "conf": spec.conf,
        "iou": spec.iou, "max_det": spec.max_det, "end2end": end2end, "stride": stride,
        "threads": options.threads, "kind": options.instance_kind,
    })
    outputs = [_tensor(item) for item in contract.DETECTOR_OUTPUTS]
    (out / "config.pbtxt").write_text(
        config_pbtxt(contract.DETECTOR_MODEL, outputs, facts.to_config_parameters(), options)
    )
    return facts, diff


def export_repository(model_dir: Path, repo: Path, options: ExportOptions) -> ExportReport:
    """Both models into ``repo`` (created if absent); each model folder replaced whole.

    Built in a staging folder beside ``repo`` and moved into place only when both models
    exported and matched, so a failed export never leaves a half-written model behind.
    """
    started = time.perf_counter()
    manifest = load_manifest(model_dir)
    repo.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=repo))
    try:
        classifier_dir = staging / contract.CLASSIFIER_MODEL
        detector_dir = staging / contract.DETECTOR_MODEL
        _, classifier_diff = export_classifier(manifest, model_dir, classifier_dir, options)
        _, detector_diff = export_detector(manifest, model_dir, detector_dir, options)
        models = {}
        for built in (classifier_dir, detector_dir):
            target = repo / built.name
            if target.exists():
                shutil.rmtree(target)
            built.rename(target)
            models[built.name] = target
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportReport(
        repo, models,
        {contract.CLASSIFIER_MODEL: classifier_diff, contract.DETECTOR_MODEL: detector_diff},
        time.perf_counter() - started,
    )


def onnx_digests(repo: Path) -> dict[str, str]:
    """sha256 of every exported graph (``model/1/file``), for the log and the tests."""
    return {
        str(path.relative_to(repo)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(repo.glob(f"*/{VERSION}/*.onnx"))
    }

