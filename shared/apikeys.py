"""Keys configured as sha256 digests (``API_KEYS_SHA256``, ``OPERATOR_KEYS_SHA256``).

So the configuration, an environment dump or a leaked manifest never holds a usable key;
the id names the caller in logs and the audit log. Shared by the gateway (API and
operator keys) and the DICOM listener's status server (operator keys). Torch-free.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

API_KEY_HEADER = b"x-api-key"


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
