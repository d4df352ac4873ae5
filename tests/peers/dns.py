"""dnsmasq on a test host: A records the test rewrites, as a cluster's DNS serves them.

The shape of a Kubernetes headless Service: one name, one A record per ready replica,
a short TTL (1 s). Records live in a hosts file of our own (``addn-hosts``), rewritten
and re-read on SIGHUP (dnsmasq also clears its cache then); names under ``DOMAIN``
without a record answer NXDOMAIN from dnsmasq itself, never forwarded anywhere
(``no-resolv``). A plain process from a generated configuration, never the system
service. Hosts that should use it: :meth:`tests.peers.hosts.Host.resolve_with`.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.peers.hosts import Host
from tests.tools import require_tools

DOMAIN = "spine.test"  # RFC 2606: never a real name
TTL_S = 1


@dataclass
class Dnsmasq:
    """One dnsmasq bound to ``host``'s address; ``records`` is name -> addresses."""

    host: Host
    root: Path
    records: dict[str, list[str]] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def hosts_file(self) -> Path:
        return self.root / "records.hosts"

    @property
    def log_path(self) -> Path:
        return self.root / "dnsmasq.log"

    def config(self) -> str:
        return "\n".join([
            f"listen-address={self.host.address}",
            "bind-interfaces",
            "port=53",
            "no-resolv",  # nothing forwarded: a name it does not know does not exist
            "no-hosts",  # not this machine's /etc/hosts
            f"addn-hosts={self.hosts_file}",
            f"local=/{DOMAIN}/",
            f"local-ttl={TTL_S}",
            f"neg-ttl={TTL_S}",
            "user=root",  # SIGHUP re-reads the records file from a root-only temp folder
            f"pid-file={self.root / 'dnsmasq.pid'}",
            f"log-facility={self.log_path}",
            "log-queries",
        ]) + "\n"

    def start(self, timeout_s: float = 15.0) -> None:
        require_tools("dnsmasq")
        self.root.mkdir(parents=True, exist_ok=True)
        self._write_records()
        conf = self.root / "dnsmasq.conf"
        conf.write_text(self.config())
        self.process = self.host.popen(
            ["dnsmasq", "--keep-in-foreground", f"--conf-file={conf}"],
            log=self.root / "dnsmasq.out",
        )
        self.host.resolve_with(self.host.address)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dnsmasq exited:\n{self.log_text()[-2000:]}")
            if self.records and self._answers_first_record():
                return
            time.sleep(0.1)
        raise RuntimeError(f"dnsmasq not answering in {timeout_s} s:\n{self.log_text()[-2000:]}")

    def set(self, name: str, addresses: Iterable[str]) -> float:
        """``name`` now resolves to ``addresses`` (none: NXDOMAIN); when it took effect."""
        self.records[name] = list(addresses)
        self._write_records()
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)
        return time.monotonic()

    def resolve(self, name: str) -> list[str]:
        """What ``name`` resolves to as seen from this host (``getent``, through dnsmasq)."""
        run = subprocess.run(self.host.command(["getent", "ahostsv4", name]),
                             capture_output=True, text=True, timeout=10)
        return sorted({line.split()[0] for line in run.stdout.splitlines() if line.strip()})

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _write_records(self) -> None:
        lines = [f"{address} {name}" for name, addresses in self.records.items()
                 for address in addresses]
        temporary = self.hosts_file.with_suffix(".tmp")
        temporary.write_text("\n".join(lines) + "\n")
        temporary.replace(self.hosts_file)  # dnsmasq never reads a half-written file

    def _answers_first_record(self) -> bool:
        name, addresses = next(iter(self.records.items()))
        return self.resolve(name) == sorted(addresses)


def start_dnsmasq(host: Host, root: Path, records: Mapping[str, list[str]]) -> Dnsmasq:
    """A started dnsmasq on ``host`` serving ``records`` (at least one name)."""
    server = Dnsmasq(host, root, {name: list(a) for name, a in records.items()})
    server.start()
    return server
