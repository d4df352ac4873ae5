"""One recording path for every analysis route: the audit line and the metric, once.

``/upload``, ``/upload/dicom``, each instance of a STOW-RS request and ``/preview``
open a :class:`Recording` when they start; the pipeline tells it the image's UIDs as
soon as the header is read (:meth:`Recording.note`), and the route ends it with
:meth:`Recording.succeeded` or :meth:`Recording.failed`. Either writes the audit line
(:mod:`gateway.audit`), counts the analysis in ``spine_analyses_total`` and marks the
request audited, so :mod:`gateway.http.refusals` does not write a second line.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from gateway.audit import AuditFacts
from gateway.http.refusals import mark_audited
from gateway.runtime import Gateway
from gateway.schemas import UploadResponse
from shared.dicom import DicomMetadata
from shared.errors import ServiceError
from shared.logging import request_id_var
from shared.observability import Scope

log = logging.getLogger(__name__)

ANALYSIS = "analysis"
PREVIEW = "preview"
CLIENT_GONE = 499  # the client disconnected (gateway.http.deadline): counted as cancelled


@dataclass
class Recording:
    """What one analysis (or preview) leaves behind: an audit line and a counted result."""

    gateway: Gateway
    scope: Scope
    event: str = ANALYSIS
    started: float = field(default_factory=time.perf_counter)
    facts: AuditFacts = field(default_factory=AuditFacts)

    def note(self, metadata: DicomMetadata) -> None:
        """The decoded image's UIDs, for the audit line (the pipeline's header hook)."""
        self.facts.note(metadata)

    def succeeded(self, result: UploadResponse | None = None) -> None:
        if self.event == ANALYSIS and result is not None:
            outcome = "partial" if result.detections is None else "complete"
            self.gateway.metrics.analyses.labels(outcome).inc()
        self._audit(200, result=result)

    def failed(self, exc: ServiceError) -> None:
        if self.event == ANALYSIS:
            outcome = "cancelled" if exc.status_code == CLIENT_GONE else "error"
            self.gateway.metrics.analyses.labels(outcome).inc()
        self._audit(exc.status_code, error=exc.message)

    def _audit(
        self, status: int, result: UploadResponse | None = None, error: str | None = None
    ) -> None:
        mark_audited(self.scope)
        audit = self.gateway.audit
        if audit is None:
            return
        try:
            audit.record(
                event=self.event, key_id=self.scope.get("state", {}).get("key_id"),
                request_id=request_id_var.get() or "", status=status, facts=self.facts,
                duration_ms=(time.perf_counter() - self.started) * 1000,
                result=result, error=error,
            )
        except Exception:  # noqa: BLE001 - a full disk must not turn a result into a 500
            log.exception("audit log write failed")
