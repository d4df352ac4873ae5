"""One configuration per process: every variable a documented field of the class of the
process that reads it, declared once, read from the environment only by entry points."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.paths import cache_root, prepare_ultralytics_env
from shared.settings import (
    CliSettings,
    CommonSettings,
    DefaultBundle,
    GatewaySettings,
    ListenerSettings,
    ModelServerSettings,
    SettingsBase,
    child_settings,
)

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("gateway", "shared", "model_server", "spine", "classifier_service", "detector_service",
           "dicom_listener", "training", "bench", "scripts")
# Reading the environment is the settings classes' job (pydantic-settings); shared/paths.py
# only writes Ultralytics' variables.
ENV_READ = re.compile(r"os\.environ\.get\(|os\.getenv\(|os\.environ\[[^\]]+\](?!\s*=)")
READERS_ALLOWED: set[str] = set()
# Product code (the import contracts' list: the benchmark is a tool with its own mains)
# builds settings in one place: spine/config.py, called by each process's entry point.
SETTINGS_PRODUCT = ("gateway", "shared", "model_server", "spine", "classifier_service",
                    "detector_service", "dicom_listener", "training")
SETTINGS_BUILT = re.compile(r"\b[A-Z]\w*Settings\(")
BUILDERS_ALLOWED = {"spine/config.py"}
# README's "Configuration (environment)": one heading per process, its rows under it.
PROCESSES = {
    "Every process": CommonSettings,
    "Gateway": GatewaySettings,
    "Model services": ModelServerSettings,
    "DICOM listener": ListenerSettings,
    "The `spine` command": CliSettings,
}
EVERY_CLASS = (GatewaySettings, ModelServerSettings, ListenerSettings, CliSettings)


def _names(line: str) -> set[str]:
    """Variable names in the first column of a table row."""
    return set(re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split("|")[1]))


def _documented() -> set[str]:
    """Variable names in the first column of README's and OPERATIONS.md's tables."""
    names: set[str] = set()
    for doc in (ROOT / "README.md", ROOT / "docs" / "OPERATIONS.md"):
        for line in doc.read_text().splitlines():
            if line.startswith("| `"):
                names |= _names(line)
    return names


def _readme_by_process() -> dict[str, set[str]]:
    """README's configuration rows, by the ``###`` heading (process) they sit under."""
    section = ROOT.joinpath("README.md").read_text().split("## Configuration (environment)")[1]
    section = section.split("\n## ")[0]
    rows: dict[str, set[str]] = {}
    heading = ""
    for line in section.splitlines():
        if line.startswith("### "):
            heading = line[4:].strip()
            rows[heading] = set()
        elif line.startswith("| `"):
            assert heading, f"a variable row before any process heading: {line}"
            rows[heading] |= _names(line)
    return rows


def test_every_field_has_a_description_and_a_table_row() -> None:
    documented = _documented()
    fields = {name: f for cls in EVERY_CLASS for name, f in cls.model_fields.items()}
    undescribed = [name for name, f in fields.items() if not f.description]
    undocumented = [n.upper() for n in fields if n.upper() not in documented]
    assert undescribed == []
    assert undocumented == []


def test_readme_groups_the_variables_by_the_process_that_reads_them() -> None:
    rows = _readme_by_process()
    assert set(rows) == set(PROCESSES), "README's headings are the processes"
    misplaced = {
        heading: sorted(n for n in names if n.lower() not in PROCESSES[heading].model_fields)
        for heading, names in rows.items()
    }
    assert all(not names for names in misplaced.values()), misplaced
    common = set(CommonSettings.model_fields)
    assert {n.lower() for n in rows["Every process"]} <= common


