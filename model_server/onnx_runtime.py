"""ONNX Runtime sessions and the signed cache of the model services' graphs (torch-free).

A model service on CPU serves one graph per bundle (:mod:`model_server.graph`): exported
once, checked against the torch path, cached under ``$SPINE_CACHE_DIR/graphs`` with a
signed sidecar, then loaded from there with ONNX Runtime alone: torch is needed to
export a graph, not to serve a cached one.

Cache integrity: whoever can write the cache folder could plant a graph, so every entry
is signed: the sidecar holds the sha256 of the ``.onnx`` bytes and the entry's record
(the bundle facts the graph answers for, its bundle digest, the parity figures of its
export), bound to the entry's name with an HMAC-SHA256 under a per-install key
(``<cache root>/keys/onnx-cache.key``: 32 random bytes, mode 0600 in a 0700 folder,
never published, outside the graphs folder so that folder can be shared). An entry whose
signature is missing or wrong is exported again; the session is built from the very
bytes that were hashed (no swap between check and use). Replicas sharing a cache take
one file lock per entry (:mod:`shared.filelock`); files are written to staging names
and renamed into place.
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.filelock import file_lock
from shared.paths import cache_root
from shared.settings import ModelServerSettings

log = logging.getLogger(__name__)

# Bump when the graphs change for the same bundle (builder, exporter options): old cache
# entries are then simply not found again.
GRAPH_FORMAT = 2
KEY_NAME = "onnx-cache.key"
KEY_BYTES = 32
Record = dict[str, Any]


class OnnxBackendError(RuntimeError):
    """A graph that cannot be served (export, load or parity check failed)."""


def graphs_dir(settings: ModelServerSettings) -> Path:
    """``<cache root>/graphs`` (the one cache root: :func:`shared.paths.cache_root`)."""
    return cache_root(settings) / "graphs"


def key_path(settings: ModelServerSettings) -> Path:
    return cache_root(settings) / "keys" / KEY_NAME


def graph_key(inputs: Record) -> str:
    """The cache key of a graph: a digest of everything it is built from."""
    text = json.dumps({**inputs, "graph_format": GRAPH_FORMAT}, sort_keys=True,
                      separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


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


def entry_signature(key: bytes, path: Path, onnx_sha256: str, record: Record) -> str:
    """HMAC over the entry's name, its bytes' hash and its record (facts, parity)."""
    body = json.dumps(record, sort_keys=True, separators=(",", ":"))
    message = f"{GRAPH_FORMAT}\n{path.name}\n{onnx_sha256}\n{body}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def sidecar_path(path: Path) -> Path:
    return path.with_suffix(".json")


def read_signed(path: Path, key: bytes) -> tuple[bytes, Record] | None:
    """The entry's bytes and record if its sidecar's signature matches them, else None."""
    try:
        data = path.read_bytes()
        sidecar = json.loads(sidecar_path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(sidecar, dict) or not isinstance(sidecar.get("record"), dict):
        return None
    record, signature = sidecar["record"], sidecar.get("signature")
    expected = entry_signature(key, path, hashlib.sha256(data).hexdigest(), record)
    if not isinstance(signature, str) or not hmac.compare_digest(signature, expected):
        return None
    return data, record


def _write_atomically(target: Path, data: bytes) -> None:
    staging = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    staging.write_bytes(data)
    os.replace(staging, target)


def write_signed(path: Path, key: bytes, data: bytes, record: Record) -> None:
    """The graph and its signed sidecar, each renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx_sha256 = hashlib.sha256(data).hexdigest()
    _write_atomically(path, data)
    sidecar = {"record": record, "onnx_sha256": onnx_sha256,
               "signature": entry_signature(key, path, onnx_sha256, record)}
    _write_atomically(sidecar_path(path), json.dumps(sidecar, indent=2, sort_keys=True).encode())


@dataclass(frozen=True)
class CachedGraph:
    """One graph from the cache: its bytes, its record, and whether it was just built."""

    path: Path
    data: bytes
    record: Record
    exported: bool


def entry_path(folder: Path, name: str, key: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:48]
    return folder / f"{safe}-{key[:24]}.onnx"


def load_or_build(
    folder: Path, key_file: Path, name: str, key: str,
    build: Callable[[], tuple[bytes, Record]],
) -> CachedGraph:
    """The signed entry ``name``/``key``, built (and signed) now if missing or altered.

    ``build`` exports and checks the graph; it raises when the graph does not match, and
    then nothing is written.
    """
    path = entry_path(folder, name, key)
    secret = signing_key(key_file)
    with file_lock(path.with_name(path.name + ".lock")):  # replicas export once
        found = read_signed(path, secret) if path.is_file() else None
        if found is not None:
            return CachedGraph(path, found[0], found[1], exported=False)
        if path.is_file():
            log.warning("cached graph %s is unsigned or altered; exporting it again", path)
        data, record = build()
        write_signed(path, secret, data, record)
    return CachedGraph(path, data, record, exported=True)


def create_session(model: Path | bytes, threads: int):  # type: ignore[no-untyped-def]
    """A CPU session with bounded threads that sleep when idle.

    Spinning intra-op threads would burn the core the other model service needs; one
    inter-op thread because these graphs are a single chain of operators.
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
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def session_threads(settings: ModelServerSettings, torch_threads: int = 0) -> int:
    """ONNX Runtime gets ``ORT_THREADS``, else the service's torch thread budget.

    ``spine serve`` gives each model service half the cores, so the two sessions never
    ask for more threads than there are cores.
    """
    return settings.ort_threads or torch_threads or settings.torch_threads


def release_freed_memory() -> None:
    """Hand freed heap back to the OS (glibc keeps it otherwise): after the torch copies
    of the exported networks are dropped, this is a few hundred MB of resident memory."""
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


def cuda_present() -> bool:
    """Whether an NVIDIA driver is loaded: without one, ``MODEL_DEVICE=auto`` is the CPU
    and torch need not be imported to find that out."""
    return Path("/proc/driver/nvidia/version").exists()


def wants_graph(backend: str, device: str) -> bool:
    """``MODEL_BACKEND`` and ``MODEL_DEVICE`` -> serve the ONNX graph (True) or torch.

    ``auto``: the graph on CPU (when ONNX Runtime is installed), PyTorch on CUDA.
    """
    if backend == "torch":
        return False
    if device == "auto":
        device = "cpu"
        if cuda_present():
            from model_server.device import resolve_device  # torch: is the GPU usable?

            device = resolve_device("auto").type
    if device != "cpu":
        if backend == "onnx":
            log.warning("MODEL_BACKEND=onnx serves on CPU only; using PyTorch on %s", device)
        return False
    if not onnx_available():
        if backend == "onnx":
            log.warning("MODEL_BACKEND=onnx but onnxruntime is not installed; using PyTorch")
        return False
    return True
