"""Which replicas a service has: the URLs configured, with ``dns+`` names expanded.

A URL written ``dns+http://name:port`` stands for every address ``name`` resolves to:
with ``docker compose --scale classifier=3`` or a Kubernetes headless Service, each
replica is balanced individually. Plain URLs are always replicas.

Names are resolved off the request path: once before the gateway's first readiness poll,
then every ``DNS_REFRESH_SECONDS`` by a timer of the gateway (:mod:`gateway.runtime`),
each lookup bounded by ``DNS_RESOLVE_TIMEOUT_S``; so a replica added to or removed from
DNS is followed within ``DNS_REFRESH_SECONDS`` plus the record's TTL, and no upload ever
waits on a resolver. A name that cannot be resolved (the DNS server down or slow, or no
record at all) keeps the addresses it last resolved to, with a warning: a resolver that
fails for a moment never empties a service of its replicas, and a replica that is really
gone is taken out by its readiness poll and breaker instead.
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
DNS_RESOLVE_TIMEOUT_S = 5.0
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
    """The replica URLs of one service, as last resolved."""

    service: str
    urls: Sequence[str]
    resolve: Resolver = resolve_addresses
    timeout_s: float = DNS_RESOLVE_TIMEOUT_S
    _last: dict[str, list[str]] = field(default_factory=dict, init=False)  # name -> its URLs

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError(f"no URL configured for the {self.service} service")
        self.static = [u.rstrip("/") for u in self.urls if not u.startswith(DNS_PREFIX)]
        self.names = [
            httpx.URL(u.removeprefix(DNS_PREFIX)) for u in self.urls if u.startswith(DNS_PREFIX)
        ]

    async def refresh(self) -> list[str] | None:
        """Every replica URL, the ``dns+`` names resolved now (a name that fails keeps its
        last addresses); None when there is nothing to resolve or nothing was ever found."""
        if not self.names:
            return None
        found = list(self.static)
        for name in self.names:
            found.extend(await self._expand(name))
        return list(dict.fromkeys(found)) or None

    async def _expand(self, name: httpx.URL) -> list[str]:
        port = name.port or (443 if name.scheme == "https" else 80)
        key = str(name)
        try:
            async with asyncio.timeout(self.timeout_s):
                addresses = await self.resolve(name.host, port)
        except (OSError, TimeoutError) as exc:
            kept = self._last.get(key, [])
            why = "no answer in time" if isinstance(exc, TimeoutError) else str(exc)
            log.warning("%s: cannot resolve %s (%s); keeping its last %d address(es)",
                        self.service, name.host, why, len(kept))
            return kept
        hosts = (f"[{a}]" if ":" in a else a for a in sorted(set(addresses)))
        self._last[key] = [f"{name.scheme}://{host}:{port}" for host in hosts]
        return self._last[key]
