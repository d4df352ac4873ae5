"""One configuration: every variable a documented Settings field, one cache root."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.paths import cache_root, prepare_ultralytics_env
from shared.settings import DefaultBundle, Settings

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("gateway", "shared", "model_server", "spine", "classifier_service", "detector_service",
           "dicom_listener", "training", "bench", "scripts")
# Reading the environment is Settings' job; shared/paths.py only writes Ultralytics' variables.
ENV_READ = re.compile(r"os\.environ\.get\(|os\.getenv\(|os\.environ\[[^\]]+\](?!\s*=)")
READERS_ALLOWED = {"shared/settings.py", "shared/paths.py"}


def _documented() -> set[str]:
    """Variable names in the first column of README's and OPERATIONS.md's tables."""
    names: set[str] = set()
    for doc in (ROOT / "README.md", ROOT / "docs" / "OPERATIONS.md"):
        for line in doc.read_text().splitlines():
            if line.startswith("| `"):
                names |= set(re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split("|")[1]))
    return names


def test_every_field_has_a_description_and_a_table_row() -> None:
    documented = _documented()
    undescribed = [name for name, f in Settings.model_fields.items() if not f.description]
    undocumented = [n.upper() for n in Settings.model_fields if n.upper() not in documented]
    assert undescribed == []
    assert undocumented == []


def test_only_settings_read_the_environment() -> None:
    readers = []
    for folder in PRODUCT:
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if rel not in READERS_ALLOWED and ENV_READ.search(path.read_text()):
                readers.append(rel)
    assert readers == []


def test_cache_root_honours_spine_cache_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPINE_CACHE_DIR", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    assert cache_root(Settings(spine_cache_dir=tmp_path / "s")) == tmp_path / "s"
    monkeypatch.delenv("SPINE_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "spine"


def test_ultralytics_env_lives_under_the_cache_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPINE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("YOLO_CONFIG_DIR", raising=False)
    monkeypatch.setenv("YOLO_OFFLINE", "0")
    prepare_ultralytics_env()
    import os

    assert os.environ["YOLO_OFFLINE"] == "1"
    assert os.environ["YOLO_CONFIG_DIR"] == str(tmp_path / "ultralytics")
    assert (tmp_path / "ultralytics").is_dir()
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "mine"))
    prepare_ultralytics_env()  # an operator's folder wins
    assert os.environ["YOLO_CONFIG_DIR"] == str(tmp_path / "mine")


def test_default_bundle_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPINE_DEFAULT_BUNDLE", "Untrained")
    assert Settings().spine_default_bundle is DefaultBundle.UNTRAINED
    monkeypatch.setenv("SPINE_DEFAULT_BUNDLE", "best")
    with pytest.raises(ValidationError, match="spine_default_bundle"):
        Settings()


def test_supervisor_outwaits_uvicorn() -> None:
    from spine.supervisor import STOP_GRACE_S, UVICORN_GRACE_S

    assert STOP_GRACE_S > UVICORN_GRACE_S
