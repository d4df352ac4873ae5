"""uvicorn's h11 protocol with a deadline on request headers.

uvicorn arms no timer until a first response completes, and its keep-alive timer is
cancelled by any byte: a client that sends one header byte every few seconds holds
its connection (and, with ``limit_concurrency``, a place in the process) for ever.
Here every connection must finish a request's headers within ``HTTP_HEADER_TIMEOUT_S``
of its first byte (or of being opened), else it is closed. Body chunks have their own
idle deadline where the body is read (:mod:`shared.bodies`).
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class HeaderDeadlineProtocol(H11Protocol):
    """H11Protocol that closes a connection whose request headers take too long."""

    header_timeout_s: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:
            self._arm_header_timer()  # (still) waiting for a request line and headers
        else:
            self._disarm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(
                self.header_timeout_s, self._headers_too_slow
            )

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.logger.info("request headers not received within %gs; connection closed",
                             self.header_timeout_s)
            self.transport.close()


def protocol_with_header_timeout(timeout_s: float) -> type[H11Protocol]:
    """A :class:`HeaderDeadlineProtocol` subclass with this deadline (uvicorn's ``http=``)."""
    attributes = {"header_timeout_s": timeout_s}
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), attributes)