def test_a_field_two_processes_read_is_declared_once() -> None:
    """Shared fields live in the base or a section, never copied into two classes."""
    declared: dict[str, list[str]] = {}
    seen: set[type] = set()
    for cls in EVERY_CLASS:
        for klass in cls.__mro__:
            if klass in seen or not (isinstance(klass, type) and issubclass(klass, SettingsBase)):
                continue
            seen.add(klass)
            for name in klass.__dict__.get("__annotations__", {}):
                if name in klass.model_fields:
                    declared.setdefault(name, []).append(klass.__qualname__)
    twice = {name: owners for name, owners in declared.items() if len(owners) > 1}
    assert twice == {}
    for cls in EVERY_CLASS:
        assert issubclass(cls, CommonSettings)


def test_only_settings_read_the_environment() -> None:
    readers = []
    for folder in PRODUCT:
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if rel not in READERS_ALLOWED and ENV_READ.search(path.read_text()):
                readers.append(rel)
    assert readers == []


def test_only_entry_points_build_settings() -> None:
    """Below an entry point, settings are passed down, never read again."""
    builders = []
    for folder in SETTINGS_PRODUCT:
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            lines = [line for line in path.read_text().splitlines()
                     if not line.lstrip().startswith(("class ", "#"))]
            if rel not in BUILDERS_ALLOWED and any(SETTINGS_BUILT.search(x) for x in lines):
                builders.append(rel)
    assert builders == []


def test_each_process_reads_only_its_own_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad variable of another process does not stop this one."""
    monkeypatch.setenv("MAX_BATCH_SIZE", "0")  # model services only: below its minimum
    with pytest.raises(ValidationError, match="max_batch_size"):
        ModelServerSettings()
    assert GatewaySettings().upstream_timeout_s > 0
    assert ListenerSettings().listener_port > 0
    assert "max_batch_size" not in GatewaySettings.model_fields


def test_a_launcher_reads_a_child_settings_from_the_childs_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bench starts stacks whose DETECTOR_* differ from its own environment."""
    import os

    monkeypatch.setenv("DETECTOR_REPLICAS", "1")
    monkeypatch.setenv("DETECTOR_THREADS", "5")
    child = child_settings(CliSettings, {**os.environ, "DETECTOR_REPLICAS": "3"})
    assert (child.detector_replicas, child.detector_threads) == (3, 5)
    assert CliSettings().detector_replicas == 1


def test_cache_root_honours_spine_cache_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPINE_CACHE_DIR", str(tmp_path / "c"))
    assert cache_root(CommonSettings()) == tmp_path / "c"
    assert cache_root(GatewaySettings(spine_cache_dir=tmp_path / "s")) == tmp_path / "s"
    monkeypatch.delenv("SPINE_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root(ListenerSettings()) == tmp_path / "home" / ".cache" / "spine"


def test_ultralytics_env_lives_under_the_cache_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPINE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("YOLO_CONFIG_DIR", raising=False)
    monkeypatch.setenv("YOLO_OFFLINE", "0")
    prepare_ultralytics_env(ModelServerSettings())
    import os

    assert os.environ["YOLO_OFFLINE"] == "1"
    assert os.environ["YOLO_CONFIG_DIR"] == str(tmp_path / "ultralytics")
    assert (tmp_path / "ultralytics").is_dir()
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "mine"))
    prepare_ultralytics_env(CliSettings())  # an operator's folder wins
    assert os.environ["YOLO_CONFIG_DIR"] == str(tmp_path / "mine")


def test_default_bundle_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPINE_DEFAULT_BUNDLE", "Untrained")
    assert ModelServerSettings().spine_default_bundle is DefaultBundle.UNTRAINED
    assert CliSettings().spine_default_bundle is DefaultBundle.UNTRAINED
    monkeypatch.setenv("SPINE_DEFAULT_BUNDLE", "best")
    with pytest.raises(ValidationError, match="spine_default_bundle"):
        ModelServerSettings()


def test_supervisor_outwaits_uvicorn() -> None:
    from spine.supervisor import STOP_GRACE_S, UVICORN_GRACE_S

    assert STOP_GRACE_S > UVICORN_GRACE_S
