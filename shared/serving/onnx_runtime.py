"""ONNX Runtime for the model services on CPU: export once, cache, verify, then serve.

Why: on a small CPU, eager PyTorch spends about twice as long per image as ONNX Runtime
on the same graph (fused conv+bn+activation kernels, no per-op Python dispatch), and the
issue's CPU target needs that factor. The ONNX file is exported from the very module
loaded from the bundle's checkpoint, cached under ``$SPINE_CACHE_DIR/onnx`` keyed by the
checkpoint's sha256, the input size and the opset, and its outputs are compared with
PyTorch's on every load (a batch of 2, which also proves the dynamic batch axis). A file
that fails to export, to load or to match is never served: the caller keeps PyTorch.

Model services only (imports torch and onnxruntime); the gateway never imports this.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from shared.filelock import file_lock
from shared.paths import cache_root
from shared.settings import Settings

log = logging.getLogger(__name__)

# Bump when the exported graph changes for the same checkpoint (wrapper, exporter
# options): old cache entries are then simply not found again.
EXPORT_FORMAT = 1
INPUT_NAME = "input"
OUTPUT_NAME = "output"


class OnnxBackendError(RuntimeError):
    """The ONNX path cannot serve this model (export, load or equality check failed)."""


@dataclass(frozen=True)
class OnnxOptions:
    """Where exports live, which opset, how many threads, how close is equal."""

    cache_dir: Path
    opset: int = 18
    threads: int = 0  # intra-op threads; 0 = ONNX Runtime's default (all physical cores)
    rtol: float = 1e-3
    atol: float = 1e-3


@dataclass(frozen=True)
class OnnxLoadReport:
    """What ``load_or_export`` did, for the log and the tests."""

    path: Path
    exported: bool
    max_abs_diff: float
    seconds: float


def onnx_cache_dir(settings: Settings) -> Path:
    """``<cache root>/onnx`` (the one cache root: :func:`shared.paths.cache_root`)."""
    return cache_root(settings) / "onnx"


def cache_path(cache_dir: Path, name: str, sha256: str, input_size: int, opset: int) -> Path:
    """One file per (checkpoint sha256, input size, opset); ``name`` only helps a human."""
    key = hashlib.sha256(f"{sha256}:{input_size}:{opset}:{EXPORT_FORMAT}".encode()).hexdigest()
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:48]
    return cache_dir / f"{safe}-{input_size}px-opset{opset}-{key[:24]}.onnx"


def export_onnx(module: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    """Export ``module`` (one tensor in, one out) with a dynamic batch axis, atomically.

    The TorchScript exporter is used first: one self-contained file in a few seconds. The
    dynamo exporter (slower, needs onnxscript) is the fallback for graphs it cannot trace.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    module = module.eval()
    errors: list[str] = []
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module, (example,), str(staging), dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                do_constant_folding=True,
            )
        except Exception as exc:  # noqa: BLE001 - try the other exporter, then report both
            errors.append(f"torchscript exporter: {exc}")
            try:
                batch = torch.export.Dim("batch", min=1, max=1024)
                torch.onnx.export(
                    module, (example,), str(staging), dynamo=True, opset_version=opset,
                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                    dynamic_shapes=({0: batch},), external_data=False, verbose=False,
                )
            except Exception as exc2:  # noqa: BLE001
                errors.append(f"dynamo exporter: {exc2}")
    if len(errors) == 2 or not staging.is_file():
        staging.unlink(missing_ok=True)
        raise OnnxBackendError("ONNX export failed: " + "; ".join(errors))
    os.replace(staging, path)


