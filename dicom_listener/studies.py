"""Study grouping: instances by StudyInstanceUID, a study closed after an idle timeout.

DIMSE has no "end of study": a sender's association may carry one image or many
studies, and a study may come in several associations. So, like MONAI Deploy's
Informatics Gateway, a study is complete when ``LISTENER_STUDY_IDLE_S`` passed since
its last instance arrived and none of its instances is still being analysed. Every
call happens on the service's event loop (the SCP threads hand over through it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

OUTCOMES = ("analysed", "refused", "failed")


@dataclass
class ImageResult:
    """One instance's fate in its study (no patient data: UIDs and our own words)."""

    sop_uid: str
    outcome: str  # analysed | refused | failed
    diagnosis: str | None = None  # Normal | Abnormal when analysed
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "sop_instance_uid": self.sop_uid, "outcome": self.outcome,
            "diagnosis": self.diagnosis, "reason": self.reason or None,
        }


@dataclass
class Study:
    study_uid: str
    first_received: float = field(default_factory=time.time)  # wall clock, for the report
    last_activity: float = field(default_factory=time.monotonic)
    pending: set[str] = field(default_factory=set)
    images: dict[str, ImageResult] = field(default_factory=dict)

    def count(self, outcome: str) -> int:
        return sum(1 for image in self.images.values() if image.outcome == outcome)

    @property
    def overall(self) -> str | None:
        """Abnormal if any analysed image is; Normal if some were and none is; else None."""
        diagnoses = [i.diagnosis for i in self.images.values() if i.outcome == "analysed"]
        if not diagnoses:
            return None
        return "Abnormal" if "Abnormal" in diagnoses else "Normal"


class StudyTracker:
    """Open studies; :meth:`due` hands back those whose idle time is over."""

    def __init__(self, idle_s: float) -> None:
        self.idle_s = idle_s
        self.open: dict[str, Study] = {}

    def received(self, study_uid: str, sop_uid: str) -> Study:
        study = self.open.get(study_uid)
        if study is None:
            study = self.open[study_uid] = Study(study_uid)
        study.pending.add(sop_uid)
        study.last_activity = time.monotonic()
        return study

    def finished(self, study_uid: str, result: ImageResult) -> Study:
        study = self.open.get(study_uid) or self.received(study_uid, result.sop_uid)
        study.pending.discard(result.sop_uid)
        study.images[result.sop_uid] = result
        study.last_activity = time.monotonic()
        return study

    def restore(self, study: Study) -> None:
        """A study that was open at the last stop (its report file said so)."""
        current = self.open.setdefault(study.study_uid, study)
        if current is not study:
            current.images = {**study.images, **current.images}

    def due(self, now: float | None = None) -> list[Study]:
        """Studies idle for ``idle_s`` with nothing pending, removed from the open set."""
        now = time.monotonic() if now is None else now
        closing = [
            s for s in self.open.values()
            if not s.pending and now - s.last_activity >= self.idle_s
        ]
        for study in closing:
            del self.open[study.study_uid]
        return closing
