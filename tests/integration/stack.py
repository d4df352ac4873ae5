"""Start the real services as subprocesses on free loopback ports, for tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process(process: subprocess.Popen[bytes] | None, grace_s: float = 20.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``; nothing if it never started or has exited."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_answering(
    process: subprocess.Popen[bytes], url: str, name: str, log_text: Callable[[], str],
    timeout_s: float,
) -> None:
    """Until ``url`` answers 200; RuntimeError with the log's tail if ``process`` exits
    first or ``timeout_s`` runs out (stopping it is the caller's choice)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited:\n{log_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{name} not ready in {timeout_s} s:\n{log_text()[-3000:]}")


def spawn_answering(
    argv: list[str], log_path: Path, cwd: Path, url: str, name: str, timeout_s: float
) -> subprocess.Popen[bytes]:
    """Start a peer (output appended to ``log_path``) and wait until ``url`` answers 200;
    a peer that exits or does not answer in time is stopped and a RuntimeError says why."""
    def log_text() -> str:
        return log_path.read_text(errors="replace")

    with log_path.open("ab") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
    try:
        wait_answering(process, url, name, log_text, timeout_s)
    except RuntimeError:
        stop_process(process)
        raise
    return process


@dataclass
class Service:
    name: str
    url: str
    ready_path: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process)


@dataclass
class Stack:
    services: dict[str, Service] = field(default_factory=dict)

    @property
    def gateway(self) -> str:
        return self.services["gateway"].url

    @property
    def classifier(self) -> str:
        return self.services["classifier"].url

    @property
    def detector(self) -> str:
        return self.services["detector"].url

    def logs(self) -> str:
        return "\n".join(service.log_text() for service in self.services.values())

    def stop(self) -> None:
        for service in reversed(list(self.services.values())):
            service.stop()


def start_service(
    name: str, env: dict[str, str], log_dir: Path, port: int | None = None, *,
    bind: str = "127.0.0.1", wrap: Sequence[str] = (), label: str | None = None,
) -> Service:
    """``spine <name>`` on ``bind:port``; ``wrap`` prefixes the command (e.g. ``ip netns
    exec <host>``: :mod:`tests.peers.hosts`), ``label`` names its log (default ``name``)."""
    port = port or free_port()
    log_path = log_dir / f"{label or name}.log"
    handle = log_path.open("wb")
    process = subprocess.Popen(
        [*wrap, sys.executable, "-m", "spine.cli", name, "--host", bind, "--port", str(port)],
        env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO,
    )
    ready_path = "/livez" if name == "gateway" else "/v2/health/ready"
    return Service(label or name, f"http://{bind}:{port}", ready_path, process, log_path)


def wait_ready(service: Service, timeout_s: float = 240.0) -> None:
    wait_answering(
        service.process, service.url + service.ready_path, service.name, service.log_text,
        timeout_s,
    )


def base_env(tmp: Path, **overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "SPINE_CACHE_DIR": str(tmp / "cache"),
            "YOLO_OFFLINE": "1",
            "YOLO_CONFIG_DIR": str(tmp / "yolo"),
            "MODEL_DEVICE": "cpu",
            "TORCH_THREADS": "1",
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(overrides)
    return env


def start_stack(model_dir: Path, tmp: Path, **overrides: str) -> Stack:
    """Classifier and detector on ``model_dir``, and a gateway pointed at both."""
    tmp.mkdir(parents=True, exist_ok=True)
    env = base_env(tmp, MODEL_DIR=str(model_dir), **overrides)
    stack = Stack()
    try:
        for name in ("classifier", "detector"):
            stack.services[name] = start_service(name, env, tmp)
        gateway_env = {
            **env,
            "CLASSIFIER_URLS": stack.services["classifier"].url,
            "DETECTOR_URLS": stack.services["detector"].url,
        }
        stack.services["gateway"] = start_service("gateway", gateway_env, tmp)
        for service in stack.services.values():
            wait_ready(service)
    except Exception:
        stack.stop()
        raise
    return stack
