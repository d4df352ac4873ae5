"""Worker process: ``python -m shared.dicom.worker --memory-mb N`` (see :mod:`shared.dicom.pool`).

Reads ``(module, function name, args)`` requests from stdin, runs the function
and writes ``(ok, result or error)`` back on stdout (:mod:`shared.dicom.protocol`),
until stdin closes. Only functions of the intake's steps (:mod:`shared.dicom.steps`)
and of the decoder modules (``shared.dicom.codecs.plugins``, ``.gdcm``: one frame
through a decoder) may be called.
After its imports the process limits its own address space to N MiB
(``RLIMIT_AS``, soft and hard): an allocation past it fails, and a
``MemoryError`` goes back as a 422 naming the limit.
If a native decoder aborts, this process dies and the parent sees EOF.
The requests come from the parent process itself, never from an upload.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pickle
import resource
import sys

from shared.dicom.limits import DicomLimitError, prepare_prescan
from shared.dicom.protocol import HEADER, error_reply, read_exact, write_all

_ALLOWED_MODULES = frozenset(
    {"shared.dicom.steps", "shared.dicom.codecs.plugins", "shared.dicom.codecs.gdcm"}
)


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


def _run(module_name: str, name: str, args: tuple[object, ...], memory_mb: int) -> object:
    """``(ok, result or error)`` of one request."""
    try:
        if module_name not in _ALLOWED_MODULES:
            raise PermissionError(f"{module_name} is not a decoder module")
        fn = getattr(importlib.import_module(module_name), name)
        return (True, fn(*args))
    except MemoryError:
        return (False, error_reply(_out_of_memory(memory_mb)))
    except Exception as exc:  # sent back and re-raised in the parent
        return (False, error_reply(exc))


def _dumps(reply: object, memory_mb: int) -> bytes:
    try:
        return pickle.dumps(reply, protocol=5)
    except MemoryError:
        return pickle.dumps((False, error_reply(_out_of_memory(memory_mb))), protocol=5)
    except Exception:
        return pickle.dumps((False, RuntimeError("unpicklable decoder result")), protocol=5)


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
    import shared.dicom.steps  # noqa: F401  (also silences pydicom's value-quoting warnings)

    prepare_prescan()  # the dictionary lookup the prescan needs, built before the limit
    _limit_memory(memory_mb)

    while True:
        header = read_exact(stdin, HEADER.size)
        if header is None:
            return
        request = read_exact(stdin, HEADER.unpack(header)[0])
        if request is None:
            return
        module_name, name, args = pickle.loads(request)
        reply = _run(module_name, name, args, memory_mb)
        del request, args  # the upload's bytes, freed before the reply is pickled
        data = _dumps(reply, memory_mb)
        del reply
        write_all(stdout, HEADER.pack(len(data)) + data)


if __name__ == "__main__":
    main()
