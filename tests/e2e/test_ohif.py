"""Our results as a radiologist sees them: the OHIF Viewer, in Debian's Chromium.

The reading room of ``spine reading-room``, piece by piece on free loopback ports: its
Orthanc (the product's configuration, Lua hook included), ``spine viewer`` (OHIF 3.13.2
from npm on the same origin as Orthanc's DICOMweb), our DICOM listener in front of the
real stack (tiny bundle) with ``RESULTS_OBJECTS=sr,gsps,sc,kos``. A spine phantom is stored
into Orthanc by REST; Orthanc sends it to the listener, the results come back to
Orthanc by C-STORE. Then OHIF opens the study and:

- the phantom itself displays (it carries VOI LUT Function LINEAR, which OHIF 3.13.2
  alone would refuse with "Invalid VOI LUT function");
- our SR loads without error and draws one annotation per box of the JSON answer plus
  the image-level one, each box labelled with its class, the call (Normal/Abnormal)
  shown;
- the burned-in Secondary Capture displays, its amber boxes in the viewport.

Screenshots go to test-artifacts/e2e/ (docs/images/ohif-sr.png is one of them). Under
``CI=1`` a missing Orthanc, OHIF or Chromium fails, naming what to install.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from spine.readingroom.command import OHIF_DIST
from spine.readingroom.orthanc import OrthancPlan
from tests.integration.listener import Listener, start_listener
from tests.integration.stack import REPO, free_port
from tests.peers.orthanc import Orthanc, require_orthanc
from tests.tools import unavailable

pytestmark = pytest.mark.timeout(600)

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
PR_CLASS = "1.2.840.10008.5.1.4.1.1.11.1"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
KO_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"  # Key Object Selection Document
ANNOTATIONS = "svg [data-annotation-uid]"


@dataclass
class RoomOrthanc(Orthanc):
    """The test Orthanc, configured as ``spine reading-room`` configures its own."""

    plan: OrthancPlan | None = None

    def config(self) -> dict[str, Any]:
        assert self.plan is not None
        self.plan.write()  # the Lua hook beside the configuration
        return self.plan.config()


@dataclass
class Room:
    orthanc: RoomOrthanc
    listener: Listener
    viewer: str


def _viewer(orthanc_url: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "spine.cli", "viewer", "--port", str(port),
         "--orthanc-url", orthanc_url],
        cwd=REPO, stdout=log.open("ab"), stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-2000:]
        try:
            if httpx.get(f"{url}/app-config.js", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"spine viewer not ready:\n{log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def room(stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Room]:
    require_orthanc()
    if not (OHIF_DIST / "index.html").is_file():
        unavailable(f"missing the OHIF Viewer in {OHIF_DIST}: run scripts/setup-reading-room.sh")
    tmp = tmp_path_factory.mktemp("room")
    listener = start_listener(
        tmp / "listener", stack.gateway, RESULTS_OBJECTS="sr,gsps,sc,kos",
        LISTENER_ALLOWED_AE_TITLES="ORTHANC",
    )
    plan = OrthancPlan(
        tmp / "orthanc", "127.0.0.1", http_port=free_port(), dicom_port=free_port(),
        listener_port=listener.port,
    )
    orthanc = RoomOrthanc(tmp / "orthanc", http_port=plan.http_port,
                          dicom_port=plan.dicom_port, plan=plan)
    listener.stop()  # again, now that Orthanc's address is known, sending results to it
    listener.start(RESULTS_STORE_AE=plan.store_ae)
    orthanc.start()
    viewer, url = _viewer(orthanc.url, tmp / "viewer.log")
    yield Room(orthanc, listener, url)
    viewer.terminate()
    viewer.wait(20)
    listener.stop()
    orthanc.stop()


def _phantom_study() -> tuple[str, bytes]:
    """A spine phantom (window + VOI LUT Function LINEAR) in a fresh study."""
    from training.phantoms.files import phantom_dataset, phantom_item
    from training.phantoms.image import render_spec

    item = phantom_item(seed=11, split="test", index=0)
    display, _ = render_spec(item.spec)
    ds = phantom_dataset(item, display, 11, "test")
    assert ds.VOILUTFunction == "LINEAR"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return str(ds.StudyInstanceUID), out.getvalue()


def _wait_for_results(orthanc: Orthanc, study: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    classes: list[str] = []
    while time.monotonic() < deadline:
        classes = list(orthanc.study_instances(study).values())
        if all(uid in classes for uid in (SR_CLASS, PR_CLASS, SC_CLASS, KO_CLASS)):
            return
        time.sleep(0.5)
    raise AssertionError(f"results of {study} not in Orthanc: {classes}")


def _open_series(page: Any, description: str) -> None:
    """Double-click a series of OHIF's study browser (the first time, skip the tour)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    with contextlib.suppress(PlaywrightTimeout):  # no tour the second time
        page.get_by_text("Skip all").click(timeout=15_000)
    page.get_by_text(description).first.dblclick()


