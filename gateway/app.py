"""The gateway app: wiring only. Routes live in their rooms, the work in the modules they call.

``create_app(settings)`` builds one app from one :class:`~shared.settings.GatewaySettings`:
the routers (:mod:`gateway.http.routes`, :mod:`gateway.http.samples`,
:mod:`gateway.dicomweb.routes`), the static page and Swagger UI, and around the routes,
outermost first: request context (request id, security headers, header limits, metrics,
access log), the refusal audit (:mod:`gateway.http.refusals`), CORS (only with an
allow-list), admission (API key, rate and concurrency limits), then FastAPI. The
lifespan builds and closes the app-wide :class:`~gateway.runtime.Gateway`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from gateway.audit import AuditLog
from gateway.dicomweb import routes as dicomweb_routes
from gateway.http import routes, samples
from gateway.http.admission import AdmissionMiddleware
from gateway.http.errors import error_body, register_error_handlers
from gateway.http.ratelimit import ConcurrencyLimiter, TokenBucketLimiter
from gateway.http.refusals import RefusalAuditMiddleware
from gateway.http.security import (
    SWAGGER_ASSETS,
    ApiKeys,
    document_api_keys,
    security_headers,
    swagger_assets_dir,
)
from gateway.runtime import Gateway
from gateway.telemetry import GatewayMetrics
from shared.observability import REQUEST_ID_HEADER, RequestContextMiddleware
from shared.settings import GatewaySettings
from shared.version import SOFTWARE_VERSION

log = logging.getLogger(__name__)

# Headers a browser on an allowed origin may read from our answers.
EXPOSED_HEADERS = [
    REQUEST_ID_HEADER, "Retry-After", "X-Original-Width", "X-Original-Height",
    "X-Canonical-Width", "X-Canonical-Height", "X-Scale-X", "X-Scale-Y", "X-Warnings",
]


def create_app(settings: GatewaySettings) -> FastAPI:
    """The gateway around ``settings``, read once by the entry point (``spine gateway``)."""
    metrics = GatewayMetrics()
    api_keys = ApiKeys(settings.api_keys_sha256)
    app = FastAPI(
        title="Spine lesion service",
        version=SOFTWARE_VERSION,
        description=(
            "Classifies a spine radiograph (DICOM) as Normal/Abnormal with a weighted ensemble "
            "and localises lesions with YOLO. **For research only: not a medical device.**"
        ),
        lifespan=_lifespan(settings, metrics, api_keys),
        docs_url=None,  # served by gateway.http.routes with its own CSP
        redoc_url=None,  # would need fonts and scripts from two more hosts
    )
    app.state.metrics = metrics
    app.state.operator_keys = ApiKeys(settings.operator_keys_sha256)  # /health details
    _add_middleware(app, settings, metrics, api_keys)
    if api_keys.enabled:
        document_api_keys(app)
    register_error_handlers(app)
    app.include_router(routes.router)
    app.include_router(dicomweb_routes.router)
    app.include_router(samples.router)
    if routes.STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=routes.STATIC_DIR), name="static")
    if (swagger := swagger_assets_dir()) is not None:
        app.mount(SWAGGER_ASSETS, StaticFiles(directory=swagger), name="swagger-ui")
    return app


def _lifespan(
    settings: GatewaySettings, metrics: GatewayMetrics, api_keys: ApiKeys
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Start-up and shut-down: the model clients, decode pool and audit log of one app."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gateway = Gateway.create(settings, metrics)
        app.state.gateway = gateway
        await gateway.start()
        missing = [name for name, ok in gateway.decodable.items() if not ok]
        log.info("gateway up; transfer syntaxes without a decoder: %s", missing or "none")
        log.info("results delivery: %s", gateway.delivery.describe())
        log.info(
            "security: api keys %s, rate limit %s/min, cors %s, internal token %s",
            "on" if api_keys.enabled else "off", settings.rate_limit_per_minute or "off",
            settings.cors_allow_origins or "off", "set" if settings.internal_token else "unset",
        )
        yield
        await gateway.close()

    return lifespan


def _add_middleware(
    app: FastAPI, settings: GatewaySettings, metrics: GatewayMetrics, api_keys: ApiKeys
) -> None:
    # add_middleware puts each one outside the previous: admission innermost.
    app.add_middleware(
        AdmissionMiddleware,
        keys=api_keys,
        rate=TokenBucketLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
        if settings.rate_limit_per_minute > 0 else None,
        slots=ConcurrencyLimiter(settings.max_uploads_per_client, settings.max_inflight_uploads),
        metrics=metrics,
    )
    if settings.cors_allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allow_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "X-API-Key", REQUEST_ID_HEADER, "Content-Type"],
            expose_headers=EXPOSED_HEADERS,
            allow_credentials=False,
            max_age=600,
        )
    app.add_middleware(RefusalAuditMiddleware, audit=_audit_log)
    app.add_middleware(
        RequestContextMiddleware,
        metrics=metrics.http,
        response_headers=lambda path: security_headers(path, settings.hsts_seconds),
        error_body=error_body,
        max_header_bytes=settings.max_header_bytes,
    )


def _audit_log(scope: dict[str, Any]) -> AuditLog | None:
    """The audit log of the app serving ``scope`` (None before start-up)."""
    gateway = getattr(scope["app"].state, "gateway", None)
    return gateway.audit if gateway is not None else None
