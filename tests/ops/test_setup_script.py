"""scripts/setup.sh refuses to start an install on a disk that cannot hold it.

A full disk half-way through ``pip install`` leaves a broken venv and an OSError buried in
pip's output (the way stop 18's CI failed); the preflight says it first, in one line.
The real script runs on a scratch copy of the repository's two files it reads.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def scratch_repo(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy2(ROOT / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def run_setup(repo: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(repo / "scripts" / "setup.sh")],
        env={**os.environ, "VENV": str(repo / ".venv"), **env},
        capture_output=True, text=True, timeout=60, check=False,
    )


def test_too_little_space_stops_before_creating_the_venv(tmp_path: Path) -> None:
    repo = scratch_repo(tmp_path)
    # No disk here has a million GiB free, so the check must refuse.
    result = run_setup(repo, SPINE_SETUP_FREE_GIB="1000000")
    assert result.returncode == 1
    assert "installing needs about 1000000 GiB" in result.stderr
    assert "SPINE_SETUP_FREE_GIB=0" in result.stderr
    assert not (repo / ".venv").exists()


def test_an_installed_venv_is_not_checked_again(tmp_path: Path) -> None:
    repo = scratch_repo(tmp_path)
    digest = subprocess.run(
        ["sha256sum", str(repo / "pyproject.toml")], capture_output=True, text=True, check=True
    ).stdout[:16]
    (repo / ".venv" / "bin").mkdir(parents=True)
    (repo / ".venv" / "bin" / "python").symlink_to(shutil.which("python3") or "/usr/bin/python3")
    (repo / ".venv" / f".installed-{digest}").touch()
    result = run_setup(repo, SPINE_SETUP_FREE_GIB="1000000")
    assert result.returncode == 0, result.stderr
    assert "[setup] ready" in result.stdout
