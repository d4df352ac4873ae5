"""``/docs`` in a real browser: Swagger UI renders the API from the gateway's own files.

The page must work on a network with no internet access: every request it makes goes
to the gateway, and the browser reports no CSP violation or script error.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest

pytestmark = pytest.mark.timeout(120)


def test_docs_load_with_no_external_request(stack: Any, page: Any) -> None:
    gateway = urlsplit(stack.gateway).netloc
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto(f"{stack.gateway}/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=30_000)
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert "/upload" in paths and "/readyz" in paths, paths
    external = [url for url in requested if urlsplit(url).netloc != gateway]
    assert external == [], external
    assert any("/docs/assets/swagger-ui-bundle.js" in url for url in requested), requested
    assert page.errors.unexpected() == []  # no CSP violation, no script error
