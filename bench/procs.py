"""The processes under test: our three services (as ``spine serve`` starts them) and the
original-style baseline, on free loopback ports, with their resident memory.

Memory is read from ``/proc/<pid>/status`` (Linux): ``VmRSS`` sampled during each load
run (its maximum is the "RSS under load" column) and ``VmHWM`` (the kernel's own peak
since start, which includes model loading and, for ours, the ONNX export). CPU time is
read from ``/proc/<pid>/stat`` for each process and everything below it (the gateway's
decode workers are its children), so a run can say which process spent what per image.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _status_kb(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def rss_mb(pid: int) -> float | None:
    kb = _status_kb(pid, "VmRSS")
    return None if kb is None else kb / 1024


def peak_rss_mb(pid: int) -> float | None:
    kb = _status_kb(pid, "VmHWM")
    return None if kb is None else kb / 1024


def _proc_stats() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds: own utime + stime and that of waited-for children)."""
    ticks = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                text = handle.read()
        except OSError:
            continue  # gone between listdir and open
        fields = text[text.rindex(")") + 2:].split()  # the name in () may hold spaces
        parent, utime, stime, cutime, cstime = (int(fields[i]) for i in (1, 11, 12, 13, 14))
        stats[int(entry)] = (parent, (utime + stime + cutime + cstime) / ticks)
    return stats


def tree_cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each named process and all its live descendants (plus the
    children it has already reaped). Differences of two readings are what a run spent."""
    stats = _proc_stats()
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in stats.items():
        children.setdefault(parent, []).append(pid)
    totals = {}
    for name, root in pids.items():
        seen, stack, total = set(), [root], 0.0
        while stack:
            pid = stack.pop()
            if pid in seen or pid not in stats:
                continue
            seen.add(pid)
            total += stats[pid][1]
            stack.extend(children.get(pid, []))
        totals[name] = total
    return totals


@dataclass
class Proc:
    """One started service."""

    name: str
    url: str
    ready_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, grace_s: float = 25.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _spawn(name: str, argv: list[str], env: dict[str, str], url: str, ready: str,
           log_dir: Path) -> Proc:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as handle:
        process = subprocess.Popen(argv, env=env, stdout=handle, stderr=subprocess.STDOUT)  # noqa: S603
    return Proc(name, url, url + ready, process, log_path)


def wait_ready(procs: list[Proc], timeout_s: float = 900.0) -> None:
    """Block until every service answers its readiness URL; raise with its log if one dies."""
    deadline = time.monotonic() + timeout_s
    pending = list(procs)
    while pending:
        for proc in list(pending):
            if proc.process.poll() is not None:
                raise RuntimeError(f"{proc.name} exited during start-up:\n{proc.log_tail()}")
            try:
                if httpx.get(proc.ready_url, timeout=2.0).status_code == 200:
                    pending.remove(proc)
            except httpx.HTTPError:
                pass
        if pending and time.monotonic() > deadline:
            names = [proc.name for proc in pending]
            raise RuntimeError(f"not ready in {timeout_s:.0f} s: {names}\n{pending[0].log_tail()}")
        time.sleep(0.5)


def start_ours(model_dir: Path, log_dir: Path, env_overrides: dict[str, str]) -> list[Proc]:
    """Gateway, classifier and detector with ``spine serve``'s environment (thread split
    included), on free ports, logs to ``log_dir``."""
    from shared.settings import CliSettings, child_settings
    from spine.supervisor import build_children

    host = "127.0.0.1"
    ports = {"gateway": free_port(), "classifier": free_port(), "detector": free_port()}
    base_env = {**os.environ, "LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1", **env_overrides}
    children = build_children(
        child_settings(CliSettings, base_env),  # a variant's DETECTOR_* included
        host=host, gateway_port=ports["gateway"], classifier_port=ports["classifier"],
        detector_port=ports["detector"], model_dir=model_dir, base_env=base_env,
    )
    procs = []
    for child in children:
        parts = urlsplit(child.ready_url)
        url = f"{parts.scheme}://{parts.netloc}"
        procs.append(_spawn(child.name, child.argv, child.env, url, parts.path, log_dir))
    return procs


def start_baseline(model_dir: Path, log_dir: Path, device: str = "cpu",
                   mode: str = "faithful") -> Proc:
    port = free_port()
    argv = [sys.executable, "-m", "bench.baseline", "--model-dir", str(model_dir),
            "--port", str(port), "--device", device, "--mode", mode]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return _spawn("baseline", argv, env, f"http://127.0.0.1:{port}", "/health", log_dir)


@dataclass
class RssSampler:
    """Largest ``VmRSS`` of each process while running (sampled every ``period_s``)."""

    pids: dict[str, int]
    period_s: float = 0.2
    peaks: dict[str, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, pid in self.pids.items():
                value = rss_mb(pid)
                if value is not None:
                    self.peaks[name] = max(self.peaks.get(name, 0.0), value)
            self._stop.wait(self.period_s)

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
