"""Where results go: one sender per protocol, each answering per instance.

A sender never raises for a peer's trouble; it says, per SOP Instance UID, what
happened: ``stored``, ``retry`` (the peer may take it later: unreachable, timed out,
5xx, out of resources) or ``failed`` (it never will: refused, malformed, no context).
:mod:`shared.dicomnet.delivery` decides about retries and counting from that.

- :class:`DicomWebDestination`: STOW-RS (PS3.18 10.5), ``POST {root}/studies`` with
  ``multipart/related; type="application/dicom"``, optional bearer or basic auth.
- :class:`StoreScuDestination`: C-STORE (PS3.4 B) with pynetdicom, one association per
  batch, presentation contexts for the SOP classes in the batch (our result objects); over
  DICOM TLS when given a context (:mod:`shared.dicomnet.tls`).

Credentials never travel in clear beyond loopback (:func:`check_credentials_transport`).
"""

from __future__ import annotations

import asyncio
import io
import json
import secrets
import ssl
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from shared.lockdown import is_loopback

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
# PS3.18 / PS3.4 status codes a sender may see for one instance.
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
# HTTP statuses after which the same request may succeed later.
TRANSIENT_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})
# C-STORE success-with-warning statuses (coercion, elements discarded): stored.
STORE_WARNINGS = frozenset({0x0001, 0xB000, 0xB006, 0xB007})
MAX_AE_TITLE = 16


class DestinationConfigError(ValueError):
    """A results destination that cannot be used as configured (names the variable)."""


@dataclass
class SendOutcome:
    """What one attempt did with each instance (SOP Instance UID -> reason)."""

    stored: list[str] = field(default_factory=list)
    retry: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    @classmethod
    def all_retry(cls, uids: list[str], reason: str) -> SendOutcome:
        return cls(retry=dict.fromkeys(uids, reason))

    @classmethod
    def all_failed(cls, uids: list[str], reason: str) -> SendOutcome:
        return cls(failed=dict.fromkeys(uids, reason))


class Destination(Protocol):
    """A peer results are stored into. ``name`` labels metrics and logs (no secrets)."""

    name: str

    async def send(self, instances: dict[str, bytes]) -> SendOutcome:
        """Store ``{SOP Instance UID: Part 10 bytes}``; never raises for the peer's trouble."""
        ...

    async def close(self) -> None: ...


