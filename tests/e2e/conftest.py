"""Fixtures for the browser tests: Debian's Chromium driven by Playwright (never downloaded)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.tools import require_module, unavailable

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "e2e"
CHROMIUM = os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def _require_browser() -> None:
    """Playwright and Debian's Chromium, or skip (locally) / fail (under CI) naming both."""
    require_module("playwright", "pip install -e '.[dev]' (PyPI: playwright)")
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        unavailable(f"missing {CHROMIUM}: apt-get install chromium")


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for stale in ARTIFACTS.glob("FAILED-*.png"):
        stale.unlink()
    return ARTIFACTS


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    """One Chromium for the e2e package, closed when it ends: Playwright's sync API
    keeps an event loop running in the main thread, which the asyncio tests that run
    after this package cannot share."""
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@dataclass
class PageErrors:
    """What the page reported on its console, so tests can assert it stayed quiet."""

    console: list[str] = field(default_factory=list)
    uncaught: list[str] = field(default_factory=list)

    def unexpected(self, allow: tuple[str, ...] = ()) -> list[str]:
        return self.uncaught + [m for m in self.console if not any(a in m for a in allow)]


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest, artifacts: Path) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1440, "height": 1000}, device_scale_factor=1)
    context.set_default_timeout(30_000)
    page = context.new_page()
    errors = PageErrors()
    page.on("console", lambda m: errors.console.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.uncaught.append(str(e)))
    page.errors = errors  # type: ignore[attr-defined]
    yield page
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        page.screenshot(path=str(artifacts / f"FAILED-{request.node.name}.png"), full_page=True)
    context.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
