"""ONNX Runtime for the model services on CPU: export once, cache, verify, then serve.

Why: on a small CPU, eager PyTorch spends about twice as long per image as ONNX Runtime
on the same graph (fused conv+bn+activation kernels, no per-op Python dispatch), and the
issue's CPU target needs that factor. The ONNX file is exported from the very module
loaded from the bundle's checkpoint, cached under ``$SPINE_CACHE_DIR/onnx`` keyed by the
checkpoint's sha256, the input size and the opset, and its outputs are compared with
PyTorch's on every load (a batch of 2, which also proves the dynamic batch axis). A file
that fails to export, to load or to match is never served: the caller keeps PyTorch.

Cache integrity: the cache file name is derivable from the checkpoint sha256 that
``/health`` publishes, so whoever can write the cache folder could plant a graph. Two
checks stop that:

- every entry is signed: the export records the sha256 of the ``.onnx`` bytes, bound to
  the entry's name, in its ``.json`` sidecar with an HMAC-SHA256 under a per-install key
  (``<cache root>/keys/onnx-cache.key``: 32 random bytes, mode 0600 in a 0700 folder,
  never published, outside the ``onnx/`` folder so that folder can be shared). An entry
  whose signature is missing or wrong is exported again; the session is built from the
  very bytes that were hashed (no swap between check and use).
- the equality check runs on inputs drawn at random at load time (the callers'
  ``check_images``), not on fixed public inputs, so a graph that imitates the model only
  on known inputs fails. (It cannot catch a graph that differs only on a secret trigger:
  that is the signature's job.)

Replicas sharing a cache take one file lock per entry (:mod:`shared.filelock`); the
``.onnx`` and its sidecar are written to staging names and renamed into place.

Model services only (imports torch and onnxruntime); the gateway never imports this.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
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
from shared.settings import ModelServerSettings

log = logging.getLogger(__name__)

# Bump when the exported graph changes for the same checkpoint (wrapper, exporter
# options): old cache entries are then simply not found again.
EXPORT_FORMAT = 1
INPUT_NAME = "input"
OUTPUT_NAME = "output"
KEY_NAME = "onnx-cache.key"
KEY_BYTES = 32


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
    key_file: Path | None = None  # default: <cache_dir>/../keys/onnx-cache.key

    @property
    def key_path(self) -> Path:
        return self.key_file or self.cache_dir.parent / "keys" / KEY_NAME


@dataclass(frozen=True)
class OnnxLoadReport:
    """What ``load_or_export`` did, for the log and the tests."""

    path: Path
    exported: bool
    max_abs_diff: float
    seconds: float


def onnx_cache_dir(settings: ModelServerSettings) -> Path:
    """``<cache root>/onnx`` (the one cache root: :func:`shared.paths.cache_root`)."""
    return cache_root(settings) / "onnx"


def cache_path(cache_dir: Path, name: str, sha256: str, input_size: int, opset: int,
               spatial_dynamic: bool = False) -> Path:
    """One file per (checkpoint sha256, input size, opset, spatial axes); ``name`` only
    helps a human."""
    text = f"{sha256}:{input_size}:{opset}:{EXPORT_FORMAT}" + (":hw" if spatial_dynamic else "")
    key = hashlib.sha256(text.encode()).hexdigest()
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:48]
    return cache_dir / f"{safe}-{input_size}px-opset{opset}-{key[:24]}.onnx"


def export_onnx(module: nn.Module, example: torch.Tensor, path: Path, opset: int,
                spatial_dynamic: bool = False) -> None:
    """Export ``module`` (one tensor in, one out) with a dynamic batch axis (and dynamic
    height and width with ``spatial_dynamic``), atomically.

    The TorchScript exporter is used first: one self-contained file in a few seconds. The
    dynamo exporter (slower, needs onnxscript) is the fallback for graphs it cannot trace.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    module = module.eval()
    errors: list[str] = []
    axes: dict[int, str] = {0: "batch", **({2: "height", 3: "width"} if spatial_dynamic else {})}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module, (example,), str(staging), dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: {0: "batch"}},
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


def _key_is_private(path: Path) -> bool:
    info = path.lstat()
    return (
        stat.S_ISREG(info.st_mode)
        and info.st_uid == os.getuid()
        and not info.st_mode & 0o077
        and info.st_size == KEY_BYTES
    )


