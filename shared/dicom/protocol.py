"""The worker protocol, one definition for both ends of the pipe.

Every message between the parent (:mod:`shared.dicom.pool`) and a worker
(:mod:`shared.dicom.worker`) is an 8-byte big-endian length, then that many
bytes: a pickle of ``(module, function name, args)`` going in, of ``(ok, result
or error)`` coming back. A worker parses hostile bytes with native code; should
one ever be subverted, its reply must not make the parent call anything else,
so replies are read by :func:`load_reply` (our package's dataclasses and
errors, numpy arrays, builtin exceptions, nothing more), and a
:class:`~shared.errors.ServiceError` crosses as plain data (:func:`error_reply`).
"""

from __future__ import annotations

import builtins
import importlib
import io
import os
import pickle
import select
import struct
import time
from dataclasses import is_dataclass
from typing import Any

from shared.dicom.errors import NotDicomError
from shared.errors import ServiceError

__all__ = ["HEADER", "error_reply", "load_reply", "read_exact", "write_all"]

HEADER = struct.Struct(">Q")
_CHUNK = 1 << 22
_SERVICE_ERROR = "service-error"


def read_exact(fd: int, size: int, deadline: float | None = None) -> bytes | None:
    """Exactly ``size`` bytes from ``fd``; None if the stream ends first.

    With a ``deadline`` (a ``time.monotonic()`` value) a read that would pass it raises
    TimeoutError: the parent never waits on a stuck worker for longer.
    """
    chunks: list[bytes] = []
    while size > 0:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(size, _CHUNK))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (a pipe takes it in pieces)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def error_reply(exc: Exception) -> object:
    """A ServiceError as plain data: its class, message and attributes (see :func:`load_reply`).

    Our error classes may take keyword-only arguments, which default exception
    pickling cannot call; plain data also keeps the parent's unpickler strict.
    """
    if isinstance(exc, ServiceError):
        state = {k: v for k, v in vars(exc).items() if isinstance(v, (str, int, float, type(None)))}
        return (_SERVICE_ERROR, type(exc).__module__, type(exc).__qualname__, exc.message, state)
    return exc


# What a reply may contain besides our dataclasses and errors: numpy arrays, pydicom's UID
# (a str subclass, in an Inspection's header), builtin exceptions.
_GLOBALS = frozenset(
    {
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
        ("pydicom.uid", "UID"),
    }
)


class _ReplyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _GLOBALS:
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


def load_reply(data: bytes) -> tuple[bool, Any]:
    """``(ok, value)`` of a worker's reply; an error sent as plain data is rebuilt."""
    ok, value = _ReplyUnpickler(io.BytesIO(data)).load()
    if not ok and isinstance(value, tuple) and value[:1] == (_SERVICE_ERROR,):
        value = _rebuild_error(*value[1:])
    return ok, value


def _rebuild_error(module: str, qualname: str, message: str, state: dict[str, Any]) -> Exception:
    """The worker's ServiceError again (see :func:`error_reply`), or a generic one."""
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
