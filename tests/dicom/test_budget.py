"""The resource budget of one upload: caps by prescan, workers with RLIMIT_AS, pool sizing.

Each bomb (tests/dicom/hostile.py BOMBS) must be refused by its cap, naming the
setting, in milliseconds and without big allocations, in-process and in the
gateway's isolated mode; the workers must really run under their address-space
limit, with a scrubbed environment; the pool is sized from the cgroup quota.
"""

from __future__ import annotations

import os
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from bench.dicoms import make_dx_dicom, radiograph_pixels
from shared import dicom
from shared.dicom import limits, pool, protocol
from tests.dicom import hostile
from tests.dicom.corpus import to_bytes


@pytest.mark.parametrize("name", sorted(hostile.BOMBS))
def test_bomb_is_refused_by_its_cap_in_process(name: str) -> None:
    maker, limit = hostile.BOMBS[name]
    data = maker()
    started = time.perf_counter()
    with pytest.raises(dicom.DicomLimitError) as info:
        dicom.decode_dicom(data)
    elapsed = time.perf_counter() - started
    assert info.value.limit == limit and limit in info.value.message
    assert info.value.status_code == 422
    assert elapsed < 1.0, f"{elapsed:.2f} s"
    tracemalloc.start()  # (it slows the walk down 30x: timed above, without it)
    try:
        with pytest.raises(dicom.DicomLimitError):
            dicom.decode_dicom(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 40 * 1024 * 1024, f"allocated {peak / 2**20:.0f} MiB"  # pydicom: 600+


@pytest.mark.parametrize("name", sorted(hostile.BOMBS))
def test_bomb_is_refused_by_its_cap_in_a_worker(
    name: str, decoder_pool: dicom.DecoderPool
) -> None:
    maker, limit = hostile.BOMBS[name]
    data = maker()
    dicom.inspect_dicom(to_bytes(hostile.small_ds()), pool=decoder_pool)  # a worker is up
    started = time.perf_counter()
    with pytest.raises(dicom.DicomLimitError) as info:
        dicom.inspect_dicom(data, pool=decoder_pool)
    assert info.value.limit == limit
    assert time.perf_counter() - started < 2.0


def test_isolated_decode_is_identical_to_in_process(decoder_pool: dicom.DecoderPool) -> None:
    for maker in (lambda: to_bytes(hostile.small_ds()), hostile.j2k_small):
        data = maker()
        here, meta_here = dicom.decode_dicom(data)
        there, meta_there = dicom.decode_dicom(data, pool=decoder_pool)
        assert np.array_equal(here.pixels, there.pixels) and here.warnings == there.warnings
        assert meta_here == meta_there
        facts = dicom.inspect_dicom(data, pool=decoder_pool)
        assert (facts.rows, facts.columns) == (meta_here.rows, meta_here.columns)
        assert facts.decode_bytes == facts.rows * facts.columns * limits.DECODE_BYTES_PER_PIXEL


def _deflated_small() -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, hostile.small_ds())
    return hostile.deflated(hostile.deflate_raw(body.getvalue()))


@pytest.mark.parametrize(
    ("maker", "pixels_travel"),
    [
        (lambda: make_dx_dicom(radiograph_pixels(640, 480), compress=False), False),
        (lambda: make_dx_dicom(radiograph_pixels(640, 480), compress=True), False),
        (_deflated_small, True),  # inflated: its Pixel Data is not in the upload's bytes
    ],
    ids=["native", "j2k", "deflated"],
)
def test_the_decode_goes_on_from_the_inspection(
    maker: Callable[[], bytes], pixels_travel: bool, decoder_pool: dicom.DecoderPool
) -> None:
    """The budget's two steps read the header once: the inspection crosses the pipe without
    the Pixel Data the upload holds, and the decode that goes on from it gives what one
    call gives."""
    import pickle

    data = maker()
    whole, meta = dicom.decode_dicom(data, pool=decoder_pool)
    inspection = dicom.inspect_dicom(data, pool=decoder_pool)
    travelled = len(pickle.dumps(inspection, protocol=5))
    assert (travelled > 6144) is pixels_travel, travelled  # small_ds: 6144 bytes of pixels
    assert travelled < 16_384 or pixels_travel  # 640 x 480 x 2 = 600 KiB of pixels stay home
    for where in (decoder_pool, None):
        canonical, again = dicom.decode_dicom(data, pool=where, inspection=inspection)
        assert np.array_equal(canonical.pixels, whole.pixels)
        assert canonical.warnings == whole.warnings and again == meta


