"""API keys and browser security headers for the gateway.

Keys (:class:`~shared.apikeys.ApiKeys`, re-exported here) are configured as sha256
digests (``API_KEYS_SHA256="id:hex,..."``). Security headers go on every response;
the Content Security Policy is strict for the web page (which loads only its own files
and shows images as data: URIs) and relaxed only for ``/docs``: Swagger UI, served by the
gateway itself from the pinned ``fastapi-offline`` package (no CDN, no third-party
host), starts from one inline script, allowed by its hash.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import re
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

from shared.apikeys import ApiKeys

__all__ = ["ApiKeys", "docs_page", "document_api_keys", "security_headers"]

# The PyPI package (pinned in requirements/constraints.txt) whose Swagger UI files we serve,
# and where (a StaticFiles mount in gateway.app).
SWAGGER_PACKAGE = "fastapi_offline"
SWAGGER_ASSETS = "/docs/assets"
# Paths whose answers are the same for everyone: browsers may cache them.
CACHEABLE_PREFIXES = ("/static/", f"{SWAGGER_ASSETS}/")

PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)


def security_headers(path: str, hsts_seconds: int = 0) -> list[tuple[str, str]]:
    """Headers for every response; a route's own (``/docs``'s CSP) take precedence."""
    headers = [
        ("Content-Security-Policy", PAGE_CSP),
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "DENY"),
        ("Referrer-Policy", "no-referrer"),
        ("Permissions-Policy", "camera=(), microphone=(), geolocation=(), payment=(), usb=()"),
        ("Cross-Origin-Opener-Policy", "same-origin"),
        ("Cross-Origin-Resource-Policy", "same-origin"),
    ]
    if not path.startswith(CACHEABLE_PREFIXES):
        # Results describe a patient's image: no shared or browser cache may keep them.
        headers.append(("Cache-Control", "no-store"))
    if hsts_seconds:
        headers.append(("Strict-Transport-Security", f"max-age={hsts_seconds}"))
    return headers


def _inline_script_hashes(html: str) -> list[str]:
    scripts = re.findall(r"<script>(.*?)</script>", html, flags=re.DOTALL)
    return [
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
        for s in scripts
    ]


def swagger_assets_dir() -> Path | None:
    """The folder of Swagger UI's files in the pinned ``fastapi-offline`` package, if installed.

    Only its static files are used (found without importing it): Swagger UI 5, which
    renders OpenAPI 3.1 (``swagger-ui-bundle``'s 4.x cannot).
    """
    spec = importlib.util.find_spec(SWAGGER_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / "static"
        if (folder / "swagger-ui-bundle.js").is_file():
            return folder
    return None


def docs_page(openapi_url: str, title: str) -> HTMLResponse:
    """Swagger UI from our own files, with a CSP that allows them and its one inline script."""
    page = get_swagger_ui_html(
        openapi_url=openapi_url,
        title=title,
        swagger_js_url=f"{SWAGGER_ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{SWAGGER_ASSETS}/swagger-ui.css",
        swagger_favicon_url="/static/favicon.svg",
        # No badge from the public validator (a third-party request with our schema URL).
        swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": False},
    )
    html = bytes(page.body).decode()
    inline = " ".join(_inline_script_hashes(html))
    csp = (
        f"default-src 'self'; script-src 'self' {inline}; "
        "style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; object-src 'none'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
    return HTMLResponse(html, headers={"Content-Security-Policy": csp})


def document_api_keys(app: FastAPI) -> None:
    """Declare the API key schemes in OpenAPI, so Swagger's "Authorize" button sends one."""
    from gateway.http.admission import is_protected

    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {})["securitySchemes"] = {
                "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "BearerKey": {"type": "http", "scheme": "bearer"},
            }
            paths = schema.get("paths", {})
            for path in filter(is_protected, paths):
                for operation in paths[path].values():
                    operation["security"] = [{"ApiKeyHeader": []}, {"BearerKey": []}]
                    operation.setdefault("responses", {})["401"] = {
                        "description": "No valid API key",
                        "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
                    }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
