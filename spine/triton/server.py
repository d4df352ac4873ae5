"""Start tritonserver on an exported model repository (torch-free).

The server is the nvidia-pytriton wheel's tritonserver 2.51 (``.venv-triton``:
scripts/setup-triton.sh). The exported models are ``onnxruntime_onnx``: they need
Triton's ONNX Runtime backend, ``<backends>/onnxruntime/libtriton_onnxruntime.so`` with
its ``libonnxruntime.so``. **The wheel ships only the Python backend**, and no package
registry this project installs from carries the ONNX Runtime one: it comes with NVIDIA's
``nvcr.io/nvidia/tritonserver:24.10-py3`` image (``/opt/tritonserver/backends``; what
KServe's Triton runtime runs) or a build of ``triton-inference-server/onnxruntime_backend``
at ``r24.10``. ``TRITON_BACKEND_DIR`` names a folder that has it; without one, starting
is a :class:`TritonNotInstalledError` that says so. The server then needs:

- ``LD_LIBRARY_PATH``: the wheel's ``nvidia_pytriton.libs`` (and ``tritonserver/
  external_libs`` where a wheel has it), then the ONNX Runtime backend's folder;
- ``--backend-directory``: that backends folder.

:class:`TritonServer` is what ``spine triton`` and the tests use.
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

from shared.settings import CliSettings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VENV = PROJECT_ROOT / ".venv-triton"
SETUP_SCRIPT = "scripts/setup-triton.sh"
ONNXRUNTIME_BACKEND = Path("onnxruntime") / "libtriton_onnxruntime.so"


class TritonNotInstalledError(RuntimeError):
    """No usable Triton environment; the message names the setup script."""


class TritonStartError(RuntimeError):
    """tritonserver exited or did not get ready; the message carries its log's tail."""


@dataclass(frozen=True)
class TritonInstall:
    """Where the wheel's pieces are inside one Triton environment, and the backends."""

    venv: Path
    package: Path  # site-packages/pytriton
    backend_dir: Path | None = None  # TRITON_BACKEND_DIR; None: the wheel's

    @property
    def server(self) -> Path:
        return self.package / "tritonserver" / "bin" / "tritonserver"

    @property
    def backends(self) -> Path:
        return self.backend_dir or self.package / "tritonserver" / "backends"

    @property
    def library_path(self) -> list[Path]:
        candidates = [
            self.package.parent / "nvidia_pytriton.libs",
            self.package / "tritonserver" / "external_libs",
            self.package / "tritonserver" / "lib",
        ]
        candidates.append(self.backends / ONNXRUNTIME_BACKEND.parent)
        return [path for path in candidates if path.is_dir()]


def triton_venv(settings: CliSettings) -> Path:
    """``TRITON_VENV``, else ``.venv-triton`` at the project root."""
    configured = settings.triton_venv
    return Path(configured).expanduser() if configured else DEFAULT_VENV


def find_install(venv: Path, backend_dir: Path | None = None) -> TritonInstall:
    """The wheel inside ``venv`` and a backends folder with Triton's ONNX Runtime backend,
    or :class:`TritonNotInstalledError` saying what is missing and where to get it."""
    hint = f"run {SETUP_SCRIPT} (creates {DEFAULT_VENV.name} with nvidia-pytriton)"
    packages = sorted(venv.glob("lib/python3.*/site-packages/pytriton"))
    if not packages:
        raise TritonNotInstalledError(f"no Triton environment at {venv}: {hint}")
    install = TritonInstall(venv, packages[-1], backend_dir)
    if not install.server.exists():
        raise TritonNotInstalledError(f"{install.server} is missing from {venv}: {hint}")
    if not (install.backends / ONNXRUNTIME_BACKEND).is_file():
        raise TritonNotInstalledError(
            f"Triton's ONNX Runtime backend ({ONNXRUNTIME_BACKEND}) is not in "
            f"{install.backends}: the nvidia-pytriton wheel ships only the Python backend, and "
            "no package index carries the ONNX Runtime one. Copy /opt/tritonserver/backends "
            "from NVIDIA's tritonserver:24.10-py3 image (or build "
            "triton-inference-server/onnxruntime_backend r24.10) and set TRITON_BACKEND_DIR "
            "to that folder"
        )
    return install


def server_env(install: TritonInstall, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment tritonserver needs: its libraries on ``LD_LIBRARY_PATH``."""
    env = dict(os.environ if base is None else base)
    libraries = [str(path) for path in install.library_path]
    if env.get("LD_LIBRARY_PATH"):
        libraries.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libraries)
    return env


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
        self.install = find_install(venv or triton_venv(settings), settings.triton_backend_dir)
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
        command = server_command(
            self.install, self.repo, self.install.backends, self.ports, self.host
        )
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
