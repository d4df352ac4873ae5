"""The test hosts themselves (tests/peers/hosts.py): reachable, cut, throttled, lossy, removed.

Two hosts on the bridge; one serves a 1 MB file over HTTP (``python -m http.server``
bound to its address). Each fault is checked from the outside (the test process, and
the other host), then healed. The network is removed afterwards, and a run killed before
its cleanup (faked: names with the pid of a process that has exited) is cleaned by the
next one.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.peers.hosts import Host, HostNetwork, host_network, require_hosts, sh

pytestmark = pytest.mark.timeout(300)

PORT = 8080
FILE_BYTES = 1024 * 1024


def _serve(host: Host, folder: Path) -> str:
    (folder / "blob").write_bytes(b"x" * FILE_BYTES)
    host.popen([sys.executable, "-m", "http.server", "--bind", host.address, str(PORT),
                "--directory", str(folder)], log=folder / "http.log")
    url = f"http://{host.address}:{PORT}/blob"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if _reachable(url):
            return url
        time.sleep(0.2)
    raise RuntimeError(f"http.server on {host.name} not up")


def _reachable(url: str, timeout_s: float = 1.0) -> bool:
    try:
        return httpx.get(url, timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def _fetch_from(host: Host, url: str) -> bool:
    """Whether ``host`` itself can fetch ``url`` (a client inside its namespace)."""
    code = (f"import urllib.request; urllib.request.urlopen({url!r}, timeout=2).read()")
    run = subprocess.run(host.command([sys.executable, "-c", code]), capture_output=True,
                         timeout=30)
    return run.returncode == 0


def test_hosts_reach_each_other_and_faults_apply(hosts: HostNetwork, tmp_path: Path) -> None:
    server, client = hosts.add("server"), hosts.add("client")
    assert server.address.startswith("198.1") and server.address != client.address
    url = _serve(server, tmp_path)
    assert _fetch_from(client, url), "host to host through the bridge"

    server.cut()
    assert not _reachable(url), "DROP both ways: nothing answers"
    assert not _fetch_from(client, url)
    assert server.dropped_packets() > 0
    server.heal()
    assert _reachable(url) and _fetch_from(client, url)

    server.cut(link_down=True)
    assert not _reachable(url)
    server.heal()
    assert _reachable(url, timeout_s=5.0)

    # 8 Mbit at 4 Mbit/s: at least about 2 s less the bucket (a lower bound, never flaky).
    server.throttle(rate="4mbit", burst="32kbit", latency="2s")
    assert "tbf" in sh("tc", "qdisc", "show", "dev", server.outer_link), "both ways"
    started = time.monotonic()
    assert len(httpx.get(url, timeout=60).content) == FILE_BYTES
    throttled_s = time.monotonic() - started
    server.heal()
    assert "tbf" not in sh("tc", "qdisc", "show", "dev", server.outer_link)
    print(f"\n1 MB through a 4 Mbit/s tbf: {throttled_s:.2f} s")
    assert throttled_s > 1.5

    server.lose(0.3)
    fetched = sum(_reachable(url, timeout_s=5.0) for _ in range(5))
    dropped = server.dropped_packets()
    server.heal()
    print(f"30 % random loss: {fetched}/5 fetched, {dropped} packets dropped")
    assert dropped > 0


def test_network_removed_after_use_and_stale_runs_cleaned() -> None:
    require_hosts()
    # A pid that is not alive stands for a run killed before its cleanup.
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"spt{dead.pid}"
    sh("ip", "netns", "add", f"{stale}-left")
    sh("ip", "link", "add", f"{stale}br", "type", "bridge")
    with host_network() as net:
        net.add("one")
        tag = net.tag
        assert f"{tag}-one" in sh("ip", "netns", "list")
        assert f"{stale}-left" not in sh("ip", "netns", "list"), "stale namespace removed"
        assert f"{stale}br" not in sh("ip", "-o", "link", "show")
    assert tag not in sh("ip", "netns", "list")
    assert tag not in sh("ip", "-o", "link", "show")
    assert tag not in sh("iptables", "-S", "FORWARD")
