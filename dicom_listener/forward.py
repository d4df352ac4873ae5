"""One instance to the gateway over HTTP: ``POST /upload/dicom``, and what came back.

Over HTTP on purpose: every limit of the gateway (size, input selection, admission,
API keys) applies to the listener as to any client, and the listener scales with the
gateway's replicas behind one URL. It asks for the objects of its own ``RESULTS_OBJECTS``
(``parts=sr,gsps`` by default); the answer of a 200 is ``multipart/related``: those
objects (Content-ID ``<sr>``, ``<gsps>``, ``<sc>``) and the ``/upload`` JSON
(``<analysis>``), see ``gateway/dicomweb/outputs.py``; it is split with the standard library.

:class:`Forwarded` says what to do next: ``analysed`` (deliver the objects), ``refused``
(422: input selection, or the image cannot carry a DICOM result), ``failed`` (another
4xx: the gateway will never take it), ``retry`` (unreachable, timed out, 408/429/5xx:
try again later, ``Retry-After`` honoured).
"""

from __future__ import annotations

import email.parser
import email.policy
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import httpx

from shared import tracing

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_REASON = 300


class Fate(StrEnum):
    ANALYSED = "analysed"
    REFUSED = "refused"
    FAILED = "failed"
    RETRY = "retry"


@dataclass
class Forwarded:
    """The gateway's answer for one instance, reduced to what the listener needs."""

    fate: Fate
    reason: str = ""
    status: int | None = None
    retry_after_s: float | None = None
    analysis: dict[str, Any] = field(default_factory=dict)
    objects: dict[str, bytes] = field(default_factory=dict)  # Content-ID -> Part 10 file

    @property
    def sr(self) -> bytes | None:
        return self.objects.get("sr")

    @property
    def gsps(self) -> bytes | None:
        return self.objects.get("gsps")

    @property
    def diagnosis(self) -> str | None:
        value = self.analysis.get("diagnosis")
        return value if value in ("Normal", "Abnormal") else None


def split_related(content_type: str, body: bytes) -> dict[str, tuple[str, bytes]]:
    """``multipart/related`` -> ``{Content-ID: (content type, bytes)}``."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise ValueError("the gateway's answer is not multipart")
    parts = {}
    for part in message.iter_parts():
        name = str(part.get("Content-ID", "")).strip().strip("<>")
        parts[name] = (part.get_content_type(), part.get_payload(decode=True) or b"")
    return parts


def _message(response: httpx.Response) -> str:
    """The gateway's error message (ours: it never quotes patient data), shortened."""
    try:
        text = str(response.json().get("message", ""))
    except (ValueError, AttributeError):
        text = ""
    return (text or f"HTTP {response.status_code}")[:MAX_REASON]


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return None


def interpret(response: httpx.Response) -> Forwarded:
    """What a gateway answer means for the instance."""
    status = response.status_code
    if status == 200:
        try:
            parts = split_related(response.headers.get("content-type", ""), response.content)
            analysis = json.loads(parts["analysis"][1])
        except (KeyError, ValueError) as exc:
            return Forwarded(Fate.RETRY, f"unreadable gateway answer ({exc})", status)
        objects = {
            name: data for name, (kind, data) in parts.items()
            if kind == "application/dicom" and data
        }
        return Forwarded(Fate.ANALYSED, status=status, analysis=analysis, objects=objects)
    if status == 422:
        return Forwarded(Fate.REFUSED, _message(response), status)
    if status in RETRY_STATUSES:
        return Forwarded(Fate.RETRY, _message(response), status, _retry_after(response))
    return Forwarded(Fate.FAILED, _message(response), status)


class GatewayClient:
    """An ``httpx.AsyncClient`` to ``LISTENER_GATEWAY_URL`` (with the API key if set)."""

    def __init__(
        self, url: str, *, api_key: str | None, timeout_s: float, objects: str = "sr,gsps"
    ) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self.url = url.rstrip("/")
        self.objects = objects
        self._client = httpx.AsyncClient(
            base_url=self.url, headers=headers, timeout=httpx.Timeout(timeout_s, connect=5.0),
            event_hooks={"request": [tracing.inject_into_request]},
        )

    async def forward(self, data: bytes) -> Forwarded:
        """Analyse one Part 10 instance; never raises for the gateway's trouble."""
        with tracing.span("forward to gateway", kind="client") as live:
            try:
                response = await self._client.post(
                    "/upload/dicom",
                    params={"parts": self.objects},
                    files={"file": ("instance.dcm", data, "application/dicom")},
                    headers={"Accept": "multipart/related"},
                )
            except httpx.TimeoutException:
                return Forwarded(Fate.RETRY, "the gateway did not answer in time")
            except httpx.HTTPError as exc:
                return Forwarded(Fate.RETRY, f"gateway unreachable ({type(exc).__name__})")
            tracing.annotate(live, **{"http.response.status_code": response.status_code})
            return interpret(response)

    async def ready(self) -> bool:
        try:
            return (await self._client.get("/livez", timeout=2.0)).status_code == 200
        except httpx.HTTPError:
            return False

    async def close(self) -> None:
        await self._client.aclose()
