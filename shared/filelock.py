"""One cross-process file lock: replicas or CLI runs starting together build a thing once.

POSIX ``flock`` on a small side file: the lock dies with its process, so a crashed
builder never leaves a stale lock behind. The side file itself stays (it is reused).
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def file_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (created with its folder) for the block.

    Other processes entering the same lock wait until this one leaves it.
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def hidden_lock_path(target: Path) -> Path:
    """``dir/.name.lock`` for ``dir/name``: the lock of a folder built in place."""
    return target.parent / f".{target.name}.lock"


class LockHeld(RuntimeError):
    """Another process holds the lock (:meth:`HeldLock.acquire` does not wait)."""


class HeldLock:
    """An exclusive lock kept until :meth:`release` or the process ends: one owner of a
    folder at a time (a second process sharing it would, for example, send its files twice)."""

    def __init__(self, path: Path, handle: IO[str]) -> None:
        self.path, self._handle = path, handle

    @classmethod
    def acquire(cls, path: Path) -> HeldLock:
        """Take the lock on ``path`` (created with its folder) now, or raise :class:`LockHeld`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "w")  # noqa: SIM115 - held open for the lock's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise LockHeld(f"{path} is locked by another process") from None
        return cls(path, handle)

    def release(self) -> None:
        if not self._handle.closed:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
