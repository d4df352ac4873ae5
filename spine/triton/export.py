"""``spine export-triton``: a bundle as a Triton model repository of our services' graphs.

Writes ``REPO/spine-classifier`` and ``REPO/spine-detector``, each ``config.pbtxt`` and
``1/model.onnx``: the very graph our model service serves on CPU (pre- and
post-processing inside: :mod:`classifier_service.graph`, :mod:`detector_service.graph`),
taken from the same signed cache, exported and checked against the torch path if it is
not there yet. Two flavours of the same graph (``--backend``):

- ``onnxruntime``: ``platform: "onnxruntime_onnx"``, Triton's C++ ONNX Runtime backend
  (no Python, no code of ours inside tritonserver): what a stock Triton install and
  KServe's Triton runtime serve;
- ``python``: ``backend: "python"`` with ``1/model.py``, a generic runner
  (:mod:`spine.triton.graph_model`) that only runs ``model.onnx`` with ONNX Runtime: what
  the nvidia-pytriton wheel's tritonserver can load (it ships no ONNX Runtime backend).

Both name our tensor names, datatypes and shapes (:mod:`shared.contract`),
``max_batch_size`` and ``dynamic_batching`` from our batching settings, the instance
kind, ONNX Runtime's thread settings, and the bundle facts and digest as ``parameters``
(what the gateway reads). A graph that does not match the torch path is an
:class:`ExportError`, never a repository.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from classifier_service.model import ClassifierModel
from detector_service.model import DetectorModel
from model_server.lifecycle import BundleModel, bundle_digest
from model_server.onnx_runtime import OnnxBackendError
from shared import contract
from shared.settings import ModelServerSettings

VERSION = "1"
MODEL_FILE = "model.onnx"
PLATFORM = "onnxruntime_onnx"
BUNDLE_DIGEST = "bundle_digest"
BACKENDS = ("onnxruntime", "python")  # the flavours: config's backend of the same graph
PYTHON_MODEL = Path(__file__).with_name("graph_model.py")  # the python flavour's model.py


class ExportError(RuntimeError):
    """The bundle cannot be exported faithfully (a graph that does not match torch)."""


@dataclass(frozen=True)
class ExportOptions:
    """How the repository serves: flavour, batching limits, instances, threads, opset,
    letterbox."""

    max_batch_size: int = 8
    max_delay_ms: float = 5.0
    max_queue_size: int = 64
    instance_kind: str = "cpu"  # cpu | gpu (KIND_CPU | KIND_GPU)
    instances: int = 1
    threads: int = 0  # ONNX Runtime intra-op threads per session; 0 = its default
    opset: int = 18
    letterbox: str = "rect"  # DETECTOR_LETTERBOX: rect (minimal stride rectangle) | square
    backend: str = "onnxruntime"  # onnxruntime (Triton's C++ backend) | python (model.py)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend {self.backend!r}: one of {', '.join(BACKENDS)}")
        if self.backend == "python" and self.instance_kind == "gpu":
            raise ValueError("the python flavour runs ONNX Runtime on CPU: export KIND_GPU "
                             "models with --backend onnxruntime")

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

    def service_settings(self, base: ModelServerSettings) -> ModelServerSettings:
        """The settings under which our service exports the same graph."""
        return base.model_copy(update={
            "model_backend": "onnx", "onnx_opset": self.opset, "ort_threads": self.threads,
            "detector_letterbox": self.letterbox,
        })


@dataclass(frozen=True)
class ExportReport:
    """What was written, for the command's output and the tests."""

    repo: Path
    models: dict[str, Path]
    parity: dict[str, dict[str, Any]]
    seconds: float


def _pbtxt_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _tensor(entry: dict[str, Any]) -> str:
    return (
        f"  {{\n    name: {_pbtxt_string(entry['name'])}\n"
        f"    data_type: {entry['data_type']}\n"
        f"    dims: [ {', '.join(str(d) for d in entry['dims'])} ]\n  }}"
    )


def runtime_parameters(options: ExportOptions) -> dict[str, str]:
    """ONNX Runtime backend settings, as our services' sessions: ``threads`` intra-op
    threads (0: its default), one inter-op thread, sequential execution."""
    return {"intra_op_thread_count": str(options.threads), "inter_op_thread_count": "1",
            "execution_mode": "0"}


