"""docs/INTEGRATION.md quotes the Orthanc configuration the tests really use."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.peers.orthanc import Orthanc

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- orthanc-config:"


def _quoted_config() -> dict:
    text = (ROOT / "docs" / "INTEGRATION.md").read_text()
    after = text[text.index(MARKER):]
    block = re.search(r"```json\n(.*?)\n```", after, re.S)
    assert block is not None
    return json.loads(block.group(1))


def test_the_integration_page_quotes_the_harness_configuration() -> None:
    harness = Orthanc(
        Path("/var/lib/orthanc/spine"), http_port=8042, dicom_port=4242,
        modalities={"SPINE": ["SPINE", "127.0.0.1", 11112]},
    )
    assert _quoted_config() == harness.config()


def test_readme_links_the_integration_page() -> None:
    assert "docs/INTEGRATION.md" in (ROOT / "README.md").read_text()
