"""API keys and browser security headers for the gateway.

Keys are configured as sha256 digests (``API_KEYS_SHA256="id:hex,..."``), so the
configuration, an environment dump or a leaked manifest never holds a usable key; the
id names the caller in logs and the audit log. Security headers go on every response;
the Content Security Policy is strict for the web page (which loads only its own files
and shows images as data: URIs) and relaxed only for ``/docs``, whose Swagger UI comes
from a CDN and starts from one inline script, allowed by its hash.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

API_KEY_HEADER = b"x-api-key"
SWAGGER_CDN = "https://cdn.jsdelivr.net"

PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)


class ApiKeys:
    """Which configured key (by id) a request carries, if any."""

    def __init__(self, digests: dict[str, str]) -> None:
        self._digests = [(bytes.fromhex(d), key_id) for key_id, d in digests.items()]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def identify(self, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
        """The key id for ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``, else None."""
        supplied: bytes | None = None
        for name, value in headers:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                supplied = value[7:].strip()
            elif name == API_KEY_HEADER:
                supplied = value.strip()
        if not supplied:
            return None
        digest = hashlib.sha256(supplied).digest()
        found = None
        for candidate, key_id in self._digests:  # compare all: no early exit
            if hmac.compare_digest(candidate, digest):
                found = key_id
        return found


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
    if not path.startswith("/static/"):
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


def docs_page(openapi_url: str, title: str) -> HTMLResponse:
    """Swagger UI with a CSP that allows exactly its CDN files and its own inline script."""
    page = get_swagger_ui_html(
        openapi_url=openapi_url,
        title=title,
        swagger_favicon_url="/static/favicon.svg",
        # No badge from the public validator (a third-party request with our schema URL).
        swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": False},
    )
    html = bytes(page.body).decode()
    inline = " ".join(_inline_script_hashes(html))
    csp = (
        f"default-src 'self'; script-src 'self' {SWAGGER_CDN} {inline}; "
        f"style-src 'self' {SWAGGER_CDN} 'unsafe-inline'; img-src 'self' data:; "
        "font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; object-src 'none'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
    return HTMLResponse(html, headers={"Content-Security-Policy": csp})


def document_api_keys(app: FastAPI) -> None:
    """Declare the API key schemes in OpenAPI, so Swagger's "Authorize" button sends one."""
    from gateway.admission import PROTECTED_PATHS

    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {})["securitySchemes"] = {
                "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "BearerKey": {"type": "http", "scheme": "bearer"},
            }
            for path in PROTECTED_PATHS:
                for operation in schema.get("paths", {}).get(path, {}).values():
                    operation["security"] = [{"ApiKeyHeader": []}, {"BearerKey": []}]
                    operation.setdefault("responses", {})["401"] = {
                        "description": "No valid API key",
                        "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
                    }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
