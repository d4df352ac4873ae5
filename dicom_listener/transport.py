"""The listener's port: plain and DICOM TLS associations told apart, handshakes off the
accept loop.

pynetdicom's own ``ssl_context`` wraps each socket in its accept loop, so one caller that
connects and never finishes its handshake would hold every other caller at the door. Here
the accept loop only accepts; each connection's own thread looks at its first byte and
decides:

- ``0x16`` (a TLS handshake record): the TLS handshake, bounded by
  ``HANDSHAKE_TIMEOUT_S``; with ``LISTENER_TLS_CA`` the caller's certificate must chain
  to it. A failed handshake is logged (peer address, reason) and counted, then closed.
- anything else (a plain A-ASSOCIATE-RQ starts with PDU type ``0x01``): refused (closed
  before any DICOM is read) under ``LISTENER_TLS_REQUIRED``, else served plain.

Without a TLS certificate every connection is served plain, as before.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pynetdicom.transport import ThreadedAssociationServer

log = logging.getLogger(__name__)

TLS_HANDSHAKE_RECORD = 0x16
HANDSHAKE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class TransportPolicy:
    """What the port accepts; ``on_refused(why)`` hears each connection turned away
    (``plain_refused`` or ``tls_failed``)."""

    tls: ssl.SSLContext | None = None
    tls_required: bool = False
    on_refused: Callable[[str], None] = lambda _why: None

    def admit(self, sock: socket.socket, peer: str) -> socket.socket | None:
        """The socket to serve (TLS-wrapped when the caller speaks TLS), or None: closed."""
        if self.tls is None:
            return sock
        sock.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            first = sock.recv(1, socket.MSG_PEEK)
        except OSError as exc:
            log.warning("DICOM connection from %s: nothing received (%s)", peer, _reason(exc))
            return None
        if not first:
            return None  # closed before saying anything: nothing to count
        if first[0] != TLS_HANDSHAKE_RECORD:
            if self.tls_required:
                log.warning("plain DICOM association from %s refused: LISTENER_TLS_REQUIRED "
                            "accepts DICOM TLS only", peer)
                self.on_refused("plain_refused")
                return None
            sock.settimeout(None)
            return sock
        try:
            secured = self.tls.wrap_socket(sock, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            log.warning("DICOM TLS handshake with %s failed: %s", peer, _reason(exc))
            self.on_refused("tls_failed")
            return None
        secured.settimeout(None)
        return secured


def _reason(exc: BaseException) -> str:
    """The handshake's failure as the log says it: OpenSSL's reason, never a traceback."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    return type(exc).__name__ if isinstance(exc, TimeoutError) else str(exc)


class PolicyAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with :class:`TransportPolicy` applied in each
    connection's own thread (never in the accept loop)."""

    def __init__(self, *args: Any, policy: TransportPolicy, **kwargs: Any) -> None:
        self.policy = policy
        super().__init__(*args, **kwargs)

    def finish_request(self, request: Any, client_address: Any) -> None:
        peer = str(client_address[0]) if isinstance(client_address, tuple) else "?"
        admitted = self.policy.admit(request, peer)
        if admitted is None:
            _close(request)
            return
        super().finish_request(admitted, client_address)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
