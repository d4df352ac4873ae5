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
PACS that is down slow the senders down instead of filling the disk); beyond them
:class:`SpoolFull`, which the SCP answers with status A700 (out of resources) so the
sender keeps the instance.
Thread-safe: C-STORE handlers of several associations write at once.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

SUFFIX = ".dcm"
_UID = re.compile(r"^[0-9.]{1,64}$")  # a result's file name is its SOP Instance UID


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


@dataclass(frozen=True)
class ResultFile:
    """One SR or presentation state in ``results/``, waiting to be delivered."""

    path: Path
    study_uid: str
    sop_uid: str
    size: int


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_uids(data: bytes | Path) -> tuple[str, str]:
    """``(StudyInstanceUID, SOPInstanceUID)`` of a Part 10 file (header only); ValueError
    when either is missing or the file cannot be read."""
    source = io.BytesIO(data) if isinstance(data, bytes) else str(data)
    try:
        ds = pydicom.dcmread(
            source, stop_before_pixels=True, force=True,
            specific_tags=["StudyInstanceUID", "SOPInstanceUID"],
        )
        study = str(ds.get("StudyInstanceUID", "") or "")
        sop = str(ds.get("SOPInstanceUID", "") or "")
    except (InvalidDicomError, OSError, ValueError, TypeError, KeyError, EOFError) as exc:
        raise ValueError(f"unreadable instance ({type(exc).__name__})") from None
    if not study or not sop:
        raise ValueError("the instance has no StudyInstanceUID or SOPInstanceUID")
    return study, sop