def test_caps_are_configurable_and_inclusive() -> None:
    data = hostile.sequence_item_bomb(100)
    loose = dicom.DecodeLimits(max_sequence_items=100)
    tight = dicom.DecodeLimits(max_sequence_items=99)
    dicom.decode_dicom(data, limits=loose)  # exactly at the cap: decodes
    with pytest.raises(dicom.DicomLimitError, match="more than 99 sequence items"):
        dicom.decode_dicom(data, limits=tight)
    small = dicom.DecodeLimits(max_pixels=64 * 48 - 1)
    with pytest.raises(dicom.DicomLimitError, match="MAX_PIXELS"):
        dicom.decode_dicom(to_bytes(hostile.small_ds()), limits=small)


def test_max_pixels_is_the_setting_under_one_hard_ceiling() -> None:
    big = hostile.j2k_claiming(9_000, 9_000)  # 81 megapixels
    with pytest.raises(dicom.DicomLimitError, match="40 megapixels") as info:
        dicom.inspect_dicom(big)  # the default setting, named
    assert info.value.limit == "MAX_PIXELS" and info.value.status_code == 422
    facts = dicom.inspect_dicom(big, limits=dicom.DecodeLimits(max_pixels=90_000_000))
    assert (facts.rows, facts.columns) == (9_000, 9_000)
    huge = hostile.j2k_claiming(12_000, 10_000)  # 120 megapixels: past any setting
    with pytest.raises(dicom.UnsupportedDicomError, match="100 megapixels") as ceiling:
        dicom.inspect_dicom(huge, limits=dicom.DecodeLimits(max_pixels=150_000_000))
    assert ceiling.value.status_code == 422


def test_deep_nesting_is_refused() -> None:
    import struct

    head, pixels = hostile._split_at_pixel_data(hostile._explicit_body(hostile.small_ds()))
    open_sq = struct.pack("<HH2sHI", 0x0009, 0x1010, b"SQ", 0, 0xFFFFFFFF) + struct.pack(
        "<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF
    )
    close_sq = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    nested = hostile._with_meta(head + open_sq * 40 + close_sq * 40 + pixels)
    with pytest.raises(dicom.DicomLimitError, match="MAX_DICOM_SEQUENCE_DEPTH"):
        dicom.decode_dicom(nested)


def test_workers_run_under_rlimit_as_with_a_scrubbed_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PSEUDONYM_SECRET", "must-not-reach-a-worker")
    with dicom.DecoderPool(1, memory_mb=900) as workers:
        dicom.inspect_dicom(to_bytes(hostile.small_ds()), pool=workers)
        (pid,) = workers.pids()
        limits_text = Path(f"/proc/{pid}/limits").read_text()
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    line = next(row for row in limits_text.splitlines() if row.startswith("Max address space"))
    assert line.split()[3:5] == [str(900 * 2**20)] * 2, line  # soft and hard
    assert not any(b"PSEUDONYM_SECRET" in entry for entry in environ)
    assert b"OPENBLAS_NUM_THREADS=1" in environ


