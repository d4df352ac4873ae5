"""TLS contexts for DICOM associations (PS3.15 B.1, BCP 195: TLS 1.2 or later).

One place builds both ends from PEM files named by settings, so an unreadable file, a
key that does not match its certificate or a missing half fails at start-up naming the
variable (:class:`TlsConfigError`), never at the first association.

- :func:`server_context`: the listener's end. With a CA, a caller must present a client
  certificate that chains to it (mutual TLS, as IHE ATNA's secure node expects).
- :func:`client_context`: our end when we send results by C-STORE
  (:func:`store_tls_context` reads ``RESULTS_STORE_TLS*``). The destination's
  certificate must chain to the given CA (else the system's) and, unless turned off, name
  the host we dialled (a DNS name or an IP address in its subjectAltName).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from shared.dicomnet.destinations import DestinationConfigError
from shared.settings import ResultsDeliverySettings

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


class TlsConfigError(ValueError):
    """TLS files that cannot be used as configured (the message names the variables)."""


def _pair(cert: Path | None, key: Path | None, prefix: str) -> tuple[Path, Path] | None:
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise TlsConfigError(f"{prefix}_CERT and {prefix}_KEY go together: set both or neither")
    return cert, key


def _load_chain(context: ssl.SSLContext, cert: Path, key: Path, prefix: str) -> None:
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(
            f"{prefix}_CERT / {prefix}_KEY ({cert}, {key}) cannot be used: {_why(exc)}"
        ) from exc


def _load_ca(context: ssl.SSLContext, ca: Path, setting: str) -> None:
    try:
        context.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(f"{setting} ({ca}) cannot be used: {_why(exc)}") from exc


def _why(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)


def server_context(
    cert: Path | None, key: Path | None, ca: Path | None, *, prefix: str = "LISTENER_TLS"
) -> ssl.SSLContext | None:
    """The listener's TLS context, or None when no certificate is configured."""
    pair = _pair(cert, key, prefix)
    if pair is None:
        if ca is not None:
            raise TlsConfigError(f"{prefix}_CA needs {prefix}_CERT and {prefix}_KEY")
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    _load_chain(context, *pair, prefix)
    if ca is not None:
        _load_ca(context, ca, f"{prefix}_CA")
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    ca: Path | None, cert: Path | None, key: Path | None, *, check_hostname: bool = True,
    prefix: str = "RESULTS_STORE_TLS",
) -> ssl.SSLContext:
    """Our TLS context as the calling end: the peer verified, our certificate if given."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = MINIMUM_VERSION
    context.check_hostname = check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    if ca is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        _load_ca(context, ca, f"{prefix}_CA")
    pair = _pair(cert, key, prefix)
    if pair is not None:
        _load_chain(context, *pair, prefix)
    return context


def store_tls_context(settings: ResultsDeliverySettings) -> ssl.SSLContext | None:
    """The C-STORE destination's TLS context (``RESULTS_STORE_TLS*``), None when off.

    TLS files set while ``RESULTS_STORE_TLS`` is off are refused: results would go in
    clear while the configuration reads as if they were protected.
    """
    files = (settings.results_store_tls_ca, settings.results_store_tls_cert,
             settings.results_store_tls_key)
    if not settings.results_store_tls:
        if any(path is not None for path in files):
            raise DestinationConfigError(
                "RESULTS_STORE_TLS_CA / _CERT / _KEY are set but RESULTS_STORE_TLS is off: "
                "set RESULTS_STORE_TLS=true (or remove them)"
            )
        return None
    try:
        return client_context(*files, check_hostname=settings.results_store_tls_check_hostname)
    except TlsConfigError as exc:
        raise DestinationConfigError(str(exc)) from exc
