"""Decoder worker process: ``python -m shared.dicom.worker`` (see shared.dicom.isolate).

Reads length-prefixed pickles ``(module, function name, args)`` from stdin,
runs the function and writes ``(ok, result or exception)`` back on stdout,
until stdin closes. Only functions of the decoder modules ``shared.dicom.codecs.plugins``
and ``shared.dicom.codecs.gdcm`` may be called.
If a native decoder aborts, this process dies and the parent sees EOF.
The pickles come from the parent process itself, never from an upload.
"""

from __future__ import annotations

import importlib
import os
import pickle
import struct
import sys

_HEADER = struct.Struct(">Q")
_ALLOWED_MODULES = frozenset({"shared.dicom.codecs.plugins", "shared.dicom.codecs.gdcm"})


def _read_exact(fd: int, size: int) -> bytes | None:
    chunks: list[bytes] = []
    while size > 0:
        chunk = os.read(fd, min(size, 1 << 22))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def main() -> None:
    stdin = sys.stdin.fileno()
    # Replies go to a private copy of fd 1; fd 1 itself (and sys.stdout) now point at
    # stderr, so a native library printing to stdout cannot corrupt the reply stream.
    stdout = os.dup(sys.stdout.fileno())
    os.dup2(sys.stderr.fileno(), 1)
    sys.stdout = sys.stderr
    import shared.dicom.codecs  # noqa: F401  (import cost paid once, before the first job)
    import shared.dicom.parse  # noqa: F401  (silences pydicom's value-quoting warnings here too)

    while True:
        header = _read_exact(stdin, _HEADER.size)
        if header is None:
            return
        payload = _read_exact(stdin, _HEADER.unpack(header)[0])
        if payload is None:
            return
        module_name, name, args = pickle.loads(payload)
        try:
            if module_name not in _ALLOWED_MODULES:
                raise PermissionError(f"{module_name} is not a decoder module")
            fn = getattr(importlib.import_module(module_name), name)
            reply = (True, fn(*args))
        except Exception as exc:  # sent back and re-raised in the parent
            reply = (False, exc)
        try:
            data = pickle.dumps(reply, protocol=5)
        except Exception:
            data = pickle.dumps((False, RuntimeError("unpicklable decoder result")), protocol=5)
        _write_all(stdout, _HEADER.pack(len(data)) + data)


if __name__ == "__main__":
    main()