def test_out_of_worker_memory_is_a_refusal_not_a_crash() -> None:
    """A 36-megapixel JPEG 2000 claim decoded in a worker with too little address space."""
    data = hostile.j2k_claiming(6000, 6000)  # under MAX_PIXELS: the decoder runs
    with dicom.DecoderPool(1, memory_mb=420, timeout_s=10) as workers:
        with pytest.raises(dicom.DicomError):
            dicom.decode_dicom(data, pool=workers)
        canonical, _ = dicom.decode_dicom(to_bytes(hostile.small_ds()), pool=workers)
    assert canonical.pixels.shape == (64, 48)  # the pool recovered


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_pools_are_independent_and_close_stops_their_workers() -> None:
    """No module-global pool: each owner's workers are its own, until it closes them."""
    data = to_bytes(hostile.small_ds())
    with dicom.DecoderPool(1) as first, dicom.DecoderPool(1) as second:
        assert first.pids() == [] and second.pids() == []  # nothing runs before it is used
        dicom.inspect_dicom(data, pool=first)
        dicom.inspect_dicom(data, pool=second)
        (mine,), (theirs,) = first.pids(), second.pids()
        assert mine != theirs
        first.close()
        assert first.pids() == [] and _gone(mine)
        assert dicom.inspect_dicom(data, pool=second).rows == 64 and second.pids() == [theirs]
    assert _gone(theirs)


def test_a_killed_worker_is_replaced(decoder_pool: dicom.DecoderPool) -> None:
    data = to_bytes(hostile.small_ds())
    dicom.inspect_dicom(data, pool=decoder_pool)
    for pid in decoder_pool.pids():
        os.kill(pid, 9)
    time.sleep(0.2)
    assert dicom.inspect_dicom(data, pool=decoder_pool).rows == 64  # retried on a fresh one


@pytest.mark.parametrize(
    ("v2", "v1", "affinity", "expected"),
    [
        ("max 100000\n", None, 16, 16),
        ("200000 100000\n", None, 16, 2),
        ("150000 100000\n", None, 16, 2),  # 1.5 CPUs: two workers
        ("50000 100000\n", None, 16, 1),
        (None, ("300000", "100000"), 16, 3),
        (None, ("-1", "100000"), 16, 16),
        ("400000 100000\n", None, 2, 2),  # the affinity mask is smaller
        (None, None, 4, 4),
    ],
)
def test_pool_size_follows_the_cgroup_quota(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    v2: str | None,
    v1: tuple[str, str] | None,
    affinity: int,
    expected: int,
) -> None:
    cpu_max = tmp_path / "cpu.max"
    if v2 is not None:
        cpu_max.write_text(v2)
    v1_dir = tmp_path / "cpu"
    if v1 is not None:
        v1_dir.mkdir()
        (v1_dir / "cpu.cfs_quota_us").write_text(v1[0])
        (v1_dir / "cpu.cfs_period_us").write_text(v1[1])
    monkeypatch.setattr(pool, "_CGROUP_V2", cpu_max)
    monkeypatch.setattr(pool, "_CGROUP_V1", (v1_dir,))
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(affinity)))
    assert pool.available_cpus() == expected
    assert pool.DecoderPool().size == expected  # a pool's default size, read when it is made


def test_errors_with_keyword_arguments_cross_the_worker_pipe(
    decoder_pool: dicom.DecoderPool,
) -> None:
    """Input selection refusals (NotSelectedError takes ``rule=``) come back as themselves."""
    from gateway.pipeline.decode import selection_rules
    from shared.settings import GatewaySettings

    rules = selection_rules(GatewaySettings(_env_file=None))
    assert rules is not None
    ds = hostile.small_ds()
    ds.BodyPartExamined = "CHEST"
    data = to_bytes(ds)
    with pytest.raises(dicom.NotSelectedError) as here:
        dicom.decode_dicom(data, selection=rules)
    for call in (dicom.decode_dicom, dicom.inspect_dicom):
        with pytest.raises(dicom.NotSelectedError) as there:
            call(data, pool=decoder_pool, selection=rules)
        assert (there.value.message, there.value.rule) == (here.value.message, here.value.rule)


def test_a_worker_reply_cannot_name_arbitrary_callables() -> None:
    import pickle

    evil = pickle.dumps((True, os.system), protocol=5)
    with pytest.raises(pickle.UnpicklingError):
        protocol.load_reply(evil)
    ok = pickle.dumps((True, dicom.decode_dicom(to_bytes(hostile.small_ds()))), protocol=5)
    assert protocol.load_reply(ok)[1][0].pixels.shape == (64, 48)