def _drawn(page: Any, count: int, timeout_s: float) -> bool:
    """True once ``count`` annotations are drawn (SVG) in the viewport."""
    deadline = time.monotonic() + timeout_s
    while page.locator(ANNOTATIONS).count() < count:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def _svg_text(page: Any) -> str:
    return " ".join(page.locator("svg text").all_text_contents())


def test_ohif_draws_our_sr_and_shows_the_burned_in_image(
    room: Room, stack, page: Any, artifacts: Path
) -> None:
    page.on("console", lambda m: page.errors.console.append(f"{m.type}: {m.text}")
            if m.type == "warning" else None)
    study, data = _phantom_study()
    answer = httpx.post(f"{stack.gateway}/upload", params={"annotate": "false"},
                        files={"file": ("x.dcm", data)}, timeout=120).json()
    detections = answer["detections"]
    assert detections, "the tiny bundle's detector always fires"
    room.orthanc.upload(data)  # REST; Orthanc's Lua hook sends it to the listener
    _wait_for_results(room.orthanc, study)

    page.set_default_timeout(120_000)  # OHIF is heavy on two busy cores
    page.goto(f"{room.viewer}/viewer?StudyInstanceUIDs={study}")
    _open_series(page, "AI SR - NOT FOR DIAGNOSTIC USE")
    if not _drawn(page, len(detections) + 1, 20):
        # OHIF 3.13.2: the SR viewport sets which annotations to draw without asking for
        # a render; when the image rendered first, the boxes appear at the next render
        # (any zoom, pan, window or Reset), as a reader touching the image would see.
        print("\n[ohif] the SR drew at the next render (Reset), not at once")
        page.locator("[data-cy=Reset-btn]").click()
    assert _drawn(page, len(detections) + 1, 100), (
        page.locator(ANNOTATIONS).count(), page.errors.console, page.errors.uncaught
    )
    time.sleep(1)  # let the last labels render
    page.screenshot(path=str(artifacts / "ohif-sr.png"))
    assert page.locator(ANNOTATIONS).count() == len(detections) + 1  # + the image-level one
    text = _svg_text(page)
    assert f"{answer['diagnosis']}, P(abnormal)" in text
    for detection in detections:
        assert f"{detection['class']}, confidence" in text
    assert "Something went wrong" not in page.content()
    assert page.errors.uncaught == []
    assert not [m for m in page.errors.console if "ReferencedSOPSequence" in m or "VOI" in m]

    _open_series(page, "AI SC - NOT FOR DIAGNOSTIC USE")
    page.get_by_text("AI SC - NOT FOR DIAGNOSTIC USE").nth(1).wait_for()  # viewport overlay
    time.sleep(2)
    shot = page.locator(".cornerstone-viewport-element canvas").first.screenshot()
    page.screenshot(path=str(artifacts / "ohif-sc.png"))
    pixels = _rgb(shot)
    amber = (pixels[..., 0] > 200) & (pixels[..., 1] > 150) & (pixels[..., 2] < 80)
    assert amber.sum() > 200, "the burned-in boxes are not in the viewport"
    assert page.errors.uncaught == []


def _rgb(png: bytes) -> np.ndarray:
    import cv2

    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    return image[..., ::-1]


def test_the_viewer_passes_orthancs_dicomweb_less_the_linear_voi_function(room: Room) -> None:
    study, data = _phantom_study()
    room.orthanc.upload(data)
    metadata = httpx.get(f"{room.viewer}/dicom-web/studies/{study}/metadata", timeout=30)
    assert metadata.status_code == 200
    (instance,) = [i for i in metadata.json() if i["00080016"]["Value"] == [
        pydicom.dcmread(io.BytesIO(data)).SOPClassUID]]
    assert "00281056" not in instance and "00281050" in instance  # window kept
    direct = httpx.get(f"{room.orthanc.dicomweb}/studies/{study}/metadata", timeout=30).json()
    assert any(i.get("00281056", {}).get("Value") == ["LINEAR"] for i in direct)
