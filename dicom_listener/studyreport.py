"""The study-level answer: images analysed / refused / failed and the overall call.

Three places say it: a log line when the study closes, the listener's ``/metrics``
(``spine_listener_*``), and one JSON file per study in ``LISTENER_RESULTS_DIR``
(``<StudyInstanceUID>.json``, rewritten atomically as images finish, ``"status":
"open"`` until the study closes, then ``"complete"``), also served by ``/studies``.
The overall call is Abnormal when any analysed image is Abnormal, Normal when images
were analysed and none is, and null when none was analysed.

No patient data, as in the rest of the project: UIDs (the operator needs them to find
the study in the PACS), counts, our diagnoses and our own refusal messages (which
quote only coded header values such as a body part); never names, IDs, dates or
free-text descriptions.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections import deque
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from dicom_listener.studies import ImageResult, Study

log = logging.getLogger(__name__)

_UID = re.compile(r"^[0-9.]{1,64}$")
RECENT = 100  # closed studies kept in memory for /studies


class ListenerMetrics:
    """The listener's Prometheus counters (the results delivery adds its own)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.received = Counter(
            "spine_listener_instances_received_total",
            "Instances stored by C-STORE (spooled, answered Success)", registry=registry,
        )
        self.images = Counter(
            "spine_listener_images_total",
            "Instances by fate: analysed, refused (input selection, 422), failed "
            "(gateway refused for good, or retry budget spent)",
            ["outcome"], registry=registry,
        )
        self.retries = Counter(
            "spine_listener_gateway_retries_total",
            "Gateway attempts that failed transiently and will be retried", registry=registry,
        )
        self.studies = Counter(
            "spine_listener_studies_total", "Studies closed, by overall call "
            "(Normal, Abnormal, none = no image analysed)", ["overall"], registry=registry,
        )
        self.associations = Counter(
            "spine_listener_associations_total", "DICOM associations by result",
            ["result"], registry=registry,
        )
        self.spool_instances = Gauge(
            "spine_listener_spool_instances", "Instances waiting in the spool",
            registry=registry,
        )
        self.spool_bytes = Gauge(
            "spine_listener_spool_bytes", "Bytes waiting in the spool", registry=registry
        )
        self.spool_capacity_bytes = Gauge(
            "spine_listener_spool_capacity_bytes",
            "Bytes the spool may hold (LISTENER_SPOOL_MAX_BYTES): past it, C-STORE A700",
            registry=registry,
        )
        self.open_studies = Gauge(
            "spine_listener_open_studies", "Studies still receiving or being analysed",
            registry=registry,
        )
        self.results = Counter(
            "spine_listener_results_total",
            "Result objects (SR, presentation state) kept in the spool, by how each left it: "
            "delivered (removed), failed (rejected or retry budget spent: moved to "
            "failed/results/), kept (not delivered at a shutdown: sent at the next start)",
            ["outcome"], registry=registry,
        )
        self.results_waiting = Gauge(
            "spine_listener_results_waiting",
            "Result objects in the spool's results/ folder, waiting for delivery",
            registry=registry,
        )


def report(study: Study, status: str) -> dict[str, Any]:
    """The study's JSON (the file, ``/studies``)."""
    return {
        "study_instance_uid": study.study_uid,
        "status": status,
        "received_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(study.first_received)),
        "images": len(study.images) + len(study.pending - set(study.images)),
        "analysed": study.count("analysed"),
        "refused": study.count("refused"),
        "failed": study.count("failed"),
        "pending": len(study.pending),
        "overall": study.overall,
        "instances": [image.to_json() for image in study.images.values()],
    }


def _from_report(data: dict[str, Any]) -> Study:
    study = Study(str(data["study_instance_uid"]))
    for item in data.get("instances", []):
        result = ImageResult(
            str(item["sop_instance_uid"]), str(item["outcome"]), item.get("diagnosis"),
            str(item.get("reason") or ""),
        )
        study.images[result.sop_uid] = result
    return study


class StudyReports:
    """Writes, logs and counts study reports; remembers the recent ones for ``/studies``."""

    def __init__(self, results_dir: Path, metrics: ListenerMetrics) -> None:
        self.dir = results_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.metrics = metrics
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)

    def path(self, study_uid: str) -> Path:
        if not _UID.match(study_uid):  # a file name from a peer's value: digits and dots only
            raise ValueError("not a DICOM UID")
        return self.dir / f"{study_uid}.json"

    def _write(self, data: dict[str, Any]) -> None:
        try:
            target = self.path(data["study_instance_uid"])
        except ValueError:
            log.warning("study report not written: the Study Instance UID is not a UID")
            return
        partial = target.with_suffix(".json.part")
        with partial.open("w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, target)

    def update(self, study: Study) -> None:
        """An image finished: the file says so at once (``status: open``)."""
        self._write(report(study, "open"))

    def close(self, study: Study) -> dict[str, Any]:
        data = report(study, "complete")
        self._write(data)
        self.recent.append(data)
        overall = data["overall"] or "none"
        self.metrics.studies.labels(overall).inc()
        log.info(
            "study %s complete: %d image(s), %d analysed, %d refused, %d failed; overall %s",
            study.study_uid, data["images"], data["analysed"], data["refused"],
            data["failed"], overall,
            extra={"study_instance_uid": study.study_uid, "analysed": data["analysed"],
                   "refused": data["refused"], "failed": data["failed"], "overall": overall},
        )
        return data

    def load_open(self) -> list[Study]:
        """Studies whose report still said ``open`` at the last stop (restart recovery)."""
        studies = []
        for path in sorted(self.dir.glob("*.json")):
            try:
                data = json.loads(path.read_text("utf-8"))
                if data.get("status") == "open":
                    studies.append(_from_report(data))
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("study report %s unreadable; ignored", path.name)
        return studies
