"""The durable results spool (shared/dicomnet/spool.py): write, replay, fail, cap.

Files on a real file system; deliveries to a real Orthanc (tests/peers/orthanc.py), not
running while results wait; a fake peer (httpx MockTransport) only plays one that
rejects an object for good.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from shared.dicomnet import DeliveryQueueFull, DicomWebDestination, ResultsDelivery
from shared.dicomnet.delivery import RetryPolicy
from shared.dicomnet.spool import DurableResults, ResultSpoolFull, ResultStore
from tests.integration.stack import free_port
from tests.peers.orthanc import Orthanc
from tests.unit.test_results_delivery import (
    FAST,
    GSPS_CLASS,
    PATIENT,
    SR_CLASS,
    broken_peer,
    results,
    stow,
)


def store(root: Path, max_objects: int | None = None) -> ResultStore:
    return ResultStore(root / "results", root / "failed", root / "tmp", max_objects=max_objects)


def test_write_is_durable_capped_and_survives_a_restart(tmp_path: Path) -> None:
    study, objects, uids = results()
    spool = store(tmp_path, max_objects=2)
    written = [spool.write(data) for data in objects]
    assert [(r.study_uid, r.sop_uid) for r in written] == [(study, uids[0]), (study, uids[1])]
    assert [(tmp_path / "results" / f"{uid}.dcm").read_bytes() for uid in uids] == objects
    assert list((tmp_path / "tmp").iterdir()) == []
    assert (spool.count, spool.used_bytes, spool.has_room(1)) == (2, sum(map(len, objects)), False)
    _, more, _ = results()
    with pytest.raises(ResultSpoolFull, match="RESULTS_QUEUE_SIZE") as refused:
        spool.write(more[0])
    assert refused.value.status_code == 503 and refused.value.retry_after_s
    spool.write(objects[0])  # the same object again replaces its file: no room needed
    assert spool.count == 2

    (tmp_path / "tmp" / "half.dcm").write_bytes(b"torn")  # a crash mid-write
    (tmp_path / "results" / "1.2.3.9.dcm").write_bytes(b"garbage")
    again = store(tmp_path, max_objects=4)  # a restart
    files, unreadable = again.pending()
    assert sorted(r.sop_uid for r in files) == sorted(uids)
    assert [p.name for p, _why in unreadable] == ["1.2.3.9.dcm"]
    assert list((tmp_path / "tmp").iterdir()) == [] and again.count == 3
    again.remove(uids[0])
    assert again.fail(uids[1]) == tmp_path / "failed" / f"{uids[1]}.dcm"
    assert again.fail(unreadable[0][0]) is not None
    assert (again.count, again.used_bytes) == (0, 0)
    assert sorted(p.name for p in (tmp_path / "failed").iterdir()) == sorted(
        ["1.2.3.9.dcm", f"{uids[1]}.dcm"]
    )
    with pytest.raises(ValueError):
        again.remove("../tmp/x")


async def test_results_kept_at_a_stop_are_sent_at_the_next_start(
    orthanc_factory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    orthanc: Orthanc = orthanc_factory()
    orthanc.stop()
    study, objects, uids = results()
    caplog.set_level(logging.INFO, "shared.dicomnet")
    outcomes: list[str] = []
    first = ResultsDelivery([stow(orthanc)], retry=FAST)
    durable = DurableResults(store(tmp_path, 10), first, outcomes.append)
    await first.start()
    await durable.submit(objects)
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == sorted(
        f"{uid}.dcm" for uid in uids
    )
    await asyncio.sleep(0.5)  # attempts fail: Orthanc is not running
    await durable.close()
    await first.stop(0.1)
    assert outcomes == ["kept", "kept"] and durable.store.count == 2

    await asyncio.to_thread(orthanc.start)
    second = ResultsDelivery([stow(orthanc)], retry=FAST)
    restarted = DurableResults(store(tmp_path, 10), second, outcomes.append)
    await second.start()
    try:
        assert await restarted.replay() == 2
        assert await second.drain(20.0)
    finally:
        await restarted.close()
        await second.stop(1.0)
    assert orthanc.study_instances(study) == {uids[0]: SR_CLASS, uids[1]: GSPS_CLASS}
    assert outcomes[2:] == ["delivered", "delivered"]
    assert list((tmp_path / "results").iterdir()) == [] and restarted.store.count == 0
    assert PATIENT not in caplog.text


async def settle(durable: DurableResults, objects: list[bytes]) -> None:
    """Submit and wait until the delivery is done with every object, then stop it."""
    await durable.delivery.start()
    try:
        await durable.submit(objects)
        assert await durable.delivery.drain(10.0)
    finally:
        await durable.delivery.stop(1.0)


async def test_rejected_or_out_of_budget_results_go_to_failed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    study, objects, uids = results()
    rejecting = DicomWebDestination(  # a broken peer: refuses the SR for good, stores the GSPS
        "http://127.0.0.1:9/dicom-web", timeout_s=1.0,
        transport=broken_peer(202, {uids[0]: 0xC000}, [uids[1]]),
    )
    await settle(DurableResults(store(tmp_path, 10), ResultsDelivery([rejecting], retry=FAST)),
                 objects)
    assert [p.name for p in (tmp_path / "failed").iterdir()] == [f"{uids[0]}.dcm"]
    assert list((tmp_path / "results").iterdir()) == []
    assert f"result {uids[0]} not delivered (rejected)" in caplog.text

    closed = DicomWebDestination(f"http://127.0.0.1:{free_port()}/dicom-web", timeout_s=1.0)
    short = ResultsDelivery([closed], retry=RetryPolicy(0.1, 0.1, 0.3))
    _, objects, uids = results()
    await settle(DurableResults(store(tmp_path / "budget", 10), short), objects)
    assert sorted(p.name for p in (tmp_path / "budget" / "failed").iterdir()) == sorted(
        f"{uid}.dcm" for uid in uids
    )
    assert short.counts().failed == 2 and PATIENT not in caplog.text


async def test_a_full_queue_or_spool_leaves_no_file_and_replay_waits_for_room(
    tmp_path: Path,
) -> None:
    closed = DicomWebDestination(f"http://127.0.0.1:{free_port()}/dicom-web", timeout_s=1.0)
    delivery = ResultsDelivery([closed], queue_size=2, retry=RetryPolicy(5.0, 5.0, 60.0))
    durable = DurableResults(store(tmp_path, 3), delivery)
    await delivery.start()
    try:
        _, objects, _ = results()
        await durable.submit(objects)
        _, more, _ = results()
        assert not durable.has_room(2)
        with pytest.raises(DeliveryQueueFull, match="queue is full"):
            await durable.submit(more)
        assert durable.store.count == 2 and len(list((tmp_path / "results").iterdir())) == 2
    finally:
        await delivery.stop(0.1)
    # A restart with a queue of one object: one file is handed over now, one as room frees.
    small = ResultsDelivery([closed], queue_size=1, retry=RetryPolicy(5.0, 5.0, 60.0))
    again = DurableResults(store(tmp_path, 3), small)
    await small.start()
    try:
        assert await again.replay() == 2
        assert small.counts().queued == 1
    finally:
        await again.close()
        await small.stop(0.1)
    assert again.store.count == 2  # both kept for the next start


async def test_a_failed_write_refuses_without_a_file_left(tmp_path: Path) -> None:
    closed = DicomWebDestination(f"http://127.0.0.1:{free_port()}/dicom-web", timeout_s=1.0)
    delivery = ResultsDelivery([closed], retry=RetryPolicy(5.0, 5.0, 60.0))
    durable = DurableResults(store(tmp_path, 10), delivery)
    (tmp_path / "tmp").rmdir()
    (tmp_path / "tmp").write_bytes(b"")  # writes into tmp/ now fail (NotADirectoryError)
    await delivery.start()
    try:
        with pytest.raises(ResultSpoolFull, match="cannot be written") as refused:
            await durable.submit(results()[1])
    finally:
        await delivery.stop(0.1)
    assert refused.value.status_code == 503
    assert list((tmp_path / "results").iterdir()) == [] and delivery.counts().queued == 0