def model_config(
    model: BundleModel, facts: contract.ServedFacts, options: ExportOptions
) -> dict[str, Any]:
    """The model configuration (Triton's JSON form): tensors, batching, parameters."""
    parameters = {
        **facts.to_config_parameters(),
        BUNDLE_DIGEST: {"string_value": bundle_digest(facts)},
        **{key: {"string_value": value} for key, value in runtime_parameters(options).items()},
    }
    python = options.backend == "python"
    return contract.model_configuration(
        model.name, inputs=[contract.IMAGE.metadata()], outputs=model.output_specs(),
        parameters=parameters,
        max_batch_size=options.max_batch_size,
        max_queue_delay_us=round(options.max_delay_ms * 1000),
        instance_kind="KIND_GPU" if options.instance_kind == "gpu" else "KIND_CPU",
        platform="" if python else PLATFORM, backend=options.backend,
    )


def config_pbtxt(config: dict[str, Any], options: ExportOptions) -> str:
    """:func:`model_config` in protobuf text format (``config.pbtxt``)."""
    params = "\n".join(
        f"parameters {{\n  key: {_pbtxt_string(key)}\n"
        f"  value: {{ string_value: {_pbtxt_string(value['string_value'])} }}\n}}"
        for key, value in sorted(config["parameters"].items())
    )
    kind = config["instance_group"][0]["kind"]
    runs = (f"platform: {_pbtxt_string(config['platform'])}" if config["platform"]
            else f"backend: {_pbtxt_string(config['backend'])}")
    inputs = ",\n".join(_tensor(entry) for entry in config["input"])
    outputs = ",\n".join(_tensor(entry) for entry in config["output"])
    return (
        f"# Written by `spine export-triton`; the parameters are the bundle facts and\n"
        f"# ONNX Runtime's settings. The graph holds pre- and post-processing.\n"
        f"name: {_pbtxt_string(config['name'])}\n"
        f"{runs}\n"
        f"max_batch_size: {config['max_batch_size']}\n"
        f"input [\n{inputs}\n]\n"
        f"output [\n{outputs}\n]\n"
        f"dynamic_batching {{\n"
        f"  max_queue_delay_microseconds: "
        f"{config['dynamic_batching']['max_queue_delay_microseconds']}\n"
        f"  default_queue_policy {{ max_queue_size: {options.max_queue_size} }}\n"
        f"}}\n"
        f"instance_group [\n  {{ count: {options.instances} kind: {kind} }}\n]\n"
        f"{params}\n"
    )


def export_model(model: BundleModel, out: Path, options: ExportOptions) -> dict[str, Any]:
    """``out/config.pbtxt`` and ``out/1/model.onnx`` for ``model``; its parity figures."""
    try:
        entry = model.graph_entry()
    except OnnxBackendError as exc:
        raise ExportError(f"{model.name}: {exc}") from exc
    facts = model.graph_facts(options.device, entry)
    (out / VERSION).mkdir(parents=True)
    (out / VERSION / MODEL_FILE).write_bytes(entry.data)
    if options.backend == "python":
        shutil.copyfile(PYTHON_MODEL, out / VERSION / "model.py")
    (out / "config.pbtxt").write_text(config_pbtxt(model_config(model, facts, options), options))
    return {**entry.record.get("parity", {}), BUNDLE_DIGEST: bundle_digest(facts)}


def export_repository(
    model_dir: Path, repo: Path, options: ExportOptions, settings: ModelServerSettings
) -> ExportReport:
    """Both models into ``repo`` (created if absent); each model folder replaced whole.

    Built in a staging folder beside ``repo`` and moved into place only when both models
    exported and matched, so a failed export never leaves a half-written model behind.
    """
    started = time.perf_counter()
    service = options.service_settings(settings)
    repo.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=repo))
    parity, models = {}, {}
    try:
        for model_type in (ClassifierModel, DetectorModel):
            model = model_type(model_dir, "cpu", options.threads, settings=service)
            parity[model.name] = export_model(model, staging / model.name, options)
        for name in parity:
            target = repo / name
            if target.exists():
                shutil.rmtree(target)
            (staging / name).rename(target)
            models[name] = target
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportReport(repo, models, parity, time.perf_counter() - started)


def onnx_digests(repo: Path) -> dict[str, str]:
    """sha256 of every exported graph (``model/1/model.onnx``), for the log and the tests."""
    return {
        str(path.relative_to(repo)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(repo.glob(f"*/{VERSION}/*.onnx"))
    }
