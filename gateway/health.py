"""``/health`` and ``/readyz``: the gateway's view of its model services.

Healthy: both services have a ready replica; degraded: only the classifier (uploads
get classification without boxes); unhealthy: no classifier, so no diagnosis.
Readiness (for a load balancer) needs the classifier only, and is answered from cached
replica state (a background poll every ``READINESS_INTERVAL_S`` and the breaker).
Replica URLs, bundle paths and checkpoint hashes are for operators
(``OPERATOR_KEYS_SHA256``): everyone else gets :func:`public_health`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from gateway.analysis import Gateway
from gateway.response import bundle_summary
from gateway.upstream import ModelClient
from shared.contract import ServedFacts, demo_warning
from shared.errors import ServiceError
from shared.schemas import HealthResponse, ServiceHealth

# How soon a load balancer should ask again when the classifier is not ready.
NOT_READY_RETRY_AFTER_S = 5


class NotReadyError(ServiceError):
    """No replica of the classifier is ready (503): the gateway cannot diagnose."""

    status_code = 503
    retry_after_s = NOT_READY_RETRY_AFTER_S


async def service_health(
    client: ModelClient[Any],
) -> tuple[ServiceHealth, dict[str, Any] | None]:
    """One service's readiness by replica, and its bundle facts when it is ready."""
    replicas = await client.replica_readiness()
    ready = any(replicas.values())
    params = await client.model_parameters() if ready else None
    health = ServiceHealth(
        ready=ready,
        replicas=replicas,
        model_bundle=bundle_summary(ServedFacts.from_parameters(params), None)
        if params and "checkpoints" in params
        else None,
        device=(params or {}).get("device"),
    )
    return health, params


async def health_report(gateway: Gateway) -> HealthResponse:
    """The ``/health`` answer, asking every replica of both services."""
    services: dict[str, ServiceHealth] = {}
    params: dict[str, dict[str, Any] | None] = {}
    for client in (gateway.classifier, gateway.detector):
        services[client.service], params[client.service] = await service_health(client)
    classifier_ready = services["classifier"].ready
    detector_ready = services["detector"].ready
    status = (
        "healthy"
        if classifier_ready and detector_ready
        else "degraded"
        if classifier_ready
        else "unhealthy"
    )
    devices = sorted({s.device for s in services.values() if s.device})
    warnings = []
    bundle = services["classifier"].model_bundle
    if bundle is not None and (text := demo_warning(bundle.kind)):
        warnings.append(text)
    if not detector_ready:
        warnings.append("detector service not ready: uploads get classification only")
    return HealthResponse(
        status=status,
        models_loaded=classifier_ready and detector_ready,
        device=",".join(devices) or "unknown",
        timestamp=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        services=services,
        demo=any(bool((p or {}).get("demo")) for p in params.values()),
        warnings=warnings,
        decodable_transfer_syntaxes=gateway.decodable,
    )


def public_health(report: HealthResponse) -> HealthResponse:
    """``report`` without what maps the deployment: per service only whether it is ready."""
    return report.model_copy(update={
        "services": {name: ServiceHealth(ready=s.ready, replicas={})
                     for name, s in report.services.items()},
    })


async def check_ready(gateway: Gateway) -> None:
    """Return if the classifier has a ready replica, else raise :class:`NotReadyError`.

    Read from the state the gateway's poller and circuit breaker keep (no call is made):
    the answer takes microseconds even while a replica hangs.
    """
    replicas = gateway.classifier.cached_readiness(gateway.readiness_max_age_s)
    if not any(replicas.values()):
        raise NotReadyError("classifier service not ready")
