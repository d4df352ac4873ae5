"""Which replicas a service has: the URLs configured, with ``dns+`` names expanded.

A URL written ``dns+http://name:port`` stands for every address ``name`` resolves to,
re-resolved at most every ``DNS_REFRESH_SECONDS``: with ``docker compose --scale
classifier=3`` or a Kubernetes headless Service, each replica is balanced individually.
Plain URLs are always replicas. A name that does not resolve is logged and contributes
nothing this time; when nothing at all is found, the replicas stay as they were.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import httpx

log = logging.getLogger(__name__)

DNS_REFRESH_SECONDS = 10.0
DNS_PREFIX = "dns+"

# (host, port) -> the addresses it resolves to now; OSError when it does not resolve.
Resolver = Callable[[str, int], Awaitable[list[str]]]


async def resolve_addresses(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, through the system resolver."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass
class Discovery:
    """The replica URLs of one service (``refresh`` says when they may have changed)."""

    service: str
    urls: Sequence[str]
    resolve: Resolver = resolve_addresses
    refresh_s: float = DNS_REFRESH_SECONDS
    _resolved_at: float = field(default=float("-inf"), init=False)

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError(f"no URL configured for the {self.service} service")
        self.static = [u.rstrip("/") for u in self.urls if not u.startswith(DNS_PREFIX)]
        self.names = [
            httpx.URL(u.removeprefix(DNS_PREFIX)) for u in self.urls if u.startswith(DNS_PREFIX)
        ]

    async def refresh(self, now: float) -> list[str] | None:
        """Every replica URL when the ``dns+`` names were due for resolving again and
        something was found; None when the replicas stay as they are."""
        if not self.names or now - self._resolved_at < self.refresh_s:
            return None
        self._resolved_at = now
        found = list(self.static)
        for name in self.names:
            found.extend(await self._expand(name))
        return list(dict.fromkeys(found)) or None

    async def _expand(self, name: httpx.URL) -> list[str]:
        port = name.port or (443 if name.scheme == "https" else 80)
        try:
            addresses = await self.resolve(name.host, port)
        except OSError:
            log.warning("%s: cannot resolve %s", self.service, name.host)
            return []
        hosts = (f"[{a}]" if ":" in a else a for a in sorted(set(addresses)))
        return [f"{name.scheme}://{host}:{port}" for host in hosts]