def check_credentials_transport(url: str, has_credentials: bool) -> None:
    """Refuse credentials sent over plain HTTP beyond loopback (the lockdown's rule)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DestinationConfigError(
            f"RESULTS_DICOMWEB_URL must be an http(s) URL with a host, not {url!r}"
        )
    if has_credentials and parts.scheme == "http" and not is_loopback(parts.hostname):
        raise DestinationConfigError(
            "RESULTS_DICOMWEB_BEARER_TOKEN / RESULTS_DICOMWEB_USER would travel in clear to "
            f"{parts.hostname}: use https:// beyond loopback"
        )


def check_dicomweb(root: str, *, bearer: bool, user: bool) -> None:
    """``RESULTS_DICOMWEB_URL`` and its credentials can be used together."""
    check_credentials_transport(root, bearer or user)
    if bearer and user:
        raise DestinationConfigError(
            "set RESULTS_DICOMWEB_BEARER_TOKEN or RESULTS_DICOMWEB_USER, not both"
        )


def _code(value: object) -> int | None:
    """A FailureReason value from DICOM JSON (a number, or a string of digits)."""
    try:
        return int(str(value), 0) if isinstance(value, str) else int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _items(answer: dict[str, object], tag: str) -> list[dict[str, object]]:
    element = answer.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return [item for item in values or [] if isinstance(item, dict)]


def _first(item: dict[str, object], tag: str) -> object:
    element = item.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return values[0] if isinstance(values, list) and values else None


def read_store_response(
    status: int, body: bytes, uids: list[str]
) -> SendOutcome:
    """A STOW-RS answer per instance: its Referenced/Failed SOP Sequences, then the status."""
    outcome = SendOutcome()
    try:
        answer = json.loads(body) if body else {}
    except ValueError:
        answer = {}
    if isinstance(answer, list):  # some servers wrap the one data set in a list
        answer = answer[0] if answer and isinstance(answer[0], dict) else {}
    if not isinstance(answer, dict):
        answer = {}
    mentioned: set[str] = set()
    for item in _items(answer, FAILED_SOP_SEQUENCE):
        uid = _first(item, REFERENCED_SOP_INSTANCE_UID)
        if uid not in uids:
            continue
        code = _code(_first(item, FAILURE_REASON))
        reason = f"failure reason 0x{code:04X}" if code is not None else f"failed (HTTP {status})"
        if code is not None and code & 0xFF00 == 0xA700:  # out of resources: later, maybe
            outcome.retry[str(uid)] = reason
        else:
            outcome.failed[str(uid)] = reason
        mentioned.add(str(uid))
    for item in _items(answer, REFERENCED_SOP_SEQUENCE):
        uid = _first(item, REFERENCED_SOP_INSTANCE_UID)
        if uid in uids and uid not in mentioned:
            outcome.stored.append(str(uid))
            mentioned.add(str(uid))
    for uid in uids:
        if uid in mentioned:
            continue
        if status in (200, 202):
            outcome.stored.append(uid)  # not named as failed in a success answer
        elif status in TRANSIENT_HTTP:
            outcome.retry[uid] = f"HTTP {status}"
        else:
            outcome.failed[uid] = f"HTTP {status}"
    return outcome


class DicomWebDestination:
    """STOW-RS to ``{root}/studies``; ``root`` is the DICOMweb root (e.g. ``.../dicom-web``)."""

    name = "dicomweb"

    def __init__(
        self,
        root: str,
        *,
        timeout_s: float,
        bearer_token: str | None = None,
        user: str | None = None,
        password: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        root = root.rstrip("/")
        check_dicomweb(root, bearer=bool(bearer_token), user=bool(user))
        self.url = root if root.endswith("/studies") else f"{root}/studies"
        headers = {"Accept": DICOM_JSON}
        if bearer_token:
            headers["Authorization"] = f"Bearer {bearer_token}"
        auth = httpx.BasicAuth(user, password or "") if user else None
        self._client = httpx.AsyncClient(
            headers=headers, auth=auth, timeout=timeout_s, transport=transport,
            follow_redirects=False,
        )

    @staticmethod
    def body(instances: dict[str, bytes]) -> tuple[bytes, str]:
        """``(multipart/related body, its Content-Type)`` for the instances."""
        boundary = secrets.token_hex(16)
        parts = [
            f"--{boundary}\r\nContent-Type: {DICOM}\r\n\r\n".encode() + data + b"\r\n"
            for data in instances.values()
        ]
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        return body, f'multipart/related; type="{DICOM}"; boundary={boundary}'

    async def send(self, instances: dict[str, bytes]) -> SendOutcome:
        uids = list(instances)
        body, content_type = self.body(instances)
        try:
            response = await self._client.post(
                self.url, content=body, headers={"Content-Type": content_type}
            )
        except httpx.TimeoutException:
            return SendOutcome.all_retry(uids, "timed out")
        except httpx.TransportError as exc:
            return SendOutcome.all_retry(uids, f"unreachable ({type(exc).__name__})")
        return read_store_response(response.status_code, response.content, uids)

    async def close(self) -> None:
        await self._client.aclose()


@dataclass(frozen=True)
class AeAddress:
    """``AE@host:port`` (``RESULTS_STORE_AE``)."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, setting: str = "RESULTS_STORE_AE") -> AeAddress:
        ae_title, at, address = text.strip().partition("@")
        host, colon, port = address.rpartition(":")
        if not (at and colon and ae_title and host and port.isdigit()):
            raise DestinationConfigError(f"{setting} is AE@host:port, not {text!r}")
        check_ae_title(ae_title, setting)
        if not 0 < int(port) < 65536:
            raise DestinationConfigError(f"{setting}: port {port} is out of range")
        return cls(ae_title, host.strip("[]"), int(port))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def check_ae_title(ae_title: str, setting: str) -> None:
    if not 0 < len(ae_title) <= MAX_AE_TITLE or not ae_title.isascii() or "\\" in ae_title:
        raise DestinationConfigError(f"{setting}: an AE title is 1-16 ASCII characters")


