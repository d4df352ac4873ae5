"""How far the demo bundle's build is, and how long it still needs: written every few
seconds to the progress file :mod:`shared.buildprogress` describes.

The build runs in stages (phantoms, canonical images, training, the detector's
operating point); each has a share of the whole, measured on this project's 2-core
machine (:data:`STAGE_SECONDS`), and a counter of its own work where it has one (files
written, epochs started). The estimate of the time left is the measured remainder scaled
by how fast this machine went so far.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from shared.buildprogress import BuildProgress, write_progress

# Seconds each stage took in a fresh build on the 2-core build machine (docs/DEMO_BUNDLE.md,
# "Build": phantoms 49 s, canonical decode 17 s, both models side by side 679 s, the
# detector's operating-point sweep about 20 s); only their ratios and sum matter.
STAGE_SECONDS = {
    "generating phantoms": 49.0,
    "decoding canonical images": 17.0,
    "training the models": 679.0,
    "choosing the detector's operating point": 20.0,
}
STAGES = tuple(STAGE_SECONDS)
# Until this share is done, the estimate is the measured time as it is.
SCALE_AFTER = 0.03
TICK_S = 2.0

# The work of the current stage: (done, total) units.
Counter = Callable[[], tuple[float, float]]


def files_counter(folder: Path, pattern: str, total: int) -> Counter:
    """Files matching ``pattern`` in ``folder`` (written by worker processes) of ``total``."""
    return lambda: (float(sum(1 for _ in folder.glob(pattern))) if folder.is_dir() else 0.0,
                    float(total))


class BuildMeter:
    """Writes the build's progress to ``path`` every :data:`TICK_S` seconds (a thread)."""

    def __init__(
        self, path: Path | None, bundle: str = "demo",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``clock``: seconds, monotonic (the pace of the build is measured with it)."""
        self.path = path
        self.bundle = bundle
        self.clock = clock
        self.started = clock()
        self.stage = STAGES[0]
        self._counter: Counter | None = None
        self._describe: Callable[[], str] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="build-meter", daemon=True)

    def __enter__(self) -> BuildMeter:
        if self.path is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self.write()

    def enter(
        self, stage: str, counter: Counter | None = None,
        describe: Callable[[], str] | None = None,
    ) -> None:
        """The build moves on to ``stage`` (one of :data:`STAGES`)."""
        self.stage, self._counter, self._describe = stage, counter, describe
        self.write()

    def progress(self) -> BuildProgress:
        index = STAGES.index(self.stage)
        done, total = self._counter() if self._counter is not None else (0.0, 1.0)
        share = min(1.0, done / total) if total > 0 else 0.0
        measured = sum(STAGE_SECONDS.values())
        done_s = sum(STAGE_SECONDS[s] for s in STAGES[:index]) + share * STAGE_SECONDS[self.stage]
        fraction = done_s / measured
        elapsed = self.clock() - self.started
        speed = elapsed / done_s if fraction >= SCALE_AFTER else 1.0
        stage = f"{self.stage}: {self._describe()}" if self._describe else self.stage
        return BuildProgress(state="building", bundle=self.bundle, stage=stage,
                             fraction=round(fraction, 3), elapsed_s=round(elapsed, 1),
                             eta_s=round((measured - done_s) * speed, 1))

    def write(self) -> None:
        if self.path is not None:
            write_progress(self.path, self.progress())

    def _run(self) -> None:
        while not self._stop.wait(TICK_S):
            self.write()


class TrainingCounter:
    """The training stage: classifier epochs started (the build calls
    :meth:`epoch_started`, then :meth:`classifier_done`) and detector epochs finished
    (``detector_done`` reads them), each model half of the stage (they train side by side)."""

    def __init__(
        self, classifier_epochs: int, detector_epochs: int, detector_done: Callable[[], int],
        classifier_trained: bool = False, detector_trained: bool = False,
    ) -> None:
        self.classifier_total = classifier_epochs
        self.detector_total = detector_epochs
        self.started = 0
        self.classifier_finished = classifier_trained
        self._detector_done = detector_done
        self._detector_trained = detector_trained

    def epoch_started(self) -> None:
        self.started += 1

    def classifier_done(self) -> None:
        self.classifier_finished = True

    def classifier(self) -> float:
        """Epochs done; the one running counts half."""
        if self.classifier_finished:
            return float(self.classifier_total)
        return min(max(0.0, self.started - 0.5), float(self.classifier_total))

    def detector(self) -> int:
        return self.detector_total if self._detector_trained else self._detector_done()

    def __call__(self) -> tuple[float, float]:
        return (self.classifier() / max(1, self.classifier_total)
                + min(self.detector(), self.detector_total) / max(1, self.detector_total), 2.0)

    def describe(self) -> str:
        shown = self.classifier_total if self.classifier_finished else self.started
        return (f"classifier epoch {shown}/{self.classifier_total}, "
                f"detector epoch {self.detector()}/{self.detector_total}")
