"""Results on disk until every destination has them: the durable side of the delivery.

:class:`ResultsDelivery` queues in memory. :class:`ResultStore` keeps each result object
(an SR or a presentation state) as ``results/<SOPInstanceUID>.dcm``, written to ``tmp/``,
flushed, fsynced, renamed (atomic on one file system) and the folder fsynced, so a
stop or a crash loses none. :class:`DurableResults` joins the two: it writes the objects
before it submits them, removes a file once it is delivered everywhere, moves it to the
store's failed folder when a destination rejected it or the retry budget ran out (logged
with its SOP Instance UID only), keeps it on a shutdown, and at the next start hands
what ``results/`` holds to the delivery again (:meth:`DurableResults.replay`).
Used by the DICOM listener (its spool's ``results/``) and by the gateway's STOW-RS path
(``RESULTS_SPOOL_DIR``). Thread-safe store; torch-free.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from shared.dicomnet.delivery import DeliveryQueueFull, ResultsDelivery
from shared.dicomnet.retention import disk_refusal

log = logging.getLogger(__name__)

SUFFIX = ".dcm"
_UID = re.compile(r"^[0-9.]{1,64}$")  # a result's file name is its SOP Instance UID


class ResultSpoolFull(DeliveryQueueFull):
    """The store holds its cap of result objects: refuse the work that would make more."""


@dataclass(frozen=True)
class ResultFile:
    """One SR or presentation state in ``results/``, waiting to be delivered."""

    path: Path
    study_uid: str
    sop_uid: str
    size: int


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_write(data: bytes, tmp: Path, folder: Path, name: str) -> Path:
    """Write ``tmp/name``, flush, fsync, rename into ``folder``, fsync the folder.

    The temporary name is the writing thread's own (the same object written twice at once,
    e.g. a resend while its first copy is analysed, never shares a half-written file)."""
    partial = tmp / f"{os.getpid()}-{threading.get_ident()}-{name}"
    try:
        with partial.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        final = folder / name
        os.replace(partial, final)
        fsync_dir(folder)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return final


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


def read_each(
    paths: list[Path],
) -> tuple[list[tuple[Path, str, str, int]], list[tuple[Path, str]]]:
    """``(path, study UID, SOP UID, size)`` of each readable file, in order, and the
    unreadable ones with why: what a spool replays, and what it moves aside."""
    readable: list[tuple[Path, str, str, int]] = []
    unreadable: list[tuple[Path, str]] = []
    for path in paths:
        try:
            study, sop = read_uids(path)
        except ValueError as exc:
            unreadable.append((path, str(exc)))
            continue
        readable.append((path, study, sop, path.stat().st_size))
    return readable, unreadable


class ResultStore:
    """``results/`` (waiting), ``failed/`` (given up, not replayed), ``tmp/`` (being written).

    ``max_objects`` caps the files in ``results/``, ``max_bytes`` their bytes and
    ``min_free_bytes`` the free space left on the disk (None / 0: no cap of its own; the
    DICOM listener caps its whole spool instead, before it acknowledges an instance); a
    caller checks :meth:`refusal` before the work that makes the objects, so a full
    store refuses early. Results of work already accepted are always written.
    """

    def __init__(
        self, results: Path, failed: Path, tmp: Path, *, max_objects: int | None = None,
        max_bytes: int | None = None, min_free_bytes: int = 0,
    ) -> None:
        self.results, self.failed, self.tmp = results, failed, tmp
        for folder in (results, failed, tmp):
            folder.mkdir(parents=True, exist_ok=True)
        self.max_objects = max_objects
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        for stale in tmp.glob(f"*{SUFFIX}"):  # half-written by a crash: never submitted
            stale.unlink(missing_ok=True)
        self._lock = threading.Lock()
        files = list(results.glob(f"*{SUFFIX}"))
        self._used = sum(p.stat().st_size for p in files)
        self._count = len(files)
        self._reserved = 0

    @property
    def used_bytes(self) -> int:
        return self._used

    @property
    def count(self) -> int:
        """Result objects in ``results/``."""
        return self._count

    def has_room(self, objects: int) -> bool:
        return self.refusal(objects) is None

    def refusal(self, objects: int) -> str | None:
        """Why ``objects`` more result objects of new work would not fit; None when they
        would. Bytes: full at or over ``max_bytes`` (a result's size is known only once
        it is made, so one request may pass the cap by its own results)."""
        with self._lock:
            if not self._fits(objects):
                return (f"the results spool is full ({self.max_objects} objects, "
                        "RESULTS_QUEUE_SIZE); retry later")
            if self.max_bytes is not None and self._used >= self.max_bytes:
                return (f"the results spool is full ({self._used} bytes waiting for "
                        f"delivery, RESULTS_SPOOL_MAX_BYTES {self.max_bytes}); retry later")
        return disk_refusal(self.results, self.min_free_bytes)

    def _fits(self, objects: int) -> bool:
        return self.max_objects is None or (
            self._count + self._reserved + objects <= self.max_objects
        )

    def _reserve(self, objects: int) -> None:
        """Hold room while a file is written (two writers never both take the last)."""
        with self._lock:
            if not self._fits(objects):
                raise ResultSpoolFull(
                    f"the results spool is full ({self.max_objects} objects, "
                    "RESULTS_QUEUE_SIZE); retry later"
                )
            self._reserved += objects

    def write(self, data: bytes) -> ResultFile:
        """Store one result object durably. ValueError when it has no usable UIDs;
        :class:`ResultSpoolFull` at the cap."""
        study, sop = read_uids(data)
        if not _UID.match(sop):
            raise ValueError("the result's SOPInstanceUID is not a plain UID")
        path = self.results / f"{sop}{SUFFIX}"
        old = path.stat().st_size if path.exists() else None  # the same object again
        room = 1 if old is None else 0
        self._reserve(room)
        try:
            final = durable_write(data, self.tmp, self.results, path.name)
        except BaseException:
            with self._lock:
                self._reserved -= room
            raise
        with self._lock:
            self._reserved -= room
            self._used += len(data) - (old or 0)
            self._count += room
        return ResultFile(final, study, sop, len(data))

    def pending(self) -> tuple[list[ResultFile], list[tuple[Path, str]]]:
        """Files waiting in ``results/``, oldest first, and the unreadable ones with why
        (the caller moves them with :meth:`fail`)."""
        paths = sorted(self.results.glob(f"*{SUFFIX}"), key=lambda p: p.stat().st_mtime)
        readable, unreadable = read_each(paths)
        return [ResultFile(*found) for found in readable], unreadable

    def _path(self, sop_uid: str) -> Path:
        if not _UID.match(sop_uid):
            raise ValueError("not a plain UID")
        return self.results / f"{sop_uid}{SUFFIX}"

    def remove(self, sop_uid: str) -> None:
        """The result is delivered everywhere: forget it."""
        path = self._path(sop_uid)
        with contextlib.suppress(FileNotFoundError):
            size = path.stat().st_size
            path.unlink()
            self._release(size)
            fsync_dir(self.results)

    def fail(self, sop_uid: str | Path) -> Path | None:
        """Keep a result that was given up on in ``failed/`` (not replayed; an operator
        moves it back to ``results/`` to send it at the next start)."""
        path = sop_uid if isinstance(sop_uid, Path) else self._path(sop_uid)
        target = self.failed / path.name
        try:
            size = path.stat().st_size
            os.replace(path, target)
        except FileNotFoundError:
            return None
        self._release(size)
        fsync_dir(self.results)
        return target

    def _release(self, size: int) -> None:
        with self._lock:
            self._used -= size
            self._count -= 1


# What became of a stored result, for a caller's metrics: delivered, kept, failed.
OnOutcome = Callable[[str], None]


class DurableResults:
    """A :class:`ResultStore` in front of a :class:`ResultsDelivery` (see the module)."""

    def __init__(
        self, store: ResultStore, delivery: ResultsDelivery,
        on_outcome: OnOutcome | None = None,
    ) -> None:
        self.store = store
        self.delivery = delivery
        self.on_outcome = on_outcome
        self._resend: asyncio.Task[None] | None = None

    def has_room(self, objects: int) -> bool:
        return self.store.has_room(objects) and self.delivery.has_room(objects)

    async def submit(self, objects: list[bytes]) -> list[ResultFile]:
        """Write the objects durably, then queue them; a full queue, a full store or a
        failed write raises :class:`DeliveryQueueFull` (:class:`ResultSpoolFull`) and
        leaves no file behind."""
        if not self.delivery.enabled or not objects:
            return []
        if not self.delivery.has_room(len(objects)):
            raise DeliveryQueueFull("the results queue is full (RESULTS_QUEUE_SIZE)")
        written: list[ResultFile] = []
        try:
            for data in objects:
                written.append(await asyncio.to_thread(self.store.write, data))
            await self._submit(written, objects)  # the bytes in hand, not read back
        except BaseException as exc:
            for result in written:
                self.store.remove(result.sop_uid)
            if isinstance(exc, OSError):  # a full or failing disk: refuse, never a 500
                log.error("results spool write failed (%s)", type(exc).__name__)
                raise ResultSpoolFull(
                    f"the results spool cannot be written ({type(exc).__name__}); retry later"
                ) from None
            raise
        return written

    async def _submit(self, results: list[ResultFile], data: list[bytes] | None = None) -> None:
        """Queue stored results; ``data`` is their bytes when the caller holds them (a
        replay reads them back from disk)."""
        await self.delivery.submit(
            data if data is not None else [result.path.read_bytes() for result in results],
            study_uid=results[0].study_uid, sop_uids=[result.sop_uid for result in results],
            on_settled=self._settled,
        )

    def _settled(self, sop_uid: str, outcome: str) -> None:
        """The delivery is done with one object: drop, fail or keep its file."""
        if outcome == "delivered":
            self.store.remove(sop_uid)
            self._tell("delivered")
        elif outcome == "shutdown":
            self._tell("kept")  # sent again at the next start
        else:
            moved = self.store.fail(sop_uid)
            log.error("result %s not delivered (%s); kept in %s", sop_uid, outcome,
                      moved.parent if moved else "nowhere (gone)")
            self._tell("failed")

    def _tell(self, outcome: str) -> None:
        if self.on_outcome is not None:
            self.on_outcome(outcome)

    async def replay(self) -> int:
        """Hand what ``results/`` holds to the delivery again, a study (or as much of one as
        the queue holds) at a time; what does not fit now is handed over as room frees (a
        task). Returns how many files."""
        files, unreadable = self.store.pending()
        for path, why in unreadable:
            moved = self.store.fail(path)
            log.error("result file %s cannot be read back (%s); moved to %s",
                      path.name, why, moved.parent if moved else "nowhere (gone)")
            self._tell("failed")
        if not files:
            return 0
        if not self.delivery.enabled:
            log.warning("%d result(s) wait in %s but no RESULTS_* destination is set; "
                        "kept there", len(files), self.store.results)
            return 0
        by_study: dict[str, list[ResultFile]] = {}
        for result in files:
            by_study.setdefault(result.study_uid, []).append(result)
        # A study's files in pieces the queue can hold (its cap counts every destination).
        most = max(1, self.delivery.queue_size // max(1, len(self.delivery.destinations)))
        groups = [
            study[start:start + most] for study in by_study.values()
            for start in range(0, len(study), most)
        ]
        while groups and self.delivery.has_room(len(groups[0])):
            await self._submit(groups.pop(0))
        if groups:
            self._resend = asyncio.create_task(self._resend_later(groups), name="resend")
        return len(files)

    async def _resend_later(self, groups: list[list[ResultFile]]) -> None:
        while groups:
            if self.delivery.has_room(len(groups[0])):
                try:
                    await self._submit(groups[0])
                except DeliveryQueueFull:
                    pass
                else:
                    groups.pop(0)
                    continue
            await asyncio.sleep(0.5)

    async def close(self) -> None:
        """Stop handing kept files over (they stay on disk); call before the delivery stops."""
        if self._resend is not None:
            self._resend.cancel()
            await asyncio.gather(self._resend, return_exceptions=True)
            self._resend = None
