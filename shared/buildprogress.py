"""The progress of a bundle being built while the services already run, as one JSON file.

``spine serve`` without a built demo bundle starts the services at once and builds the
bundle beside them: the build writes its stage, share done and an estimate of the time
left to this file; ``spine serve`` adds the loading into the services and the end. The
gateway reads it (``BUNDLE_BUILD_PROGRESS_FILE``) to refuse analyses with the progress
(503 and Retry-After) and to show it in ``/health``, ``/readyz`` and the page. Written
to a temporary name and renamed, so a reader never sees half a file. Torch-free.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

BuildState = Literal["building", "loading", "done", "failed"]


class BuildProgress(BaseModel):
    """Where the build of a bundle is."""

    state: BuildState = Field(
        description="building (training), loading (into the model services), done, failed"
    )
    bundle: str = Field(description="which bundle: demo")
    stage: str = Field(description="what it does now, in words")
    fraction: float = Field(ge=0, le=1, description="share of the build done (an estimate)")
    elapsed_s: float = Field(ge=0, description="seconds since the build started")
    eta_s: float | None = Field(None, ge=0, description="seconds left (an estimate)")
    error: str | None = Field(None, description="why it failed (state failed)")
    updated_at: float = Field(default_factory=time.time, description="Unix time written")

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")

    def summary(self) -> str:
        """``"42% (training ...), about 6 min left"``: for the log, refusals and banners."""
        if self.state == "failed":
            return f"failed: {self.error or 'see the spine serve log'}"
        text = f"{self.fraction:.0%} ({self.stage})"
        if self.eta_s is not None and self.state != "done":
            text += f", about {_duration(self.eta_s)} left"
        return text


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(5, round(seconds / 5) * 5):.0f} s"
    return f"{round(seconds / 60):.0f} min"


def write_progress(path: Path, progress: BuildProgress) -> None:
    """Replace ``path`` with ``progress`` at once (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    staging.write_text(progress.model_dump_json())
    os.replace(staging, path)


def read_progress(path: Path) -> BuildProgress | None:
    """The progress in ``path``; None when there is none (yet) or it cannot be read."""
    with contextlib.suppress(OSError, ValidationError, ValueError):
        return BuildProgress.model_validate_json(path.read_bytes())
    return None
