"""The page while the bundle is being built, in a real browser against a real gateway.

The gateway reads a real progress file (``BUNDLE_BUILD_PROGRESS_FILE``), written here as
the build writes it: the page shows the progress and the estimate, an upload shows the
gateway's 503, and once the file says the bundle is loaded the banner goes away by
itself (the page polls) and an upload is answered.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.buildprogress import BuildProgress, write_progress
from tests.factories import make_dicom, radiograph_pixels
from tests.integration.stack import Stack, start_stack

pytestmark = pytest.mark.timeout(300)

STAGE = "training the models: classifier epoch 9/20, detector epoch 6/12"


@pytest.fixture(scope="module")
def building(
    tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, Stack]]:
    work = tmp_path_factory.mktemp("building-page")
    progress = work / "demo.progress.json"
    write_progress(progress, BuildProgress(state="building", bundle="demo", stage=STAGE,
                                           fraction=0.42, elapsed_s=300, eta_s=420))
    stack = start_stack(tiny_bundle, work / "stack", BUNDLE_BUILD_PROGRESS_FILE=str(progress))
    yield progress, stack
    stack.stop()


def test_the_page_shows_the_build_then_answers_once_the_bundle_is_loaded(
    building: tuple[Path, Stack], page: Any, tmp_path: Path, artifacts: Path
) -> None:
    progress, stack = building
    image = tmp_path / "spine.dcm"
    image.write_bytes(make_dicom(radiograph_pixels(480, 360, seed=5)))
    page.goto(stack.gateway)
    page.wait_for_selector("#health[data-loaded]")
    banner = page.locator("[data-testid=health-build]")
    assert banner.inner_text() == (
        f"Building the demo model bundle: 42% ({STAGE}), about 7 min left. "
        "Uploads are answered once it is loaded."
    )
    assert banner.locator("progress").get_attribute("value") == "42"
    health = page.locator("#health")
    assert health.get_attribute("data-state") == "degraded"
    assert health.inner_text().strip() == "building the demo bundle"
    page.screenshot(path=str(artifacts / "10-bundle-building.png"))

    page.set_input_files("#file-input", str(image))
    page.wait_for_selector(".card[data-state=error]")
    message = page.locator(".card").first.locator("[data-testid=error-message]").inner_text()
    assert "the demo model bundle is being built: 42%" in message, message

    write_progress(progress, BuildProgress(state="done", bundle="demo", stage="loaded",
                                           fraction=1.0, elapsed_s=900))
    banner.wait_for(state="detached", timeout=30_000)  # the page polls every 5 s
    page.set_input_files("#file-input", str(image))
    page.wait_for_selector(".card[data-state=done]")
    assert page.locator("[data-testid=health-build]").count() == 0
    assert health.get_attribute("data-state") == "healthy"
