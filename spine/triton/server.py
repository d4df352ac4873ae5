"""Start tritonserver on an exported model repository (torch-free).

The server, its backends and its environment are found by :mod:`spine.triton.install`:
the nvidia-pytriton wheel's tritonserver 2.51 (``.venv-triton``), its Python backend
(python-flavour models: a generic ``model.py`` running the graph with ONNX Runtime) and
Triton's ONNX Runtime backend when ``TRITON_BACKEND_DIR`` holds it (onnxruntime-flavour
models). A repository with a model this install cannot load is refused before the
server starts, saying which and what to do. :class:`TritonServer` is what ``spine
triton``, the bench and the tests use.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import httpx

from shared.paths import cache_root
from shared.settings import CliSettings
from spine.triton.install import (
    TritonInstall,
    check_repository,
    find_install,
    prepare_backends,
    server_env,
    triton_venv,
)


class TritonStartError(RuntimeError):
    """tritonserver exited or did not get ready; the message carries its log's tail."""


@dataclass(frozen=True)
class Ports:
    http: int = 8100
    grpc: int = 8101
    metrics: int = 8102


def server_command(
    install: TritonInstall, repo: Path, backends: Path, ports: Ports, host: str = "127.0.0.1"
) -> list[str]:
    """tritonserver's command line: explicit ports and address, strict readiness."""
    return [
        str(install.server),
        f"--model-repository={repo}",
        f"--backend-directory={backends}",
        f"--http-address={host}",
        f"--http-port={ports.http}",
        f"--grpc-address={host}",
        f"--grpc-port={ports.grpc}",
        f"--metrics-address={host}",
        f"--metrics-port={ports.metrics}",
        "--strict-readiness=true",
        "--exit-on-error=true",
        "--exit-timeout-secs=20",
        "--log-verbose=0",
    ]


class TritonServer:
    """One tritonserver process: ``start()``, ``wait_ready()``, ``stop()`` (or ``with``)."""

    def __init__(
        self,
        repo: Path,
        *,
        settings: CliSettings,
        ports: Ports | None = None,
        host: str = "127.0.0.1",
        venv: Path | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.repo = repo.resolve()
        self.ports = ports or Ports()
        self.host = host
        self.install: TritonInstall = find_install(
            venv or triton_venv(settings), settings.triton_backend_dir)
        self.work_dir = cache_root(settings) / "triton"
        self.models = check_repository(self.install, self.repo)  # name -> backend
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at: float | None = None
        self.ready_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.ports.http}"

    def start(self) -> None:
        if not any(self.repo.glob("*/config.pbtxt")):
            raise TritonStartError(f"{self.repo} holds no model (run spine export-triton first)")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        backends = prepare_backends(self.install, self.work_dir)
        command = server_command(self.install, self.repo, backends, self.ports, self.host)
        output = None if self.log_path is None else self.log_path.open("ab")
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(
            command, env=server_env(self.install), stdout=output,
            stderr=subprocess.STDOUT if output is not None else None,
            start_new_session=True,  # Ctrl-C reaches us, and we stop it in order
        )
        if output is not None:
            output.close()

    def log_tail(self, chars: int = 4000) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return "(log on the terminal)"
        return self.log_path.read_text(errors="replace")[-chars:]

    def is_ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/v2/health/ready", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout_s: float = 180.0) -> float:
        """Seconds from start to ``/v2/health/ready``; TritonStartError if it exits first."""
        assert self.process is not None and self.started_at is not None, "start() first"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise TritonStartError(
                    f"tritonserver exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            if self.is_ready():
                self.ready_seconds = time.monotonic() - self.started_at
                return self.ready_seconds
            time.sleep(0.25)
        self.stop()
        raise TritonStartError(f"tritonserver not ready in {timeout_s:.0f} s:\n{self.log_tail()}")

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (tritonserver unloads its models and exits), SIGKILL after ``timeout_s``."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL the server (a crash, for the tests)."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
