"""Decoder worker process: ``python -m shared.dicom.worker --memory-mb N`` (see
shared.dicom.isolate).

Reads length-prefixed pickles ``(module, function name, args)`` from stdin,
runs the function and writes ``(ok, result or exception)`` back on stdout,
until stdin closes. Only functions of ``shared.dicom.decode`` (the whole
intake of an upload) and of the decoder modules ``shared.dicom.codecs.plugins``
and ``shared.dicom.codecs.gdcm`` may be called.
After its imports the process limits its own address space to N MiB
(``RLIMIT_AS``, soft and hard): an allocation past it fails, and a
``MemoryError`` goes back as a 422 naming the limit.
If a native decoder aborts, this process dies and the parent sees EOF.
The pickles come from the parent process itself, never from an upload.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pickle
import resource
import sys

from shared.dicom.limits import DicomLimitError, prepare_prescan
from shared.dicom.pipes import HEADER, read_exact
from shared.errors import ServiceError

_ALLOWED_MODULES = frozenset(
    {"shared.dicom.decode", "shared.dicom.codecs.plugins", "shared.dicom.codecs.gdcm"}
)



def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _limit_memory(memory_mb: int) -> None:
    if memory_mb > 0:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _out_of_memory(memory_mb: int) -> Exception:
    return DicomLimitError(
        f"Decoding the DICOM file needs more than the {memory_mb} MiB a decoder may use "
        "(limit DECODE_WORKER_MEMORY_MB).",
        "DECODE_WORKER_MEMORY_MB",
    )


def _error_reply(exc: Exception) -> object:
    """A ServiceError as plain data: its class, message and attributes (see isolate._rebuild).

    Our error classes may take keyword-only arguments, which default exception
    pickling cannot call; plain data also keeps the parent's unpickler strict.
    """
    if isinstance(exc, ServiceError):
        state = {k: v for k, v in vars(exc).items() if isinstance(v, (str, int, float, type(None)))}
        return ("service-error", type(exc).__module__, type(exc).__qualname__, exc.message, state)
    return exc


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m shared.dicom.worker")
    parser.add_argument("--memory-mb", type=int, default=0, help="RLIMIT_AS in MiB; 0 = none")
    memory_mb = parser.parse_args().memory_mb
    stdin = sys.stdin.fileno()
    # Replies go to a private copy of fd 1; fd 1 itself (and sys.stdout) now point at
    # stderr, so a native library printing to stdout cannot corrupt the reply stream.
    stdout = os.dup(sys.stdout.fileno())
    os.dup2(sys.stderr.fileno(), 1)
    sys.stdout = sys.stderr
    import shared.dicom.codecs  # noqa: F401  (import cost paid once, before the first job)
    import shared.dicom.decode  # noqa: F401  (also silences pydicom's value-quoting warnings)

    prepare_prescan()  # the dictionary lookup the prescan needs, built before the limit
    _limit_memory(memory_mb)

    while True:
        header = read_exact(stdin, HEADER.size)
        if header is None:
            return
        payload = read_exact(stdin, HEADER.unpack(header)[0])
        if payload is None:
            return
        module_name, name, args = pickle.loads(payload)
        try:
            if module_name not in _ALLOWED_MODULES:
                raise PermissionError(f"{module_name} is not a decoder module")
            fn = getattr(importlib.import_module(module_name), name)
            reply = (True, fn(*args))
        except MemoryError:
            reply = (False, _error_reply(_out_of_memory(memory_mb)))
        except Exception as exc:  # sent back and re-raised in the parent
            reply = (False, _error_reply(exc))
        del payload, args
        try:
            data = pickle.dumps(reply, protocol=5)
        except MemoryError:
            data = pickle.dumps((False, _error_reply(_out_of_memory(memory_mb))), protocol=5)
        except Exception:
            data = pickle.dumps((False, RuntimeError("unpicklable decoder result")), protocol=5)
        del reply
        _write_all(stdout, HEADER.pack(len(data)) + data)


if __name__ == "__main__":
    main()
