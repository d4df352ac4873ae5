"""The file locks: exclusive while held, free again afterwards, folder created; the held
lock (one owner of a folder) refuses a second owner at once."""

from __future__ import annotations

import fcntl
import subprocess
import sys
from pathlib import Path

import pytest

from shared.filelock import HeldLock, LockHeld, file_lock, hidden_lock_path


def _free(path: Path) -> bool:
    """Could another holder take the lock now? (flock locks are per open file.)"""
    with open(path, "w") as other:
        try:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(other, fcntl.LOCK_UN)
        return True


def test_lock_is_exclusive_while_held(tmp_path: Path) -> None:
    lock = tmp_path / "new-folder" / "thing.lock"
    with file_lock(lock):
        assert lock.is_file()
        assert not _free(lock)
    assert _free(lock)


def test_hidden_lock_sits_next_to_the_target(tmp_path: Path) -> None:
    assert hidden_lock_path(tmp_path / "bundles" / "demo") == tmp_path / "bundles" / ".demo.lock"


def test_a_held_lock_refuses_a_second_owner_until_released(tmp_path: Path) -> None:
    path = tmp_path / "spool" / ".owner.lock"
    first = HeldLock.acquire(path)
    with pytest.raises(LockHeld, match="locked by another process"):
        HeldLock.acquire(path)
    # Another process is refused too (flock is per open file, across processes).
    probe = (
        "import fcntl, sys\n"
        f"h = open({str(path)!r}, 'w')\n"
        "try:\n    fcntl.flock(h, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "except BlockingIOError:\n    sys.exit(7)\n"
    )
    assert subprocess.run([sys.executable, "-c", probe], check=False).returncode == 7
    first.release()
    first.release()  # idempotent
    HeldLock.acquire(path).release()
