"""The spool: every instance we answer Success for is on disk first, durably.

An instance is written to ``tmp/``, flushed and fsynced, then renamed into ``incoming/``
(atomic on one file system) and the folder is fsynced, all before the C-STORE response;
so whatever a sender was told is stored survives a crash or a restart and is replayed by
the next start (:meth:`Spool.pending`). An entry leaves ``incoming/`` when its fate is
settled: removed once analysed (results handed to delivery) or refused by input
selection; moved to ``failed/`` when the gateway would not take it within the retry
budget or refused it for good, so that nothing acknowledged is ever deleted unseen
(an operator moves files from ``failed/`` back to ``incoming/`` to try again).

Results too: an analysed instance's SR and presentation state are written durably (the
same fsync + atomic rename) to ``results/<SOPInstanceUID>.dcm`` before the instance's
entry is removed, so the delivery's in-memory queue is never their only copy. A result
file is removed once delivered, moved to ``failed/results/`` when the destination
rejected it or the retry budget ran out (move it back to ``results/`` to send it at the
next start), and kept on a shutdown: the next start sends it again
(:meth:`Spool.pending_results`).

Caps: one instance at most ``LISTENER_MAX_INSTANCE_BYTES``, the spool at most
``LISTENER_SPOOL_MAX_BYTES`` (``incoming/`` and ``results/``: results waiting for a
PACS that is down slow the senders down instead of filling the disk), and
``DISK_MIN_FREE_BYTES`` kept free on the spool's disk; beyond them :class:`SpoolFull`,
which the SCP answers with status A700 (out of resources) so the sender keeps the
instance. ``failed/`` is pruned by :mod:`shared.dicomnet.retention`, never
``incoming/`` or ``results/``.
Thread-safe: C-STORE handlers of several associations write at once.
One owner: a listener holds ``root/.owner.lock`` (``flock``, gone with its process, so a
SIGKILL leaves no stale lock) while it runs; a second listener on the same folder is
refused with :class:`SpoolInUseError` before it touches anything (it would replay the
first one's entries and delete its half-written files).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from shared.dicomnet.retention import disk_refusal
from shared.dicomnet.spool import (
    SUFFIX,
    ResultFile,
    ResultStore,
    durable_write,
    fsync_dir,
    read_each,
    read_uids,
)
from shared.filelock import HeldLock, LockHeld

__all__ = ["ResultFile", "Spool", "SpoolEntry", "SpoolFull", "SpoolInUseError", "read_uids"]

OWNER_LOCK = ".owner.lock"


class SpoolInUseError(RuntimeError):
    """``LISTENER_SPOOL_DIR`` is owned by another running listener: the start stops."""


class SpoolFull(Exception):
    """No room for this instance (too large, or the spool is at its cap)."""


@dataclass(frozen=True)
class SpoolEntry:
    """One instance waiting in ``incoming/``; UIDs as read from the instance."""

    path: Path
    study_uid: str
    sop_uid: str
    size: int

    @property
    def name(self) -> str:
        return self.path.name


class Spool:
    """``root/incoming`` (waiting), ``root/tmp`` (being written), ``root/failed`` (given up),
    ``root/results`` (our results waiting for delivery), ``root/failed/results``: the last
    two are a :class:`~shared.dicomnet.spool.ResultStore` (:attr:`result_store`)."""

    def __init__(
        self, root: Path, *, max_instance_bytes: int, max_total_bytes: int,
        min_free_bytes: int = 0,
    ) -> None:
        self.root = root
        self.incoming = root / "incoming"
        self.tmp = root / "tmp"
        self.failed = root / "failed"
        self.results = root / "results"
        self.failed_results = self.failed / "results"
        self._owner = _own(root)
        for folder in (self.incoming, self.tmp, self.failed):
            folder.mkdir(parents=True, exist_ok=True)
        self.max_instance_bytes = max_instance_bytes
        self.max_total_bytes = max_total_bytes
        self.min_free_bytes = min_free_bytes
        self._lock = threading.Lock()
        self._counter = itertools.count()
        for stale in self.tmp.iterdir():  # half-written by a crash: never acknowledged
            stale.unlink(missing_ok=True)
        self.result_store = ResultStore(self.results, self.failed_results, self.tmp)
        self._used = sum(p.stat().st_size for p in self.incoming.glob(f"*{SUFFIX}"))
        self._count = len(list(self.incoming.glob(f"*{SUFFIX}")))

    def close(self) -> None:
        """Give up ownership (the next listener may take the folder)."""
        self._owner.release()

    @property
    def used_bytes(self) -> int:
        """Bytes in ``incoming/`` and ``results/`` (both count toward the cap)."""
        return self._used + self.result_store.used_bytes

    @property
    def count(self) -> int:
        """Instances in ``incoming/``."""
        return self._count

    @property
    def result_count(self) -> int:
        """Result objects in ``results/`` (waiting for delivery)."""
        return self.result_store.count

    def _reserve(self, size: int) -> None:
        if size > self.max_instance_bytes:
            raise SpoolFull(
                f"instance of {size} bytes exceeds LISTENER_MAX_INSTANCE_BYTES "
                f"({self.max_instance_bytes})"
            )
        with self._lock:
            if self._used + self.result_store.used_bytes + size > self.max_total_bytes:
                raise SpoolFull(
                    f"the spool is full (LISTENER_SPOOL_MAX_BYTES {self.max_total_bytes})"
                )
            full_disk = disk_refusal(self.incoming, self.min_free_bytes, size)
            if full_disk:
                raise SpoolFull(full_disk)
            self._used += size
            self._count += 1

    def _release(self, size: int) -> None:
        with self._lock:
            self._used -= size
            self._count -= 1

    def write(self, data: bytes, study_uid: str, sop_uid: str) -> SpoolEntry:
        """Store one Part 10 instance durably; returns once it is safe to answer Success."""
        self._reserve(len(data))
        name = f"{time.time_ns():020d}-{next(self._counter):06d}{SUFFIX}"
        try:
            final = durable_write(data, self.tmp, self.incoming, name)
        except BaseException:
            self._release(len(data))
            raise
        return SpoolEntry(final, study_uid, sop_uid, len(data))

    def write_result(self, data: bytes) -> ResultFile:
        """Store one of our result objects durably (not capped: its source instance was
        acknowledged already; it counts in the spool's bytes). ValueError when it has no
        usable UIDs."""
        return self.result_store.write(data)

    def pending_results(self) -> tuple[list[ResultFile], list[tuple[Path, str]]]:
        """Result files waiting in ``results/`` (replayed at start) and the unreadable ones."""
        return self.result_store.pending()

    def remove_result(self, sop_uid: str) -> None:
        """The result is delivered everywhere: forget it."""
        self.result_store.remove(sop_uid)

    def fail_result(self, sop_uid: str | Path) -> Path | None:
        """Keep a result that was given up on in ``failed/results/`` (not replayed)."""
        return self.result_store.fail(sop_uid)

    def pending(self) -> tuple[list[SpoolEntry], list[tuple[Path, str]]]:
        """Entries in ``incoming/`` in arrival order (replay at start), and the files that
        cannot be read back, each with why (the caller moves them to ``failed/``)."""
        readable, unreadable = read_each(sorted(self.incoming.glob(f"*{SUFFIX}")))
        return [SpoolEntry(*found) for found in readable], unreadable

    def read(self, entry: SpoolEntry) -> bytes:
        return entry.path.read_bytes()

    def remove(self, entry: SpoolEntry) -> None:
        """The instance's fate is settled (analysed or refused): forget it."""
        with contextlib.suppress(FileNotFoundError):
            entry.path.unlink()
            self._release(entry.size)
            fsync_dir(self.incoming)

    def move_to_failed(self, path: Path, size: int | None = None) -> Path:
        """Keep an instance we gave up on where an operator can find it (not replayed)."""
        target = self.failed / path.name
        size = path.stat().st_size if size is None else size
        os.replace(path, target)
        self._release(size)
        fsync_dir(self.incoming)
        return target


def _own(root: Path) -> HeldLock:
    try:
        return HeldLock.acquire(root / OWNER_LOCK)
    except LockHeld:
        raise SpoolInUseError(
            f"LISTENER_SPOOL_DIR {root} is in use by another running listener: give each "
            "listener its own spool folder"
        ) from None
