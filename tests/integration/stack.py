"""Start the real services as subprocesses on free loopback ports, for tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


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
    name: str, env: dict[str, str], log_dir: Path, port: int | None = None
) -> Service:
    port = port or free_port()
    log_path = log_dir / f"{name}.log"
    handle = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "spine.cli", name, "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO,
    )
    ready_path = "/livez" if name == "gateway" else "/v2/health/ready"
    return Service(name, f"http://127.0.0.1:{port}", ready_path, process, log_path)


def wait_ready(service: Service, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise RuntimeError(f"{service.name} exited:\n{service.log_text()[-3000:]}")
        try:
            if httpx.get(service.url + service.ready_path, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{service.name} not ready in {timeout_s} s:\n{service.log_text()[-3000:]}")


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
