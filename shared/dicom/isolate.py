"""Run crash-prone native decoders in worker processes.

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
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import queue
import select
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from shared.dicom.errors import NotDicomError

__all__ = ["DecodeOptions", "run_isolated", "shutdown"]

T = TypeVar("T")

MAX_WORKERS = max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class DecodeOptions:
    """How crash-prone decoders run; the gateway fills it from its Settings.

    ``isolate_decoders`` False decodes in-process (debugging only: an abort
    then takes the caller down). ``decode_timeout_s`` only stops hangs: a
    radiograph decodes in well under a second.
    """

    isolate_decoders: bool = True
    decode_timeout_s: float = 30.0


_HEADER = struct.Struct(">Q")


class _WorkerDied(Exception):
    """The worker exited, closed its pipe or sent garbage: it crashed."""


class _Worker:
    """One decoder subprocess, used by one thread at a time."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "shared.dicom.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            close_fds=True,
        )

    def call(
        self, fn: Callable[..., Any], args: tuple[Any, ...], deadline: float
    ) -> tuple[bool, Any]:
        payload = pickle.dumps((fn.__module__, fn.__qualname__, args), protocol=5)
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        try:
            stdin.write(_HEADER.pack(len(payload)) + payload)
            stdin.flush()
        except (BrokenPipeError, OSError):
            raise _WorkerDied from None
        size = _HEADER.unpack(self._read(stdout, _HEADER.size, deadline))[0]
        try:
            return pickle.loads(self._read(stdout, size, deadline))  # type: ignore[no-any-return]
        except Exception:
            raise _WorkerDied from None

    @staticmethod
    def _read(stream: Any, size: int, deadline: float) -> bytes:
        chunks: list[bytes] = []
        fd = stream.fileno()
        while size > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                raise TimeoutError
            chunk = os.read(fd, min(size, 1 << 22))
            if not chunk:
                raise _WorkerDied
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

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


def _checkout() -> _Worker:
    _slots.acquire()
    try:
        return _idle.get_nowait()
    except queue.Empty:
        pass
    try:
        worker = _Worker()
    except BaseException:
        _slots.release()
        raise
    with _all_lock:
        _all.add(worker)
    return worker


def _checkin(worker: _Worker, healthy: bool) -> None:
    if healthy:
        _idle.put(worker)
    else:
        worker.kill()
        with _all_lock:
            _all.discard(worker)
    _slots.release()


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

    `fn` must be a module-level function of ``shared.dicom.codecs.plugins``
    or ``.gdcm`` (the worker refuses anything else), its arguments and result picklable.
    Exceptions raised by `fn` come back and are re-raised here. A worker that
    dies is retried once on a fresh one (it may have died of something else).
    With ``options.isolate_decoders`` False, `fn` runs in this process.
    """
    if not options.isolate_decoders:
        return fn(*args)
    timeout_s = options.decode_timeout_s
    deadline = time.monotonic() + timeout_s
    for attempt in (1, 2):
        worker = _checkout()
        try:
            ok, value = worker.call(fn, args, deadline)
        except _WorkerDied:
            _checkin(worker, healthy=False)
            if attempt == 2:
                raise NotDicomError(
                    "The pixel data crashed the image decoder; the file is corrupt."
                ) from None
            continue
        except TimeoutError:
            _checkin(worker, healthy=False)
            raise NotDicomError(
                f"Decoding the pixel data took longer than {timeout_s:.0f} s; "
                "the file is corrupt or hostile."
            ) from None
        except BaseException:
            _checkin(worker, healthy=False)  # interrupted mid-call: the pipe state is unknown
            raise
        _checkin(worker, healthy=True)
        if ok:
            return value  # type: ignore[no-any-return]
        raise value
    raise AssertionError("unreachable")
