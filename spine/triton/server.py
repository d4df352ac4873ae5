"""Start the nvidia-pytriton wheel's tritonserver on a model repository (torch-free).

The wheel is installed in its own environment, ``.venv-triton`` (scripts/setup-triton.sh),
because it pins numpy < 2, and tritonserver 2.51's Python backend answers every request
with "output tensor shape does not match size of output" under numpy 2. The server then
needs, besides the repository:

- ``LD_LIBRARY_PATH``: the wheel's ``nvidia_pytriton.libs`` (and ``tritonserver/
  external_libs`` where a wheel has it);
- ``--backend-directory``: a copy of the wheel's ``tritonserver/backends`` with the
  Python backend stub for the environment's Python (``python_backend_stubs/3.X/
  triton_python_backend_stub``) placed beside ``python/libtriton_python.so``; the copy is
  made under the cache root, so the installed wheel stays as pip wrote it;
- the environment's ``bin`` first on ``PATH`` and ``VIRTUAL_ENV`` set: the stub runs the
  models with that ``python3`` (its numpy and onnxruntime), not ``PYTHONPATH``.

:class:`TritonServer` is what ``spine triton`` and the tests use.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import httpx

from shared.paths import cache_root
from shared.settings import CliSettings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VENV = PROJECT_ROOT / ".venv-triton"
SETUP_SCRIPT = "scripts/setup-triton.sh"
STUB = "triton_python_backend_stub"


class TritonNotInstalledError(RuntimeError):
    """No usable Triton environment; the message names the setup script."""


class TritonStartError(RuntimeError):
    """tritonserver exited or did not get ready; the message carries its log's tail."""


@dataclass(frozen=True)
class TritonInstall:
    """Where the wheel's pieces are inside one Triton environment."""

    venv: Path
    python_version: str  # "3.11"
    package: Path  # site-packages/pytriton

    @property
    def server(self) -> Path:
        return self.package / "tritonserver" / "bin" / "tritonserver"

    @property
    def backends(self) -> Path:
        return self.package / "tritonserver" / "backends"

    @property
    def stub(self) -> Path:
        return self.package / "tritonserver" / "python_backend_stubs" / self.python_version / STUB

    @property
    def library_path(self) -> list[Path]:
        candidates = [
            self.package.parent / "nvidia_pytriton.libs",
            self.package / "tritonserver" / "external_libs",
            self.package / "tritonserver" / "lib",
        ]
        return [path for path in candidates if path.is_dir()]


def triton_venv(settings: CliSettings) -> Path:
    """``TRITON_VENV``, else ``.venv-triton`` at the project root."""
    configured = settings.triton_venv
    return Path(configured).expanduser() if configured else DEFAULT_VENV


def find_install(venv: Path) -> TritonInstall:
    """The wheel inside ``venv``, or :class:`TritonNotInstalledError` saying how to get it."""
    hint = f"run {SETUP_SCRIPT} (creates {DEFAULT_VENV.name} with nvidia-pytriton and numpy<2)"
    packages = sorted(venv.glob("lib/python3.*/site-packages/pytriton"))
    if not packages:
        raise TritonNotInstalledError(f"no Triton environment at {venv}: {hint}")
    package = packages[-1]
    install = TritonInstall(venv, package.parents[1].name.removeprefix("python"), package)
    for needed in (install.server, install.stub, install.backends / "python"):
        if not needed.exists():
            raise TritonNotInstalledError(f"{needed} is missing from {venv}: {hint}")
    return install


def prepare_backends(install: TritonInstall, work_dir: Path) -> Path:
    """A backend directory with the stub beside ``python/libtriton_python.so`` (copied
    once per wheel into ``work_dir``; the wheel itself is left as installed)."""
    target = work_dir / f"backends-py{install.python_version}"
    marker = target / ".complete"
    source = str(install.backends.resolve())
    if marker.is_file() and marker.read_text() == source:
        return target
    staging = work_dir / f".backends-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(install.backends, staging, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(install.stub, staging / "python" / STUB)
    (staging / ".complete").write_text(source)
    shutil.rmtree(target, ignore_errors=True)
    with contextlib.suppress(OSError):  # another process won the race: use its copy
        staging.rename(target)
    shutil.rmtree(staging, ignore_errors=True)
    return target


def server_env(install: TritonInstall, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment tritonserver and its Python stub need (see the module docstring)."""
    env = dict(os.environ if base is None else base)
    for key in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"):
        env.pop(key, None)  # the stub must see the Triton environment only (numpy < 2)
    libraries = [str(path) for path in install.library_path]
    if env.get("LD_LIBRARY_PATH"):
        libraries.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libraries)
    env["PATH"] = os.pathsep.join([str(install.venv / "bin"), env.get("PATH", "/usr/bin:/bin")])
    env["VIRTUAL_ENV"] = str(install.venv)
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
        self.install = find_install(venv or triton_venv(settings))
        self.work_dir = cache_root(settings) / "triton"
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
        """SIGKILL the server and its Python stubs (a crash, for the tests)."""
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
