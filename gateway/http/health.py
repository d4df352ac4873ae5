"""``/health`` and ``/readyz``: the gateway's view of its model services.

Healthy: both services have a ready replica; degraded: only the classifier (uploads
get classification without boxes); unhealthy: no classifier, so no diagnosis.
Readiness (for a load balancer) needs the classifier only, and is answered from cached
replica state (a background poll every ``READINESS_INTERVAL_S`` and the breaker); a
replica whose bundle facts cannot be read or disagree with the others' is not ready, and
a 503 says why (:mod:`gateway.upstream.facts`).
Replica URLs, bundle paths and checkpoint hashes are for operators
(``OPERATOR_KEYS_SHA256``): everyone else gets :func:`public_health`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from gateway.pipeline.response import parts_summary
from gateway.runtime import Gateway
from gateway.schemas import HealthResponse, ServiceHealth
from gateway.upstream.client import ModelClient
from shared.contract import ServedFacts, demo_warning
from shared.errors import ServiceError

# How soon a load balancer should ask again when the classifier is not ready.
NOT_READY_RETRY_AFTER_S = 5


class NotReadyError(ServiceError):
    """No replica of the classifier is ready (503): the gateway cannot diagnose."""

    status_code = 503
    retry_after_s = NOT_READY_RETRY_AFTER_S


async def service_health(client: ModelClient[Any]) -> ServiceHealth:
    """One service's readiness by replica (asked now), and the facts its replicas agree on.

    A replica whose facts cannot be read or disagree is not ready; ``problems`` says why.
    """
    replicas = await client.replica_readiness()
    usable = {r.url for r in client.replicas if r.usable}
    replicas = {url: ready and url in usable for url, ready in replicas.items()}
    facts: ServedFacts | None = client.agreed_facts()
    devices = sorted({r.facts.device for r in client.replicas if r.usable})
    return ServiceHealth(
        ready=any(replicas.values()),
        replicas=replicas,
        model_bundle=parts_summary({client.service: facts}) if facts is not None else None,
        device=",".join(devices) or None,
        problems={url: detail for url, (_, detail) in client.problems().items()},
    )


async def health_report(gateway: Gateway) -> HealthResponse:
    """The ``/health`` answer, asking every replica of both services."""
    services: dict[str, ServiceHealth] = {}
    demo = False
    for client in (gateway.pipeline.classifier, gateway.pipeline.detector):
        services[client.service] = await service_health(client)
        facts = client.agreed_facts()
        demo = demo or (facts is not None and facts.demo)
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
    building = gateway.pipeline.building
    build = building.current() if building is not None else None
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
        demo=demo,
        warnings=warnings,
        decodable_transfer_syntaxes=gateway.decodable,
        bundle_build=build,
    )


def public_health(report: HealthResponse) -> HealthResponse:
    """``report`` without what maps the deployment: per service only whether it is ready
    (and a failed build's reason, which may name local paths, left out)."""
    build = report.bundle_build
    return report.model_copy(update={
        "services": {name: ServiceHealth(ready=s.ready, replicas={}, problems={})
                     for name, s in report.services.items()},
        "bundle_build": build.model_copy(update={"error": None}) if build else None,
    })


async def check_ready(gateway: Gateway) -> None:
    """Return if the classifier has a ready replica, else raise :class:`NotReadyError`.

    Read from the state the gateway's poller and circuit breaker keep (no call is made):
    the answer takes microseconds even while a replica hangs.
    """
    building = gateway.pipeline.building
    if building is not None and (refused := building.refusal()) is not None:
        raise NotReadyError(refused.message, retry_after_s=refused.retry_after_s)
    classifier = gateway.pipeline.classifier
    replicas = classifier.cached_readiness(gateway.readiness_max_age_s)
    if not any(replicas.values()):
        problems = [public for public, _ in classifier.problems().values()]
        why = f": {'; '.join(problems)}" if problems else ""
        raise NotReadyError(f"classifier service not ready{why}")
