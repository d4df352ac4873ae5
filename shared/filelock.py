"""One cross-process file lock: replicas or CLI runs starting together build a thing once.

POSIX ``flock`` on a small side file: the lock dies with its process, so a crashed
builder never leaves a stale lock behind. The side file itself stays (it is reused).
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path


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
