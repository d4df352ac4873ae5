"""The worker protocol's framing, one definition for both ends of the pipe.

Every message between the gateway and a decoder worker (:mod:`shared.dicom.isolate`,
:mod:`shared.dicom.worker`) is an 8-byte big-endian length, then that many bytes.
"""

from __future__ import annotations

import os
import select
import struct
import time

HEADER = struct.Struct(">Q")
_CHUNK = 1 << 22


def read_exact(fd: int, size: int, deadline: float | None = None) -> bytes | None:
    """Exactly ``size`` bytes from ``fd``; None if the stream ends first.

    With a ``deadline`` (a ``time.monotonic()`` value) a read that would pass it raises
    TimeoutError: the gateway's side never waits on a stuck worker for longer.
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
