"""Corpus fixtures: built once per session into a temporary folder, never committed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.dicom.corpus import ENCODINGS, Corpus
from tests.tools import require_tools


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return Corpus(tmp_path_factory.mktemp("dicom-corpus"))


@pytest.fixture(scope="session")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dicom-work")


def require_encoding(key: str) -> None:
    """The tools that make or check `key`: skip without them locally, fail under CI."""
    require_tools(*ENCODINGS[key].tools)
