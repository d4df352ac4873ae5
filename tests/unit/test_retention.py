"""Bounded disk on its own: the retention policy (age, bytes, oldest first, never what is
still live), the listener's folders (finished work pruned, acknowledged work never), the
caps that refuse new work (bytes, free disk) and the per-folder gauges. The listener
refusing real C-STOREs and the gateway's 503 are in tests/integration/test_retention.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from dicom_listener import disk
from dicom_listener.spool import Spool, SpoolFull
from shared.dicomnet.retention import (
    FolderGauges,
    HeldFile,
    RetentionPolicy,
    Sweep,
    disk_refusal,
    expired,
    held_files,
    prune,
)
from shared.dicomnet.spool import ResultStore
from shared.settings import ListenerSettings
from tests.unit.test_dicom_listener import STUDY, _instance

NOW = 1_000_000_000.0
DAY = 86400.0
HUGE = 2**62  # more free bytes than any disk has


def _file(folder: Path, name: str, size: int, age_s: float) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(b"x" * size)
    os.utime(path, (NOW - age_s, NOW - age_s))
    return path


def _names(chosen: list[HeldFile]) -> list[str]:
    return [held.path.name for held in chosen]


def test_age_removes_only_what_is_older_than_the_limit(tmp_path: Path) -> None:
    for name, age in (("a", 5 * DAY), ("b", 3 * DAY), ("c", 1 * DAY)):
        _file(tmp_path, name, 10, age)
    files = held_files(tmp_path, "*")
    assert _names(expired(files, RetentionPolicy(max_age_s=2 * DAY), NOW)) == ["a", "b"]
    assert expired(files, RetentionPolicy(max_age_s=0), NOW) == []  # 0 = no age limit


def test_bytes_remove_the_oldest_first_until_within_the_cap(tmp_path: Path) -> None:
    # Written out of name order: the age decides, not the name.
    for name, age in (("new", 1), ("oldest", 50), ("mid", 20), ("old", 30), ("newer", 10)):
        _file(tmp_path, name, 100, age)
    files = held_files(tmp_path, "*")
    assert _names(files) == ["oldest", "old", "mid", "newer", "new"]
    assert _names(expired(files, RetentionPolicy(max_bytes=250), NOW)) == [
        "oldest", "old", "mid"
    ]
    assert expired(files, RetentionPolicy(max_bytes=500), NOW) == []  # at the cap: kept
    assert expired(files, RetentionPolicy(), NOW) == []  # no limits: nothing goes
    both = RetentionPolicy(max_age_s=40, max_bytes=150)  # age: oldest; bytes: 3 more
    assert _names(expired(files, both, NOW)) == ["oldest", "old", "mid", "newer"]


def test_what_keep_spares_is_never_removed_but_counts_toward_the_bytes(tmp_path: Path) -> None:
    live = _file(tmp_path, "live", 100, 99 * DAY)
    _file(tmp_path, "done-old", 100, 50 * DAY)
    _file(tmp_path, "done-new", 100, 1)
    sweep = Sweep("test", tmp_path, "*", RetentionPolicy(max_age_s=DAY, max_bytes=100),
                  keep=lambda path: path == live)
    removed = prune(sweep, now=NOW)
    assert (removed.files, removed.bytes) == (2, 200)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live"]


def test_the_listener_prunes_finished_work_and_never_acknowledged_work(tmp_path: Path) -> None:
    settings = ListenerSettings(
        listener_failed_max_age_s=DAY, listener_failed_max_bytes=1000,
        listener_reports_max_age_s=DAY, listener_reports_max_bytes=10,
    )
    spool = Spool(tmp_path / "spool", max_instance_bytes=10**7, max_total_bytes=10**8)
    waiting = spool.write(_instance("1.2.3.4.5"), STUDY, "1.2.3.4.5").path
    os.utime(waiting, (NOW - 99 * DAY, NOW - 99 * DAY))  # old and big: still acknowledged
    result = _file(spool.results, "1.2.3.4.6.dcm", 5000, 99 * DAY)  # not yet delivered
    _file(spool.failed, "old.dcm", 10, 2 * DAY)
    _file(spool.failed, "big.dcm", 900, 60)
    _file(spool.failed, "recent.dcm", 200, 30)
    _file(spool.failed_results, "old-result.dcm", 10, 3 * DAY)
    _file(spool.failed_results, "result.dcm", 10, 60)
    reports = tmp_path / "studies"
    for uid, status in (("1.1", "open"), ("1.2", "complete"), ("1.3", "complete")):
        path = reports / f"{uid}.json"
        reports.mkdir(exist_ok=True)
        path.write_text(json.dumps({"study_instance_uid": uid, "status": status}))
        os.utime(path, (NOW - (99 * DAY if uid != "1.3" else 60),) * 2)

    for sweep in disk.sweeps(settings, spool, reports):
        prune(sweep, now=NOW)

    assert waiting.exists() and result.exists()  # incoming/ and results/: never pruned
    assert sorted(p.name for p in spool.failed.glob("*.dcm")) == ["recent.dcm"]
    assert sorted(p.name for p in spool.failed_results.iterdir()) == ["result.dcm"]
    assert sorted(p.name for p in reports.iterdir()) == ["1.1.json"]  # open: kept


def test_a_nearly_full_disk_refuses_new_work_and_only_new_work(tmp_path: Path) -> None:
    assert disk_refusal(tmp_path, 0) is None
    assert disk_refusal(tmp_path, 1) is None
    assert "DISK_MIN_FREE_BYTES" in (disk_refusal(tmp_path, HUGE) or "")
    spool = Spool(tmp_path / "spool", max_instance_bytes=10**7, max_total_bytes=10**8,
                  min_free_bytes=HUGE)
    with pytest.raises(SpoolFull, match="DISK_MIN_FREE_BYTES"):
        spool.write(_instance(), STUDY, "1.2.3.4.5")
    assert spool.count == 0 and list(spool.incoming.iterdir()) == []
    # The results of an instance already acknowledged are written whatever the disk says.
    assert spool.write_result(_instance("1.2.3.4.7")).path.exists()


def test_the_results_spool_refuses_at_its_byte_cap_until_delivery_drains_it(
    tmp_path: Path,
) -> None:
    data = _instance("1.2.3.4.8")
    store = ResultStore(tmp_path / "results", tmp_path / "failed", tmp_path / "tmp",
                        max_objects=100, max_bytes=len(data))
    assert store.refusal(2) is None
    store.write(data)  # work accepted before the cap: written
    assert "RESULTS_SPOOL_MAX_BYTES" in (store.refusal(2) or "")
    assert not store.has_room(2)
    store.remove("1.2.3.4.8")  # delivered
    assert store.refusal(2) is None
    floor = ResultStore(tmp_path / "r2", tmp_path / "f2", tmp_path / "t2", min_free_bytes=HUGE)
    assert "DISK_MIN_FREE_BYTES" in (floor.refusal(2) or "")


def test_gauges_report_bytes_and_files_per_folder_at_each_scrape(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    FolderGauges("spine_test_folder", "a test", {
        "a": (tmp_path / "a", "*.dcm"), "missing": (tmp_path / "none", "*.dcm"),
    }, registry)
    _file(tmp_path / "a", "one.dcm", 100, 1)
    _file(tmp_path / "a", "two.dcm", 23, 1)
    _file(tmp_path / "a", "other.txt", 1000, 1)  # not the folder's kind of file

    def sample(name: str, folder: str) -> float | None:
        return registry.get_sample_value(name, {"folder": folder})

    assert (sample("spine_test_folder_bytes", "a"), sample("spine_test_folder_files", "a")) == (
        123, 2)
    assert sample("spine_test_folder_files", "missing") == 0
    (tmp_path / "a" / "one.dcm").unlink()
    assert sample("spine_test_folder_bytes", "a") == 23
