"""Worker processes that run the intake of an upload, owned by whoever creates them.

GDCM (our permissive decoder for JPEG Lossless, 12-bit JPEG and JPEG-LS)
answers some corrupt codestreams with an uncaught C++ exception or an
assertion: ``std::terminate`` -> ``abort()``, which would take the whole
gateway down with it. The test-suite's fuzzer found such files in minutes.
So the gateway runs the whole intake of an upload (parsing, the header, every
decoder) in a worker process of a :class:`DecoderPool`: a hostile file costs
at most one worker's address space (``RLIMIT_AS``, ``DECODE_WORKER_MEMORY_MB``)
and its deadline (``DICOM_DECODE_TIMEOUT_S``); a worker that dies only costs
that upload a 400, and a worker that hangs is killed.

The workers are plain ``python -m shared.dicom.worker`` subprocesses speaking
:mod:`shared.dicom.protocol` over their stdin/stdout. Not ``multiprocessing``:
its spawn/forkserver children re-import the caller's ``__main__``, which
breaks scripts without a main guard, and ``fork`` from a threaded server is
unsafe. A worker starts once (about a second: numpy, pydicom, GDCM) and is
reused; moving an upload in and the image out costs a few ms against 50-200 ms
of decoding. Workers start with a scrubbed environment (no secrets, one
BLAS/OpenMP thread) and are replaced as soon as one is killed.

Nothing starts at import: the gateway's runtime creates its pool at start-up
and closes it at shut-down; training, bench and tests create their own. A
pool runs at most :func:`available_cpus` workers unless told otherwise: the
CPU quota of the container, not the host's core count.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import pickle
import queue
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from shared import tracing
from shared.dicom.errors import NotDicomError
from shared.dicom.protocol import HEADER, load_reply, read_exact

__all__ = ["DecoderPool", "available_cpus"]

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


class _WorkerDied(Exception):
    """The worker exited, closed its pipe or sent garbage: it crashed."""


class _Worker:
    """One worker subprocess, used by one thread at a time."""

    def __init__(self, memory_mb: int) -> None:
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
            return load_reply(self._read(stdout, size, deadline))
        except Exception:
            raise _WorkerDied from None

    @staticmethod
    def _read(stream: Any, size: int, deadline: float) -> bytes:
        data = read_exact(stream.fileno(), size, deadline)
        if data is None:
            raise _WorkerDied
        return data

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def _kill_all(workers: set[_Worker], lock: threading.Lock) -> None:
    """Stop every worker of a pool (its close, or its finalizer at exit)."""
    with lock:
        doomed = list(workers)
        workers.clear()
    for worker in doomed:
        worker.kill()


class DecoderPool:
    """At most ``size`` worker processes with ``memory_mb`` of address space each.

    :meth:`run` calls a function of the intake in one of them, within
    ``timeout_s``. Workers start on demand (or all at once: :meth:`prewarm`)
    and stop on :meth:`close` (also at exit, or when the pool is collected).
    """

    def __init__(
        self, size: int | None = None, *, memory_mb: int = 1536, timeout_s: float = 15.0
    ) -> None:
        self.size = size or available_cpus()
        self.memory_mb = memory_mb
        self.timeout_s = timeout_s
        self._idle: queue.LifoQueue[_Worker] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(self.size)
        self._all: set[_Worker] = set()
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _kill_all, self._all, self._lock)

    def __enter__(self) -> DecoderPool:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def pids(self) -> list[int]:
        """Process ids of the workers running now (for tests and diagnostics)."""
        with self._lock:
            return [w.process.pid for w in self._all if w.alive()]

    def prewarm(self, count: int | None = None) -> None:
        """Start workers now (they import in the background), so uploads find them ready."""
        with self._lock:
            running = len(self._all)
        for _ in range(max(0, min(count or self.size, self.size) - running)):
            self._idle.put(self._spawn())

    def close(self) -> None:
        """Stop every worker process; a later :meth:`run` starts fresh ones."""
        _kill_all(self._all, self._lock)
        while True:
            try:
                self._idle.get_nowait()
            except queue.Empty:
                break

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker; a crash or a hang becomes a NotDicomError.

        `fn` must be a module-level function of a module the worker allows
        (:mod:`shared.dicom.worker`), its arguments and result picklable.
        Exceptions raised by `fn` come back and are re-raised here. A worker that
        dies is retried once on a fresh one (it may have died of something else).
        """
        deadline = time.monotonic() + self.timeout_s
        for attempt in (1, 2):
            worker = self._checkout()
            try:
                # Timed here, not in the worker: the sandbox writes no file, opens no socket.
                with tracing.span(f"decode worker {fn.__name__}", **{
                    "process.pid": worker.process.pid, "spine.attempt": attempt,
                }):
                    ok, value = worker.call(fn, args, deadline)
            except _WorkerDied:
                self._checkin(worker, healthy=False)
                if attempt == 2:
                    raise NotDicomError(
                        "The file crashed the DICOM decoder (or ran out of the decoder's memory, "
                        "limit DECODE_WORKER_MEMORY_MB); the file is corrupt or hostile."
                    ) from None
                continue
            except TimeoutError:
                self._checkin(worker, healthy=False)
                raise NotDicomError(
                    f"Decoding the DICOM file took longer than {self.timeout_s:g} s "
                    "(limit DICOM_DECODE_TIMEOUT_S); the file is corrupt or hostile."
                ) from None
            except BaseException:
                self._checkin(worker, healthy=False)  # interrupted mid-call: pipe state unknown
                raise
            self._checkin(worker, healthy=True)
            if ok:
                return value  # type: ignore[no-any-return]
            raise value
        raise AssertionError("unreachable")

    def _spawn(self) -> _Worker:
        worker = _Worker(self.memory_mb)
        with self._lock:
            self._all.add(worker)
        return worker

    def _retire(self, worker: _Worker) -> None:
        worker.kill()
        with self._lock:
            self._all.discard(worker)

    def _checkout(self) -> _Worker:
        self._slots.acquire()
        try:
            while True:
                try:
                    worker = self._idle.get_nowait()
                except queue.Empty:
                    return self._spawn()
                if worker.alive():
                    return worker
                self._retire(worker)
        except BaseException:
            self._slots.release()
            raise

    def _checkin(self, worker: _Worker, healthy: bool) -> None:
        with self._lock:
            current = worker in self._all  # False: the pool was closed while it worked
        if healthy and current:
            self._idle.put(worker)
        else:
            self._retire(worker)
            if current:
                with contextlib.suppress(OSError):  # a replacement starts now, off the next call
                    self._idle.put(self._spawn())
        self._slots.release()
