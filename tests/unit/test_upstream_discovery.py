"""Which replicas a service has (gateway.upstream.discovery): plain URLs and ``dns+`` names."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from gateway.upstream.discovery import Discovery


class Names:
    """A resolver whose answers the test changes: replicas join and leave."""

    def __init__(self, **names: list[str]) -> None:
        self.names = names
        self.asked: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append((host, port))
        if host not in self.names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.names[host]


def test_no_url_is_refused() -> None:
    with pytest.raises(ValueError, match="no URL configured for the detector service"):
        Discovery("detector", [])


async def test_plain_urls_are_the_replicas_and_never_resolved() -> None:
    discovery = Discovery("classifier", ["http://a:8001/", "http://b:8001"], Names())
    assert discovery.static == ["http://a:8001", "http://b:8001"]
    assert await discovery.refresh() is None  # nothing to resolve: the replicas stay


async def test_a_dns_name_expands_to_every_address_through_the_system_resolver() -> None:
    discovery = Discovery("classifier", ["dns+http://localhost:8001"])
    urls = await discovery.refresh()
    assert urls is not None and "http://127.0.0.1:8001" in urls
    assert set(urls) <= {"http://127.0.0.1:8001", "http://[::1]:8001"}


async def test_replicas_join_and_leave_when_the_name_is_resolved_again() -> None:
    names = Names(classifier=["10.0.0.2", "10.0.0.1", "10.0.0.2"])
    discovery = Discovery("classifier", ["http://static:8001", "dns+http://classifier:8001"], names)
    first = await discovery.refresh()
    assert first == ["http://static:8001", "http://10.0.0.1:8001", "http://10.0.0.2:8001"]
    names.names["classifier"] = ["10.0.0.3", "fd00::1"]
    assert await discovery.refresh() == [
        "http://static:8001", "http://10.0.0.3:8001", "http://[fd00::1]:8001"
    ]
    assert names.asked == [("classifier", 8001)] * 2


async def test_the_default_port_follows_the_scheme() -> None:
    names = Names(plain=["10.0.0.1"], tls=["10.0.0.2"])
    discovery = Discovery("detector", ["dns+http://plain", "dns+https://tls"], names)
    assert await discovery.refresh() == ["http://10.0.0.1:80", "https://10.0.0.2:443"]


async def test_a_name_that_never_resolved_contributes_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    names = Names(good=["10.0.0.1"])
    discovery = Discovery("detector", ["dns+http://gone:8002", "dns+http://good:8002"], names)
    assert await discovery.refresh() == ["http://10.0.0.1:8002"]
    assert "detector: cannot resolve gone" in caplog.text
    alone = Discovery("detector", ["dns+http://gone:8002"], names)
    assert await alone.refresh() is None  # nothing found at all: keep what there is


async def test_a_name_that_fails_to_resolve_keeps_its_last_addresses(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A resolver down for a moment (or a record gone) never empties the service."""
    names = Names(a=["10.0.0.1", "10.0.0.2"], b=["10.0.0.9"])
    discovery = Discovery("classifier", ["dns+http://a:8001", "dns+http://b:8001"], names)
    before = await discovery.refresh()
    del names.names["a"]
    names.names["b"] = ["10.0.0.8"]
    assert await discovery.refresh() == [
        "http://10.0.0.1:8001", "http://10.0.0.2:8001", "http://10.0.0.8:8001"
    ]
    assert before is not None and "cannot resolve a" in caplog.text
    assert "keeping its last 2 address(es)" in caplog.text


async def test_a_resolver_that_hangs_is_given_up_on_in_bounded_time() -> None:
    resolved = Names(slow=["10.0.0.1"])
    hang = asyncio.Event()

    async def hanging(host: str, port: int) -> list[str]:
        if hang.is_set():
            await asyncio.sleep(60)
        return await resolved(host, port)

    discovery = Discovery("detector", ["dns+http://slow:8002"], hanging, timeout_s=0.1)
    assert await discovery.refresh() == ["http://10.0.0.1:8002"]
    hang.set()
    started = time.monotonic()
    assert await discovery.refresh() == ["http://10.0.0.1:8002"]  # its last addresses
    assert time.monotonic() - started < 5.0  # a hang guard: the bound is 0.1 s
