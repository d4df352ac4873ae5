"""A bundle being built while the gateway already runs: analyses wait for it, and say so.

``spine serve`` on a fresh install starts every service at once and builds the demo
bundle beside them, writing its progress to ``BUNDLE_BUILD_PROGRESS_FILE``
(:mod:`shared.buildprogress`). Until that file says the bundle is loaded, an analysis is
refused before any work with 503, a ``Retry-After`` from the estimate and the progress in
words: never a result of weights that are not the bundle's. ``/health``, ``/readyz`` and
the page show the same progress.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from shared.buildprogress import BuildProgress, read_progress
from shared.errors import ServiceError

READ_EVERY_S = 1.0
RETRY_AFTER_BOUNDS_S = (5.0, 60.0)


class BundleBuildingError(ServiceError):
    """No bundle to analyse with yet: it is being built (or its build failed)."""

    status_code = 503


@dataclass
class BuildWatch:
    """The progress file of the build, read at most once a second until it says done."""

    path: Path
    _progress: BuildProgress | None = field(default=None, init=False)
    _read_at: float = field(default=float("-inf"), init=False)
    _done: bool = field(default=False, init=False)

    def current(self) -> BuildProgress | None:
        """The build's progress; None once the bundle is loaded (then never read again)."""
        if self._done:
            return None
        now = time.monotonic()
        if now - self._read_at >= READ_EVERY_S:
            self._read_at = now
            self._progress = read_progress(self.path) or BuildProgress(
                state="building", bundle="demo", stage="starting", fraction=0.0, elapsed_s=0.0
            )
            self._done = self._progress.state == "done"
        return None if self._done else self._progress

    def refusal(self) -> BundleBuildingError | None:
        """Why an analysis cannot run now, with when to ask again; None once loaded."""
        progress = self.current()
        if progress is None:
            return None
        if progress.state == "failed":
            return BundleBuildingError(
                f"the {progress.bundle} model bundle could not be built, so no analysis can "
                "run (the reason is in the log of `spine serve`)",
                retry_after_s=RETRY_AFTER_BOUNDS_S[1],
            )
        low, high = RETRY_AFTER_BOUNDS_S
        return BundleBuildingError(
            f"the {progress.bundle} model bundle is being built: {progress.summary()}; "
            "analyses are answered once it is loaded",
            retry_after_s=min(high, max(low, progress.eta_s or high)),
        )