def create_session(path: Path, threads: int):  # type: ignore[no-untyped-def]
    """A CPU session with bounded threads that sleep when idle.

    Spinning intra-op threads would burn the core the other model service needs; one
    inter-op thread because these graphs are a single chain of convolutions.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads > 0:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxRunner:
    """An ONNX Runtime session called like the torch module it replaces (tensor -> tensor)."""

    def __init__(self, session, path: Path) -> None:  # type: ignore[no-untyped-def]
        self.session = session
        self.path = path
        self.input_name = session.get_inputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        array = batch.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.run(array))


def max_abs_diff(expected: np.ndarray, actual: np.ndarray, rtol: float, atol: float) -> float:
    """Largest absolute difference; raises if shapes differ or any element is out of tolerance."""
    if expected.shape != actual.shape:
        raise OnnxBackendError(f"ONNX output shape {actual.shape} != PyTorch {expected.shape}")
    if not np.all(np.isfinite(actual)):
        raise OnnxBackendError("ONNX output has NaN or infinite values")
    diff = float(np.max(np.abs(expected.astype(np.float64) - actual))) if expected.size else 0.0
    if not np.allclose(actual, expected, rtol=rtol, atol=atol):
        raise OnnxBackendError(
            f"ONNX output differs from PyTorch by up to {diff:.3g} (rtol={rtol}, atol={atol})"
        )
    return diff


Transform = Callable[[np.ndarray], np.ndarray]


def _verify(
    module: nn.Module,
    runner: OnnxRunner,
    check: torch.Tensor,
    options: OnnxOptions,
    transform: Transform | None,
) -> float:
    with torch.no_grad():
        expected = module(check).float().numpy()
    try:
        actual = runner.run(check.float().contiguous().numpy())
    except Exception as exc:  # noqa: BLE001 - e.g. a batch axis baked to 1
        raise OnnxBackendError(f"ONNX Runtime failed on a batch of {len(check)}: {exc}") from exc
    if transform is not None:
        expected, actual = transform(expected), transform(actual)
    return max_abs_diff(expected, actual, options.rtol, options.atol)


def _write_sidecar(path: Path, report: dict[str, object]) -> None:
    path.with_suffix(".json").write_text(json.dumps(report, indent=2, sort_keys=True))


def load_or_export(
    module: nn.Module,
    check: torch.Tensor,
    path: Path,
    options: OnnxOptions,
    facts: dict[str, object] | None = None,
    transform: Transform | None = None,
) -> tuple[OnnxRunner, OnnxLoadReport]:
    """The cached export at ``path`` (exported now if missing), checked against ``module``.

    ``check`` is a realistic input batch of at least 2 (the export traces its first item).
    ``transform`` maps raw outputs to what the service serves before comparing (e.g.
    logits -> probabilities: an untrained net's logits of -5000 vs -6000 are both 0).
    A cached file that does not match is exported again once; a fresh export that does
    not match raises :class:`OnnxBackendError`.
    """
    started = time.perf_counter()
    with file_lock(path.with_name(path.name + ".lock")):  # replicas export once
        exported = False
        for attempt in (0, 1):
            if not path.is_file():
                export_onnx(module, check[:1], path, options.opset)
                exported = True
            try:
                runner = OnnxRunner(create_session(path, options.threads), path)
                diff = _verify(module, runner, check, options, transform)
            except Exception as exc:
                if exported or attempt == 1:
                    path.unlink(missing_ok=True)
                    raise OnnxBackendError(f"{path.name}: {exc}") from exc
                log.warning("cached ONNX file %s is unusable (%s); exporting it again", path, exc)
                path.unlink(missing_ok=True)
                continue
            break
        if exported:
            _write_sidecar(path, {
                **(facts or {}), "opset": options.opset, "torch": torch.__version__,
                "export_format": EXPORT_FORMAT, "max_abs_diff": diff,
            })
    report = OnnxLoadReport(path, exported, diff, time.perf_counter() - started)
    return runner, report


def try_onnx(
    module: nn.Module,
    check: torch.Tensor,
    *,
    name: str,
    sha256: str,
    input_size: int,
    options: OnnxOptions,
    transform: Transform | None = None,
) -> OnnxRunner | None:
    """``load_or_export`` for serving: any failure is a warning and ``None`` (keep torch)."""
    path = cache_path(options.cache_dir, name, sha256, input_size, options.opset)
    try:
        runner, report = load_or_export(
            module, check, path, options,
            facts={"name": name, "checkpoint_sha256": sha256, "input_size": input_size},
            transform=transform,
        )
    except Exception as exc:  # noqa: BLE001 - the service must still come up, on torch
        log.warning("%s: ONNX Runtime backend refused (%s); serving it with PyTorch", name, exc)
        return None
    log.info(
        "%s: ONNX Runtime backend (%s %s, max |onnx - torch| = %.2g, %.1f s)",
        name, "exported" if report.exported else "cached", report.path.name,
        report.max_abs_diff, report.seconds,
    )
    return runner


def options_from_settings(settings: Settings, torch_threads: int = 0) -> OnnxOptions:
    """ONNX Runtime gets ``ORT_THREADS``, else the service's torch thread budget.

    ``spine serve`` gives each model service half the cores, so the two sessions never
    ask for more threads than there are cores.
    """
    return OnnxOptions(
        cache_dir=onnx_cache_dir(settings),
        opset=settings.onnx_opset,
        threads=settings.ort_threads or torch_threads or settings.torch_threads,
    )


def release_freed_memory() -> None:
    """Hand freed heap back to the OS (glibc keeps it otherwise): after the torch copies
    of ONNX-served networks are dropped, this is a few hundred MB of resident memory."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def onnx_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def choose_backend(setting: str, device: torch.device) -> str:
    """``auto``: ONNX Runtime on CPU (when installed), PyTorch on CUDA."""
    if setting == "torch":
        return "torch"
    if device.type != "cpu":
        if setting == "onnx":
            log.warning("MODEL_BACKEND=onnx serves on CPU only; using PyTorch on %s", device)
        return "torch"
    if not onnx_available():
        if setting == "onnx":
            log.warning("MODEL_BACKEND=onnx but onnxruntime is not installed; using PyTorch")
        return "torch"
    return "onnx"