class Spool:
    """``root/incoming`` (waiting), ``root/tmp`` (being written), ``root/failed`` (given up),
    ``root/results`` (our results waiting for delivery), ``root/failed/results``."""

    def __init__(self, root: Path, *, max_instance_bytes: int, max_total_bytes: int) -> None:
        self.root = root
        self.incoming = root / "incoming"
        self.tmp = root / "tmp"
        self.failed = root / "failed"
        self.results = root / "results"
        self.failed_results = self.failed / "results"
        for folder in (self.incoming, self.tmp, self.failed, self.results, self.failed_results):
            folder.mkdir(parents=True, exist_ok=True)
        self.max_instance_bytes = max_instance_bytes
        self.max_total_bytes = max_total_bytes
        self._lock = threading.Lock()
        self._counter = itertools.count()
        for stale in self.tmp.iterdir():  # half-written by a crash: never acknowledged
            stale.unlink(missing_ok=True)
        self._used = sum(
            p.stat().st_size for folder in (self.incoming, self.results)
            for p in folder.glob(f"*{SUFFIX}")
        )
        self._count = len(list(self.incoming.glob(f"*{SUFFIX}")))
        self._results = len(list(self.results.glob(f"*{SUFFIX}")))

    @property
    def used_bytes(self) -> int:
        return self._used

    @property
    def count(self) -> int:
        """Instances in ``incoming/``."""
        return self._count

    @property
    def result_count(self) -> int:
        """Result objects in ``results/`` (waiting for delivery)."""
        return self._results

    def _reserve(self, size: int) -> None:
        if size > self.max_instance_bytes:
            raise SpoolFull(
                f"instance of {size} bytes exceeds LISTENER_MAX_INSTANCE_BYTES "
                f"({self.max_instance_bytes})"
            )
        with self._lock:
            if self._used + size > self.max_total_bytes:
                raise SpoolFull(
                    f"the spool is full (LISTENER_SPOOL_MAX_BYTES {self.max_total_bytes})"
                )
            self._used += size
            self._count += 1

    def _release(self, size: int) -> None:
        with self._lock:
            self._used -= size
            self._count -= 1

    def _durable(self, data: bytes, folder: Path, name: str) -> Path:
        """Write ``tmp/name``, fsync, rename into ``folder``, fsync the folder."""
        partial = self.tmp / name
        try:
            with partial.open("wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            final = folder / name
            os.replace(partial, final)
            _fsync_dir(folder)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return final

    def write(self, data: bytes, study_uid: str, sop_uid: str) -> SpoolEntry:
        """Store one Part 10 instance durably; returns once it is safe to answer Success."""
        self._reserve(len(data))
        name = f"{time.time_ns():020d}-{next(self._counter):06d}{SUFFIX}"
        try:
            final = self._durable(data, self.incoming, name)
        except BaseException:
            self._release(len(data))
            raise
        return SpoolEntry(final, study_uid, sop_uid, len(data))

    def write_result(self, data: bytes) -> ResultFile:
        """Store one of our result objects durably (not capped: its source instance was
        acknowledged already; it counts in the spool's bytes). ValueError when it has no
        usable UIDs."""
        study, sop = read_uids(data)
        if not _UID.match(sop):
            raise ValueError("the result's SOPInstanceUID is not a plain UID")
        path = self.results / f"{sop}{SUFFIX}"
        old = path.stat().st_size if path.exists() else None  # the same object again
        final = self._durable(data, self.results, path.name)
        with self._lock:
            self._used += len(data) - (old or 0)
            self._results += old is None
        return ResultFile(final, study, sop, len(data))

    def pending_results(self) -> tuple[list[ResultFile], list[tuple[Path, str]]]:
        """Result files waiting in ``results/`` (replayed at start) and the unreadable ones,
        each with why (the caller moves them with :meth:`fail_result`)."""
        files: list[ResultFile] = []
        unreadable: list[tuple[Path, str]] = []
        for path in sorted(self.results.glob(f"*{SUFFIX}"), key=lambda p: p.stat().st_mtime):
            try:
                study, sop = read_uids(path)
            except ValueError as exc:
                unreadable.append((path, str(exc)))
                continue
            files.append(ResultFile(path, study, sop, path.stat().st_size))
        return files, unreadable

    def _result_path(self, sop_uid: str) -> Path:
        if not _UID.match(sop_uid):
            raise ValueError("not a plain UID")
        return self.results / f"{sop_uid}{SUFFIX}"

    def remove_result(self, sop_uid: str) -> None:
        """The result is delivered everywhere: forget it."""
        path = self._result_path(sop_uid)
        with contextlib.suppress(FileNotFoundError):
            size = path.stat().st_size
            path.unlink()
            self._release_result(size)
            _fsync_dir(self.results)

    def fail_result(self, sop_uid: str | Path) -> Path | None:
        """Keep a result that was given up on in ``failed/results/`` (not replayed)."""
        path = sop_uid if isinstance(sop_uid, Path) else self._result_path(sop_uid)
        target = self.failed_results / path.name
        try:
            size = path.stat().st_size
            os.replace(path, target)
        except FileNotFoundError:
            return None
        self._release_result(size)
        _fsync_dir(self.results)
        return target

    def _release_result(self, size: int) -> None:
        with self._lock:
            self._used -= size
            self._results -= 1

    def pending(self) -> tuple[list[SpoolEntry], list[tuple[Path, str]]]:
        """Entries in ``incoming/`` in arrival order (replay at start), and the files that
        cannot be read back, each with why (the caller moves them to ``failed/``)."""
        entries: list[SpoolEntry] = []
        unreadable: list[tuple[Path, str]] = []
        for path in sorted(self.incoming.glob(f"*{SUFFIX}")):
            try:
                study, sop = read_uids(path)
            except ValueError as exc:
                unreadable.append((path, str(exc)))
                continue
            entries.append(SpoolEntry(path, study, sop, path.stat().st_size))
        return entries, unreadable

    def read(self, entry: SpoolEntry) -> bytes:
        return entry.path.read_bytes()

    def remove(self, entry: SpoolEntry) -> None:
        """The instance's fate is settled (analysed or refused): forget it."""
        with contextlib.suppress(FileNotFoundError):
            entry.path.unlink()
            self._release(entry.size)
            _fsync_dir(self.incoming)

    def move_to_failed(self, path: Path, size: int | None = None) -> Path:
        """Keep an instance we gave up on where an operator can find it (not replayed)."""
        target = self.failed / path.name
        size = path.stat().st_size if size is None else size
        os.replace(path, target)
        self._release(size)
        _fsync_dir(self.incoming)
        return target
