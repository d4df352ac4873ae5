"""Shared fixtures: model bundles and a running stack, built once per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import hypothesis  # noqa: F401  (imported early: see below)
import pytest

from tests.peers.hosts import hosts  # noqa: F401  (fixtures for all)
from tests.peers.orthanc import orthanc, orthanc_factory  # noqa: F401

os.environ.setdefault("YOLO_OFFLINE", "1")
# hypothesis is imported here, at a shallow stack depth, because its pytest plugin
# otherwise imports it lazily inside the terminal summary, where CPython 3.11.7's
# AST compiler fails ("AST constructor recursion depth mismatch") on failing runs.


@pytest.fixture(scope="session", autouse=True)
def _yolo_config_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ.setdefault("YOLO_CONFIG_DIR", str(tmp_path_factory.mktemp("yolo-config")))


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.factories import write_tiny_bundle

    return write_tiny_bundle(tmp_path_factory.mktemp("tiny-bundle"))


@pytest.fixture(scope="session")
def stack(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The three real services on loopback, serving the tiny bundle."""
    from tests.integration.stack import start_stack

    running = start_stack(
        tiny_bundle, tmp_path_factory.mktemp("stack"), MAX_CONTENT_LENGTH=str(8 * 1024 * 1024)
    )
    yield running
    running.stop()
