"""Run uploads' parsing and crash-prone native decoders in worker processes.

GDCM (our permissive decoder for JPEG Lossless, 12-bit JPEG and JPEG-LS)
answers some corrupt codestreams with an uncaught C++ exception or an
assertion: ``std::terminate`` -> ``abort()``, which would take the whole
gateway down with it. The test-suite's fuzzer found such files in minutes.
So those decodes run in worker processes: a worker that dies only costs that
upload a 400, and a worker that hangs is killed after a timeout.

The workers are plain ``python -m shared.dicom.worker`` subprocesses that
read (function, arguments) and write the result as length-prefixed pickles
over their stdin/stdout. Not ``multiprocessing``: its spawn/forkserver
children re-import the caller's ``__main__``, which breaks scripts without
a main guard, and ``fork`` from a threaded server is unsafe. A worker starts
once (about a second: numpy, pydicom, GDCM) and is reused; moving a frame in
and the pixels out costs a few ms against 50-200 ms of decoding.

The gateway runs the whole intake of an upload here (``DecodeOptions(isolate=True)``):
parsing, the header and every decoder, so that a hostile file costs at most
one worker's address space (``RLIMIT_AS``, ``DECODE_WORKER_MEMORY_MB``) and its
deadline (``DICOM_DECODE_TIMEOUT_S``), never the gateway. Workers start with a
scrubbed environment (no secrets, one BLAS/OpenMP thread), are replaced as
soon as one is killed, and the pool is sized from the CPU quota of the
container (:func:`available_cpus`), not the host's core count.
"""

from __future__ import annotations

import atexit
import builtins
import contextlib
import fcntl
import importlib
import io
import math
import os
import pickle
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, is_dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from shared.dicom.errors import NotDicomError
from shared.dicom.limits import DecodeLimits
from shared.dicom.pipes import HEADER, read_exact
from shared.errors import ServiceError

__all__ = ["DecodeOptions", "available_cpus", "prewarm", "run_isolated", "shutdown"]

T = TypeVar("T")

_CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
_CGROUP_V1 = (Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup/cpu,cpuacct"))


def _cgroup_quota() -> float | None:
    """CPUs granted by the cgroup CPU quota (v2 ``cpu.max``, v1 ``cfs_quota_us``); None = none."""
    try:
        quota, period = _CGROUP_V2.read_text().split()[:2]
        if quota != "max" and int(period) > 0:
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    for folder in _CGROUP_V1:
        try:
            quota_us = int((folder / "cpu.cfs_quota_us").read_text())
            period_us = int((folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        if quota_us > 0 and period_us > 0:
            return quota_us / period_us
        return None
    return None


def available_cpus() -> int:
    """CPUs this process may really use: the cgroup quota, else its affinity mask.

    ``os.cpu_count()`` is the host's core count, which in a container
    overstates what the quota lets us run by 10x or more.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


MAX_WORKERS = available_cpus()


@dataclass(frozen=True)
class DecodeOptions:
    """How an upload is parsed and decoded; the gateway fills it from its Settings.

    ``isolate`` runs the whole intake (parse, header, decoders) in a worker
    process with ``worker_memory_mb`` of address space: the gateway's mode.
    Without it (training, bench, scripts: trusted files) only the
    crash-prone decoders run in workers, unless ``isolate_decoders`` is False
    too (debugging only: an abort then takes the caller down).
    ``decode_timeout_s`` is the wall deadline of one worker call; caps in
    ``limits`` refuse hostile files long before it.
    """

    isolate_decoders: bool = True
    decode_timeout_s: float = 15.0
    isolate: bool = False
    worker_memory_mb: int = 1536
    limits: DecodeLimits = field(default_factory=DecodeLimits)

    def in_worker(self) -> DecodeOptions:
        """The options the work runs with inside a worker: already isolated."""
        return replace(self, isolate=False, isolate_decoders=False)


_PIPE_BYTES = 1 << 20


def _widen_pipe(stream: Any) -> None:
    """A 1 MiB pipe buffer (Linux; default 64 KiB): a 5 MB upload crosses in 5 wake-ups, not 80.

    Every full buffer is a context switch each way, which on a busy host costs
    far more than copying the bytes.
    """
    setpipe = getattr(fcntl, "F_SETPIPE_SZ", None)
    if stream is not None and setpipe is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(stream.fileno(), setpipe, _PIPE_BYTES)


def _worker_env() -> dict[str, str]:
    """A scrubbed environment: no secrets or tokens, one BLAS/OpenMP thread, few malloc arenas.

    Threads and malloc arenas reserve address space, which ``RLIMIT_AS`` counts.
    """
    return {
        "PATH": os.defpath,
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "LC_ALL": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "MALLOC_ARENA_MAX": "2",
    }


# What a worker's reply may contain: our package's dataclasses and errors, numpy arrays,
# builtin exceptions. A worker parses hostile bytes with native code; should one ever be
# subverted, its reply must not be able to make the gateway call anything else.
_NUMPY_GLOBALS = frozenset(
    {
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
    }
)


class _ReplyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        if module == "builtins":
            found = getattr(builtins, name, None)
            if isinstance(found, type) and issubclass(found, BaseException):
                return found
        elif module == "shared.dicom" or module.startswith("shared.dicom."):
            found = super().find_class(module, name)
            if isinstance(found, type) and (is_dataclass(found) or issubclass(found, Exception)):
                return found
        raise pickle.UnpicklingError(f"a worker reply may not contain {module}.{name}")


def _loads(data: bytes) -> tuple[bool, Any]:
    return _ReplyUnpickler(io.BytesIO(data)).load()  # type: ignore[no-any-return]


def _rebuild_error(module: str, qualname: str, message: str, state: dict[str, Any]) -> Exception:
    """The worker's ServiceError again (see worker._error_reply), or a generic one."""
    try:
        cls = getattr(importlib.import_module(module), qualname)
    except (ImportError, AttributeError):
        cls = None
    if not (
        module.startswith("shared.") and isinstance(cls, type) and issubclass(cls, ServiceError)
    ):
        return NotDicomError("The image decoder sent an unreadable answer; the file is hostile.")
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    error.message = message
    return error  # type: ignore[no-any-return]


class _WorkerDied(Exception):
    """The worker exited, closed its pipe or sent garbage: it crashed."""


class _Worker:
    """One decoder subprocess, used by one thread at a time."""

    def __init__(self, memory_mb: int) -> None:
        self.memory_mb = memory_mb
        self.process = subprocess.Popen(
            [sys.executable, "-m", "shared.dicom.worker", "--memory-mb", str(memory_mb)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=_worker_env(),
            close_fds=True,
        )
        for stream in (self.process.stdin, self.process.stdout):
            _widen_pipe(stream)

    def call(
        self, fn: Callable[..., Any], args: tuple[Any, ...], deadline: float
    ) -> tuple[bool, Any]:
        payload = pickle.dumps((fn.__module__, fn.__qualname__, args), protocol=5)
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        try:
            stdin.write(HEADER.pack(len(payload)) + payload)
            stdin.flush()
        except (BrokenPipeError, OSError):
            raise _WorkerDied from None
        size = HEADER.unpack(self._read(stdout, HEADER.size, deadline))[0]
        try:
            ok, value = _loads(self._read(stdout, size, deadline))
        except Exception:
            raise _WorkerDied from None
        if not ok and isinstance(value, tuple) and value[:1] == ("service-error",):
            value = _rebuild_error(*value[1:])
        return ok, value

    @staticmethod
    def _read(stream: Any, size: int, deadline: float) -> bytes:
        data = read_exact(stream.fileno(), size, deadline)
        if data is None:
            raise _WorkerDied
        return data

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


_idle: queue.LifoQueue[_Worker] = queue.LifoQueue()
_slots = threading.BoundedSemaphore(MAX_WORKERS)
_all: set[_Worker] = set()
_all_lock = threading.Lock()


def _spawn(memory_mb: int) -> _Worker:
    worker = _Worker(memory_mb)
    with _all_lock:
        _all.add(worker)
    return worker


def _retire(worker: _Worker) -> None:
    worker.kill()
    with _all_lock:
        _all.discard(worker)


def _checkout(memory_mb: int) -> _Worker:
    _slots.acquire()
    try:
        while True:
            try:
                worker = _idle.get_nowait()
            except queue.Empty:
                return _spawn(memory_mb)
            if worker.memory_mb == memory_mb and worker.process.poll() is None:
                return worker
            _retire(worker)
    except BaseException:
        _slots.release()
        raise


def _checkin(worker: _Worker, healthy: bool) -> None:
    if healthy:
        _idle.put(worker)
    else:
        _retire(worker)
        with contextlib.suppress(OSError):  # a replacement starts now, off the next request
            _idle.put(_spawn(worker.memory_mb))
    _slots.release()


def prewarm(options: DecodeOptions, count: int = MAX_WORKERS) -> None:
    """Start `count` workers now (they import in the background), so uploads find them ready."""
    with _all_lock:
        running = len(_all)
    for _ in range(max(0, min(count, MAX_WORKERS) - running)):
        _idle.put(_spawn(options.worker_memory_mb))


def shutdown() -> None:
    """Stop every worker process (also registered at exit)."""
    with _all_lock:
        workers = list(_all)
        _all.clear()
    for worker in workers:
        worker.kill()
    while True:
        try:
            _idle.get_nowait()
        except queue.Empty:
            break


atexit.register(shutdown)


def run_isolated(fn: Callable[..., T], *args: Any, options: DecodeOptions) -> T:
    """``fn(*args)`` in a worker process; a crash or a hang becomes a NotDicomError.

    `fn` must be a module-level function of ``shared.dicom.decode``,
    ``shared.dicom.codecs.plugins`` or ``.gdcm`` (the worker refuses anything
    else), its arguments and result picklable.
    Exceptions raised by `fn` come back and are re-raised here. A worker that
    dies is retried once on a fresh one (it may have died of something else).
    With ``options.isolate_decoders`` False, `fn` runs in this process.
    """
    if not (options.isolate_decoders or options.isolate):
        return fn(*args)
    timeout_s = options.decode_timeout_s
    deadline = time.monotonic() + timeout_s
    for attempt in (1, 2):
        worker = _checkout(options.worker_memory_mb)
        try:
            ok, value = worker.call(fn, args, deadline)
        except _WorkerDied:
            _checkin(worker, healthy=False)
            if attempt == 2:
                raise NotDicomError(
                    "The file crashed the DICOM decoder (or ran out of the decoder's memory, "
                    "limit DECODE_WORKER_MEMORY_MB); the file is corrupt or hostile."
                ) from None
            continue
        except TimeoutError:
            _checkin(worker, healthy=False)
            raise NotDicomError(
                f"Decoding the DICOM file took longer than {timeout_s:g} s "
                "(limit DICOM_DECODE_TIMEOUT_S); the file is corrupt or hostile."
            ) from None
        except BaseException:
            _checkin(worker, healthy=False)  # interrupted mid-call: the pipe state is unknown
            raise
        _checkin(worker, healthy=True)
        if ok:
            return value  # type: ignore[no-any-return]
        raise value
    raise AssertionError("unreachable")
