"""One error base class for every failure that becomes an HTTP answer.

Every error type in the project that a route may turn into a response
subclasses :class:`ServiceError`: it carries its own HTTP status, a message that
is safe to show a client (fixed sentences and numbers, never PHI, never the
text of a library exception), and optional retry advice. Error mapping is then
one rule (``exc.status_code``, ``exc.message``, ``exc.retry_after_s``) instead
of ``isinstance`` ladders or guesses from message text.
"""

from __future__ import annotations


class ServiceError(Exception):
    """A failure with an HTTP status, a client-safe message and optional retry advice."""

    status_code: int = 500
    retry_after_s: float | None = None

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s