class StoreScuDestination:
    """C-STORE to ``AE@host:port`` as ``calling_ae``, one association per batch."""

    name = "dimse"

    def __init__(
        self, address: AeAddress, *, calling_ae: str, timeout_s: float,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        check_ae_title(calling_ae, "RESULTS_CALLING_AE")
        self.address = address
        self.calling_ae = calling_ae
        self.timeout_s = timeout_s
        self.tls = tls

    async def send(self, instances: dict[str, bytes]) -> SendOutcome:
        # pynetdicom blocks: one thread per attempt, bounded by its own timeouts.
        return await asyncio.to_thread(self._send, instances)

    def _send(self, instances: dict[str, bytes]) -> SendOutcome:
        from pynetdicom import AE  # imported here: only processes that deliver by DIMSE need it

        uids = list(instances)
        outcome = SendOutcome()
        datasets = {}
        for uid, data in instances.items():
            try:
                datasets[uid] = pydicom.dcmread(io.BytesIO(data))
            except Exception as exc:  # noqa: BLE001 - one unreadable object fails alone
                outcome.failed[uid] = f"not a DICOM file ({type(exc).__name__})"
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        ae.connection_timeout = self.timeout_s
        for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets.values()}):
            syntaxes = {
                str(ds.file_meta.TransferSyntaxUID) for ds in datasets.values()
                if str(ds.SOPClassUID) == sop_class
            }
            ae.add_requested_context(
                sop_class, sorted(syntaxes | {ExplicitVRLittleEndian, ImplicitVRLittleEndian})
            )
        if not datasets:
            return outcome
        address = self.address
        # TLS: the certificate is checked against the host we dial (server_hostname).
        tls_args = (self.tls, address.host) if self.tls is not None else None
        assoc = ae.associate(
            address.host, address.port, ae_title=address.ae_title, tls_args=tls_args
        )
        if not assoc.is_established:
            unreachable = "unreachable or TLS refused" if self.tls else "unreachable"
            reason = "association rejected" if assoc.is_rejected else unreachable
            pending = [uid for uid in uids if uid not in outcome.failed]
            if assoc.is_rejected:
                outcome.failed.update(dict.fromkeys(pending, reason))
            else:
                outcome.retry.update(dict.fromkeys(pending, reason))
            return outcome
        try:
            _store_each(assoc, datasets, outcome)
        finally:
            if assoc.is_established:
                assoc.release()
        return outcome

    async def close(self) -> None:
        return None


def _store_each(assoc: Any, datasets: dict[str, Any], outcome: SendOutcome) -> None:
    """C-STORE each dataset on the open association; each one's fate into ``outcome``."""
    for uid, dataset in datasets.items():
        if not assoc.is_established:
            outcome.retry[uid] = "association lost"
            continue
        try:
            status = assoc.send_c_store(dataset)
        except ValueError as exc:  # no accepted presentation context
            outcome.failed[uid] = f"not accepted ({exc})"[:200]
            continue
        code = getattr(status, "Status", None)
        if code is None:
            outcome.retry[uid] = "no C-STORE response"
        elif code == 0x0000 or code in STORE_WARNINGS:
            outcome.stored.append(uid)
        elif code & 0xFF00 == 0xA700:
            outcome.retry[uid] = f"status 0x{code:04X} (out of resources)"
        else:
            outcome.failed[uid] = f"status 0x{code:04X}"
