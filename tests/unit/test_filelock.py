"""The one file lock: exclusive while held, free again afterwards, folder created."""

from __future__ import annotations

import fcntl
from pathlib import Path

from shared.filelock import file_lock, hidden_lock_path


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
