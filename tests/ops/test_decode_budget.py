"""Hostile files through the real gateway's /upload: refused by a cap, fast, at no memory cost.

Issue 12: a 12 KB Deflated file with a million empty sequence items took 34.5 s and
540 MB of the gateway, then answered 200. Each bomb here must be refused with a 4xx
naming its limit in under 2 s, and the gateway process's resident memory (VmRSS,
read from /proc) must grow by less than 64 MB, during the request and after it.
The gateway runs alone (model services are never reached for a refused upload).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.dicom import hostile
from tests.factories import make_dicom, radiograph_pixels
from tests.integration.scrape import metric
from tests.integration.stack import Service, base_env, free_port, start_service, wait_ready

pytestmark = pytest.mark.timeout(180)

MiB = 1024 * 1024


def resident_mb(pid: int) -> float:
    """VmRSS of a process, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


class PeakRss:
    """Samples a process's VmRSS every 5 ms while in the `with` block."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, resident_mb(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, resident_mb(self.pid))
            time.sleep(0.005)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A real gateway with default limits; its model URLs lead nowhere (never called here)."""
    folder = tmp_path_factory.mktemp("decode-budget")
    env = base_env(
        folder,
        CLASSIFIER_URLS=f"http://127.0.0.1:{free_port()}",
        DETECTOR_URLS=f"http://127.0.0.1:{free_port()}",
        PSEUDONYM_SECRET="decode-budget-pseudonym-secret-0123456789",
    )
    service = start_service("gateway", env, folder)
    try:
        wait_ready(service, timeout_s=120)
        warm = make_dicom(radiograph_pixels(640, 480, seed=3))
        for _ in range(3):  # decoder workers started, allocator at its steady state
            response = httpx.post(
                f"{service.url}/preview", files={"file": ("warm.dcm", warm)}, timeout=60
            )
            assert response.status_code == 200, response.text
        yield service
    finally:
        service.stop()


@pytest.mark.parametrize("name", sorted(hostile.BOMBS))
def test_hostile_upload_is_refused_fast_and_costs_the_gateway_nothing(
    gateway: Service, name: str
) -> None:
    maker, limit = hostile.BOMBS[name]
    data = maker()
    refused = metric(gateway.url, "spine_decode_refusals_total", reason="limit")
    pid = gateway.process.pid
    before = resident_mb(pid)
    with PeakRss(pid) as peak:
        started = time.perf_counter()
        response = httpx.post(
            f"{gateway.url}/upload", files={"file": (f"{name}.dcm", data)}, timeout=60
        )
        elapsed = time.perf_counter() - started
    after = resident_mb(pid)
    assert response.status_code in (413, 422), response.text
    body = response.json()
    assert body["status"] == "error" and limit in body["message"], body
    assert elapsed < 2.0, f"{name}: {elapsed:.2f} s"
    assert after - before < 64, f"{name}: resident memory grew {after - before:.0f} MiB"
    assert peak.peak - before < 64, f"{name}: resident memory peaked {peak.peak - before:.0f} MiB"
    assert len(data) < 17 * MiB  # under MAX_CONTENT_LENGTH, so the caps (not the size) refuse it
    # counted for the decode-refusal alert (deploy/prometheus/)
    assert metric(gateway.url, "spine_decode_refusals_total", reason="limit") == refused + 1


@pytest.mark.parametrize(("reason", "data"), [
    ("not_dicom", b"this is not a DICOM file" * 10),
    ("not_selected", make_dicom(radiograph_pixels(64, 64, seed=5), body_part="CHEST")),
])
def test_each_refused_decode_is_counted_by_reason(
    gateway: Service, reason: str, data: bytes
) -> None:
    before = metric(gateway.url, "spine_decode_refusals_total", reason=reason)
    response = httpx.post(f"{gateway.url}/upload", files={"file": ("x.dcm", data)}, timeout=60)
    assert response.status_code in (400, 422), response.text
    assert metric(gateway.url, "spine_decode_refusals_total", reason=reason) == before + 1


def test_a_valid_upload_still_decodes_after_the_bombs(gateway: Service) -> None:
    data = make_dicom(radiograph_pixels(640, 480, seed=4))
    response = httpx.post(f"{gateway.url}/preview", files={"file": ("ok.dcm", data)}, timeout=60)
    assert response.status_code == 200, response.text
