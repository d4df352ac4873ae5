"""Bounded disk: what the spools' folders hold, what may be pruned, when to refuse.

Two rules keep the disk bounded without losing acknowledged work:

- **Prune only what is finished.** :func:`prune` removes files by age
  (``max_age_s``) and then, oldest first, until the folder is within ``max_bytes``; it
  is pointed only at folders of settled work (``failed/``, ``failed/results/``, closed
  study reports) and a ``keep`` predicate spares what is still live (an open study's
  report). Folders of acknowledged, unfinished work (a spool's ``incoming/``, results
  waiting for delivery) are never pruned.
- **Refuse new work at a cap.** Those folders are capped instead: a caller checks
  :func:`disk_refusal` (and its own byte cap) before it acknowledges new work, and
  answers "out of resources" (C-STORE A700, HTTP 503 + Retry-After) while full.

:class:`FolderGauges` reports the bytes and files each folder holds, computed when
``/metrics`` is scraped. Torch-free; no process state.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetentionPolicy:
    """How long and how much finished work a folder keeps; 0 = no limit of that kind."""

    max_age_s: float = 0.0
    max_bytes: int = 0


@dataclass(frozen=True)
class HeldFile:
    path: Path
    mtime: float
    size: int


@dataclass(frozen=True)
class FolderUsage:
    files: int
    bytes: int


def held_files(folder: Path, pattern: str) -> list[HeldFile]:
    """The regular files directly in ``folder`` matching ``pattern``, oldest first."""
    found: list[HeldFile] = []
    for path in folder.glob(pattern):
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue  # removed meanwhile (delivered, moved by an operator)
        if path.is_file():
            found.append(HeldFile(path, stat.st_mtime, stat.st_size))
    return sorted(found, key=lambda held: (held.mtime, held.path.name))


def usage(folder: Path, pattern: str) -> FolderUsage:
    files = held_files(folder, pattern) if folder.is_dir() else []
    return FolderUsage(len(files), sum(held.size for held in files))


def expired(
    files: Sequence[HeldFile], policy: RetentionPolicy, now: float,
    keep: Callable[[Path], bool] = lambda _path: False,
) -> list[HeldFile]:
    """What the policy removes from ``files``: those older than ``max_age_s``, then the
    oldest until the rest is within ``max_bytes``. Files ``keep`` spares count toward the
    bytes but are never chosen."""
    ordered = sorted(files, key=lambda held: (held.mtime, held.path.name))
    candidates = [held for held in ordered if not keep(held.path)]
    chosen = [
        held for held in candidates
        if policy.max_age_s > 0 and now - held.mtime > policy.max_age_s
    ]
    gone = {held.path for held in chosen}
    total = sum(held.size for held in ordered) - sum(held.size for held in chosen)
    for held in candidates:
        if not policy.max_bytes or total <= policy.max_bytes:
            break
        if held.path not in gone:
            chosen.append(held)
            gone.add(held.path)
            total -= held.size
    return chosen


@dataclass(frozen=True)
class Sweep:
    """One folder of finished work and its policy."""

    name: str
    folder: Path
    pattern: str
    policy: RetentionPolicy
    keep: Callable[[Path], bool] = lambda _path: False


def prune(sweep: Sweep, now: float | None = None) -> FolderUsage:
    """Remove what ``sweep``'s policy lets go; returns what was removed."""
    if not sweep.folder.is_dir():
        return FolderUsage(0, 0)
    now = time.time() if now is None else now
    removed = FolderUsage(0, 0)
    for held in expired(held_files(sweep.folder, sweep.pattern), sweep.policy, now, sweep.keep):
        try:
            held.path.unlink()
        except FileNotFoundError:
            continue
        removed = FolderUsage(removed.files + 1, removed.bytes + held.size)
    if removed.files:
        log.info("retention: %d file(s), %d bytes removed from %s (%s)", removed.files,
                 removed.bytes, sweep.name, sweep.folder)
    return removed


async def sweep_forever(sweeps: Sequence[Sweep], interval_s: float) -> None:
    """Prune each folder now and every ``interval_s`` (in a thread: it walks folders)."""
    while True:
        for sweep in sweeps:
            try:
                await asyncio.to_thread(prune, sweep)
            except OSError as exc:  # a folder we cannot read must not stop the others
                log.warning("retention of %s failed: %s", sweep.name, type(exc).__name__)
        await asyncio.sleep(interval_s)


def disk_refusal(folder: Path, min_free_bytes: int, adding: int = 0) -> str | None:
    """Why ``folder``'s file system cannot take ``adding`` more bytes of new work while
    keeping ``DISK_MIN_FREE_BYTES`` free; None when it can."""
    if min_free_bytes <= 0:
        return None
    try:
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        return f"the disk of {folder.name}/ cannot be checked ({type(exc).__name__})"
    if free - adding < min_free_bytes:
        return (f"the disk is nearly full ({free} bytes free, DISK_MIN_FREE_BYTES "
                f"{min_free_bytes}); retry later")
    return None


class FolderGauges(Collector):
    """``<prefix>_bytes`` and ``<prefix>_files`` gauges, label ``folder``, measured at
    each scrape (so they are true whoever changed the folder: us, retention, an operator)."""

    def __init__(
        self, prefix: str, what: str, folders: dict[str, tuple[Path, str]],
        registry: CollectorRegistry,
    ) -> None:
        self.prefix, self.what, self.folders = prefix, what, folders
        registry.register(self)

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return self._families({})

    def collect(self) -> Iterator[GaugeMetricFamily]:
        found = {name: usage(*where) for name, where in self.folders.items()}
        yield from self._families(found)

    def _families(self, found: dict[str, FolderUsage]) -> Iterator[GaugeMetricFamily]:
        size = GaugeMetricFamily(
            f"{self.prefix}_bytes", f"Bytes held in each folder of {self.what}",
            labels=["folder"],
        )
        count = GaugeMetricFamily(
            f"{self.prefix}_files", f"Files held in each folder of {self.what}",
            labels=["folder"],
        )
        for name, held in found.items():
            size.add_metric([name], held.bytes)
            count.add_metric([name], held.files)
        yield size
        yield count

