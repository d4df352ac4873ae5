"""The listener's bounded disk: which of its folders are pruned, and which are measured.

Pruned (finished work, :mod:`shared.dicomnet.retention`): the spool's ``failed/`` and
``failed/results/`` (``LISTENER_FAILED_MAX_*``) and closed study reports
(``LISTENER_REPORTS_MAX_*``; a report that still says ``open`` is never removed). Never
pruned: ``incoming/`` (acknowledged instances) and ``results/`` (results not yet
delivered); those are capped by ``LISTENER_SPOOL_MAX_BYTES`` and
``DISK_MIN_FREE_BYTES`` instead, which refuse new C-STOREs (A700). Every folder's
bytes and files are in ``/metrics`` (``spine_listener_folder_bytes`` / ``_files``).
"""

from __future__ import annotations

import json
from pathlib import Path

from prometheus_client import CollectorRegistry

from dicom_listener.spool import Spool
from shared.dicomnet.retention import FolderGauges, RetentionPolicy, Sweep
from shared.settings import ListenerSettings

DICOM = "*.dcm"
REPORTS = "*.json"


def is_open_report(path: Path) -> bool:
    """A study still receiving or being analysed (or a report we cannot read: kept)."""
    try:
        return json.loads(path.read_text("utf-8")).get("status") != "complete"
    except (OSError, ValueError, AttributeError):
        return True


def sweeps(settings: ListenerSettings, spool: Spool, reports: Path) -> list[Sweep]:
    failed = RetentionPolicy(settings.listener_failed_max_age_s,
                             settings.listener_failed_max_bytes)
    closed = RetentionPolicy(settings.listener_reports_max_age_s,
                             settings.listener_reports_max_bytes)
    return [
        Sweep("spool failed/", spool.failed, DICOM, failed),
        Sweep("spool failed/results/", spool.failed_results, DICOM, failed),
        Sweep("study reports", reports, REPORTS, closed, keep=is_open_report),
    ]


def gauges(spool: Spool, reports: Path, registry: CollectorRegistry) -> FolderGauges:
    return FolderGauges("spine_listener_folder", "the DICOM listener's spool and reports", {
        "incoming": (spool.incoming, DICOM),
        "results": (spool.results, DICOM),
        "failed": (spool.failed, DICOM),
        "failed_results": (spool.failed_results, DICOM),
        "studies": (reports, REPORTS),
    }, registry)
