"""Corpus fixtures: built once per session into a temporary folder, never committed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.dicom.corpus import ENCODINGS, Corpus, missing_tools


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return Corpus(tmp_path_factory.mktemp("dicom-corpus"))


@pytest.fixture(scope="session")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dicom-work")


def require_encoding(key: str) -> None:
    """Skip (with the reason) when the tools that make or check `key` are not installed."""
    missing = missing_tools(ENCODINGS[key])
    if missing:
        pytest.skip(
            f"{', '.join(missing)} not installed "
            "(apt-get install dcmtk libgdcm-tools openjph-tools)"
        )