def signing_key(path: Path) -> bytes:
    """The per-install HMAC key, created (0600, atomically, once across replicas) if absent.

    A key that is not a private regular file of ours (a symlink, readable by others, the
    wrong size) is replaced by a new one: entries signed with it are exported again.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with file_lock(path.with_name(f".{path.name}.lock")):
        if path.exists() or path.is_symlink():
            if _key_is_private(path):
                return path.read_bytes()
            log.warning("ONNX cache key %s is not a private file of this user; replacing it", path)
        staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        staging.unlink(missing_ok=True)
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, key := secrets.token_bytes(KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(staging, path)
        return key


def entry_signature(key: bytes, path: Path, onnx_sha256: str) -> str:
    """HMAC over the entry's name (which encodes checkpoint, size, opset) and its bytes' hash."""
    message = f"{EXPORT_FORMAT}\n{path.name}\n{onnx_sha256}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def sidecar_path(path: Path) -> Path:
    return path.with_suffix(".json")


def read_signed(path: Path, key: bytes) -> bytes | None:
    """The entry's bytes if its sidecar's signature matches them, else ``None``."""
    try:
        data = path.read_bytes()
        record = json.loads(sidecar_path(path).read_text())
    except (OSError, ValueError):
        return None
    signature = record.get("signature") if isinstance(record, dict) else None
    expected = entry_signature(key, path, hashlib.sha256(data).hexdigest())
    if not isinstance(signature, str) or not hmac.compare_digest(signature, expected):
        return None
    return data


def create_session(path: Path | bytes, threads: int):  # type: ignore[no-untyped-def]
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
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


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
    target = sidecar_path(path)
    staging = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    staging.write_text(json.dumps(report, indent=2, sort_keys=True))
    os.replace(staging, target)


def load_or_export(
    module: nn.Module,
    check: torch.Tensor,
    path: Path,
    options: OnnxOptions,
    facts: dict[str, object] | None = None,
    transform: Transform | None = None,
    spatial_dynamic: bool = False,
) -> tuple[OnnxRunner, OnnxLoadReport]:
    """The cached export at ``path`` (exported now if missing), checked against ``module``.

    ``check`` is a realistic input batch of at least 2 (the export traces its first item).
    ``transform`` maps raw outputs to what the service serves before comparing (e.g.
    logits -> probabilities: an untrained net's logits of -5000 vs -6000 are both 0).
    A cached file that does not match is exported again once; a fresh export that does
    not match raises :class:`OnnxBackendError`.
    """
    started = time.perf_counter()
    key = signing_key(options.key_path)
    with file_lock(path.with_name(path.name + ".lock")):  # replicas export once
        exported = False
        for attempt in (0, 1):
            data = read_signed(path, key) if path.is_file() else None
            if data is None:
                if path.is_file():
                    log.warning("cached ONNX file %s is unsigned or altered; exporting it again",
                                path)
                export_onnx(module, check[:1], path, options.opset, spatial_dynamic)
                exported = True
                data = path.read_bytes()
            try:
                runner = OnnxRunner(create_session(data, options.threads), path)
                diff = _verify(module, runner, check, options, transform)
            except Exception as exc:
                if exported or attempt == 1:
                    path.unlink(missing_ok=True)
                    sidecar_path(path).unlink(missing_ok=True)
                    raise OnnxBackendError(f"{path.name}: {exc}") from exc
                log.warning("cached ONNX file %s is unusable (%s); exporting it again", path, exc)
                path.unlink(missing_ok=True)
                continue
            break
        if exported:
            onnx_sha256 = hashlib.sha256(data).hexdigest()
            _write_sidecar(path, {
                **(facts or {}), "opset": options.opset, "torch": torch.__version__,
                "export_format": EXPORT_FORMAT, "max_abs_diff": diff,
                "onnx_sha256": onnx_sha256,
                "signature": entry_signature(key, path, onnx_sha256),
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
    spatial_dynamic: bool = False,
) -> OnnxRunner | None:
    """``load_or_export`` for serving: any failure is a warning and ``None`` (keep torch)."""
    path = cache_path(options.cache_dir, name, sha256, input_size, options.opset, spatial_dynamic)
    try:
        runner, report = load_or_export(
            module, check, path, options,
            facts={"name": name, "checkpoint_sha256": sha256, "input_size": input_size},
            transform=transform, spatial_dynamic=spatial_dynamic,
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


def options_from_settings(settings: ModelServerSettings, torch_threads: int = 0) -> OnnxOptions:
    """ONNX Runtime gets ``ORT_THREADS``, else the service's torch thread budget.

    ``spine serve`` gives each model service half the cores, so the two sessions never
    ask for more threads than there are cores.
    """
    return OnnxOptions(
        cache_dir=onnx_cache_dir(settings),
        key_file=cache_root(settings) / "keys" / KEY_NAME,
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
