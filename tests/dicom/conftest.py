"""Fixtures of the DICOM tests: the corpus (built once per session into a temporary folder,
never committed) and a pool of decoder workers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.dicom import DecoderPool
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


@pytest.fixture(scope="session")
def decoder_pool() -> Iterator[DecoderPool]:
    """Worker processes like the gateway's (memory limit, deadline), closed after the run."""
    with DecoderPool(2, memory_mb=1024, timeout_s=10) as pool:
        yield pool
