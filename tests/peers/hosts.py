"""Test hosts on this machine: network namespaces on a Linux bridge, for multi-host tests.

Each :class:`Host` is a network namespace with one veth link to a bridge in the root
namespace, and one address from 198.18.0.0/15 (RFC 2544's range for network tests, never
a real network). The bridge holds the ``.1`` address of the run's /24, so the test
process reaches every host directly; the hosts reach each other through the bridge.
Processes run inside a host with ``ip netns exec``: they see only its link (and its own
``/etc/netns/<name>/resolv.conf``, which is how a host is given its DNS server).

Faults, each undone by :meth:`Host.heal`: :meth:`Host.cut` (iptables DROP both ways, or
the link down), :meth:`Host.throttle` (``tc tbf`` on both ends of its link) and
:meth:`Host.lose` (iptables ``-m statistic`` random drop, both ways).

Cleanup whatever happens: :meth:`HostNetwork.close` runs from the fixture's ``finally``
(failures, KeyboardInterrupt); a run killed before it (SIGKILL, a crash) is cleaned by
the next one: every name carries ``spt<pid>``, and a start removes the namespaces,
bridges, firewall rules and ``/etc/netns`` folders of any ``spt`` pid no longer alive.
Needs root and iproute2, iptables (:mod:`tests.tools` names the packages under ``CI=1``).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

from tests.tools import missing_commands, missing_message, unavailable

PREFIX = "spt"
NETWORK = ipaddress.ip_network("198.18.0.0/15")
NETNS_ETC = Path("/etc/netns")
LOCK_FILE = Path("/run/lock/spine-test-hosts.lock")
# Fault rules live in chains of their own, so healing is a flush: (chain, interface flag).
FAULT_CHAINS = {"INPUT": ("SPT-IN", "-i"), "OUTPUT": ("SPT-OUT", "-o")}
INNER_LINK = "eth0"
COMMANDS = ("ip", "tc", "iptables")
_OURS = re.compile(rf"^{PREFIX}(\d+)")


def require_hosts(*extra: str) -> None:
    """Root and the network tools, or skip (locally) / fail (CI) naming the packages."""
    missing = missing_commands((*COMMANDS, *extra))
    if missing:
        unavailable(missing_message(missing))
    if os.geteuid() != 0:
        unavailable("the test hosts need root (network namespaces, iptables, tc)")


def sh(*argv: str, check: bool = True, netns: str | None = None) -> str:
    """Run a network command (inside ``netns`` when given); its stdout."""
    full = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
    run = subprocess.run(full, capture_output=True, text=True, timeout=30)
    if check and run.returncode != 0:
        raise RuntimeError(f"{' '.join(full)} failed ({run.returncode}): {run.stderr.strip()}")
    return run.stdout


@dataclass
class Host:
    """One test host: a namespace, its address and the processes started in it."""

    name: str
    netns: str
    address: str
    outer_link: str  # its veth's end on the bridge, in the root namespace
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as run inside this host."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def popen(
        self, argv: Sequence[str], *, env: dict[str, str] | None = None,
        log: Path | None = None, cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in this host (stdout and stderr to ``log``); stopped at close."""
        out: IO[bytes] | int = log.open("ab") if log else subprocess.DEVNULL
        process = subprocess.Popen(
            self.command(argv), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT
        )
        self.processes.append(process)
        return process

    def run(self, *argv: str, check: bool = True) -> str:
        return sh(*argv, check=check, netns=self.netns)

    # --- faults ---------------------------------------------------------------------------

    def cut(self, *, link_down: bool = False) -> None:
        """No packet in or out: iptables DROP both ways (a host that vanished: the others
        hear nothing), or with ``link_down`` its link down (its own sends fail at once)."""
        if link_down:
            self.run("ip", "link", "set", INNER_LINK, "down")
            return
        self._fault("-j", "DROP")

    def throttle(self, rate: str = "1mbit", burst: str = "32kbit", latency: str = "400ms") -> None:
        """Its link at ``rate`` both ways (``tc tbf``; netem is not in every kernel): what
        it sends on its own end, what it receives on the bridge's end of its veth."""
        tbf = ("root", "tbf", "rate", rate, "burst", burst, "latency", latency)
        self.run("tc", "qdisc", "replace", "dev", INNER_LINK, *tbf)
        sh("tc", "qdisc", "replace", "dev", self.outer_link, *tbf)

    def lose(self, probability: float) -> None:
        """Drop each packet in and out with ``probability`` (iptables ``-m statistic``)."""
        self._fault("-m", "statistic", "--mode", "random",
                    "--probability", f"{probability:.4f}", "-j", "DROP")

    def dropped_packets(self) -> int:
        """Packets the fault rules dropped so far (iptables' counters)."""
        total = 0
        for chain, _ in FAULT_CHAINS.values():
            listing = self.run("iptables", "-L", chain, "-v", "-x", "-n")
            total += sum(int(line.split()[0]) for line in listing.splitlines()[2:] if line.strip())
        return total

    def heal(self) -> None:
        """Every fault undone: link up, no drop rule, no throttle."""
        self.run("ip", "link", "set", INNER_LINK, "up")
        for chain, _ in FAULT_CHAINS.values():
            self.run("iptables", "-F", chain)
        self.run("tc", "qdisc", "del", "dev", INNER_LINK, "root", check=False)
        sh("tc", "qdisc", "del", "dev", self.outer_link, "root", check=False)

    def _fault(self, *rule: str) -> None:
        """``rule`` for packets in and out of its link."""
        for chain, flag in FAULT_CHAINS.values():
            self.run("iptables", "-A", chain, flag, INNER_LINK, *rule)

    # --- life -----------------------------------------------------------------------------

    def resolve_with(self, nameserver: str) -> None:
        """This host's resolver asks ``nameserver`` only (``/etc/netns/<name>/resolv.conf``)."""
        folder = NETNS_ETC / self.netns
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "resolv.conf").write_text(
            f"nameserver {nameserver}\noptions timeout:1 attempts:2\n"
        )

    def stop_processes(self, timeout_s: float = 20.0) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class HostNetwork:
    """A bridge and its hosts, all named ``spt<pid>...``; :meth:`close` removes them all."""

    def __init__(self) -> None:
        self.tag = f"{PREFIX}{os.getpid()}"
        self.bridge = f"{self.tag}br"
        self.hosts: dict[str, Host] = {}
        self.subnet: ipaddress.IPv4Network | None = None

    @property
    def gateway_address(self) -> str:
        """The bridge's address: where the test process itself is seen from the hosts."""
        assert self.subnet is not None
        return str(self.subnet.network_address + 1)

    def open(self) -> None:
        """Clean what dead runs left, then make the bridge on a /24 no other run uses."""
        LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
        with LOCK_FILE.open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            remove_stale()
            self.subnet = _free_subnet()
            sh("ip", "link", "add", self.bridge, "type", "bridge")
            sh("ip", "addr", "add", f"{self.gateway_address}/24", "dev", self.bridge)
            sh("ip", "link", "set", self.bridge, "up")
            # A root-namespace firewall that drops forwarded frames (Docker's FORWARD
            # policy, with br_netfilter) would cut the hosts off from each other.
            sh("iptables", "-I", "FORWARD", "-i", self.bridge, "-o", self.bridge,
               "-m", "comment", "--comment", self.tag, "-j", "ACCEPT")

    def add(self, name: str) -> Host:
        """A new host on the bridge, its link up, its faults chain ready."""
        assert self.subnet is not None
        index = len(self.hosts) + 1
        netns = f"{self.tag}-{name}"
        outer, inner = f"{self.tag}v{index}", f"{self.tag}p{index}"
        address = str(self.subnet.network_address + 10 + index)
        host = Host(name, netns, address, outer)
        self.hosts[name] = host
        sh("ip", "netns", "add", netns)
        sh("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
        sh("ip", "link", "set", inner, "netns", netns)
        sh("ip", "link", "set", outer, "master", self.bridge, "up")
        host.run("ip", "link", "set", inner, "name", INNER_LINK)
        host.run("ip", "addr", "add", f"{address}/24", "dev", INNER_LINK)
        host.run("ip", "link", "set", INNER_LINK, "up")
        host.run("ip", "link", "set", "lo", "up")
        for hook, (chain, _) in FAULT_CHAINS.items():
            host.run("iptables", "-N", chain)
            host.run("iptables", "-A", hook, "-j", chain)
        return host

    def close(self) -> None:
        """Stop every process, then remove namespaces, links, rules and folders."""
        for host in self.hosts.values():
            host.stop_processes()
        _remove_run(self.tag)


def _free_subnet() -> ipaddress.IPv4Network:
    """The first /24 of 198.18.0.0/15 with no address on this machine (runs side by side)."""
    used = {
        ipaddress.ip_interface(word).network
        for word in sh("ip", "-4", "-o", "addr", "show").split()
        if re.fullmatch(r"\d+\.\d+\.\d+\.\d+/\d+", word)
    }
    for subnet in NETWORK.subnets(new_prefix=24):
        if not any(subnet.overlaps(net) for net in used):
            return subnet
    raise RuntimeError("no free /24 left in 198.18.0.0/15 for the test hosts")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> None:
    """Remove every ``spt<pid>`` namespace, bridge and rule whose pid is gone."""
    names = sh("ip", "netns", "list").split()
    names += [line.split(":")[1].strip().split("@")[0]
              for line in sh("ip", "-o", "link", "show").splitlines()]
    names += [path.name for path in NETNS_ETC.glob(f"{PREFIX}*")] if NETNS_ETC.exists() else []
    tags = {match.group(0) for name in names if (match := _OURS.match(name))}
    for tag in tags:
        if not _alive(int(tag[len(PREFIX):])):
            _remove_run(tag)


def _remove_run(tag: str) -> None:
    """Everything named ``tag``: processes in its namespaces first, then the rest."""
    namespaces = [n for n in sh("ip", "netns", "list").split() if n.startswith(f"{tag}-")]
    for netns in namespaces:
        for pid in sh("ip", "netns", "pids", netns, check=False).split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
    for netns in namespaces:
        sh("ip", "netns", "del", netns, check=False)
    for line in sh("ip", "-o", "link", "show").splitlines():
        link = line.split(":")[1].strip().split("@")[0]
        if link.startswith(tag) and not link[len(tag):][:1].isdigit():
            sh("ip", "link", "del", link, check=False)
    for rule in sh("iptables", "-S", "FORWARD").splitlines():
        if f"--comment {tag} " in rule + " ":
            sh("iptables", *rule.replace("-A", "-D", 1).split(), check=False)
    for folder in NETNS_ETC.glob(f"{tag}-*") if NETNS_ETC.exists() else []:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def host_network() -> Iterator[HostNetwork]:
    """A :class:`HostNetwork`, removed on the way out whatever happened inside."""
    require_hosts()
    net = HostNetwork()
    try:
        net.open()
        yield net
    finally:
        net.close()


@pytest.fixture
def hosts() -> Iterator[HostNetwork]:
    """An empty test network: ``hosts.add("gateway")`` makes a host."""
    with host_network() as net:
        yield net
