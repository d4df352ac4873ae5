"""Where tritonserver and its backends are, and which exported models it can load (torch-free).

The server is the nvidia-pytriton wheel's tritonserver 2.51 in its own environment,
``.venv-triton`` (scripts/setup-triton.sh: the wheel pins numpy < 2). Of Triton's
backends the wheel ships **only the Python backend** (``backends/python``; its stub for
each Python version under ``python_backend_stubs/``). Triton's C++ ONNX Runtime backend
(``onnxruntime/libtriton_onnxruntime.so`` with its ``libonnxruntime.so``) is in no
package registry this project installs from: it comes with NVIDIA's
``nvcr.io/nvidia/tritonserver:24.10-py3`` image (``/opt/tritonserver/backends``; what
KServe's Triton runtime runs) or a build of ``triton-inference-server/onnxruntime_backend``
at ``r24.10``, and ``TRITON_BACKEND_DIR`` names a folder holding it. So:

- a ``python``-flavour repository (``spine export-triton --backend python``) always
  loads: the wheel's Python backend runs the generic ``model.py``, which runs the graph
  with the environment's onnxruntime;
- an ``onnxruntime``-flavour one loads only with ``TRITON_BACKEND_DIR``; without it
  :func:`check_repository` says so and how to export the other flavour.

The server then needs ``--backend-directory``: a folder made under the cache root with
the wheel's Python backend, its stub for the environment's Python beside
``libtriton_python.so``, and a link to ``TRITON_BACKEND_DIR/onnxruntime`` when there is
one (the wheel itself stays as pip wrote it); ``LD_LIBRARY_PATH``: the wheel's
``nvidia_pytriton.libs`` and the ONNX Runtime backend's folder; and the environment's
``bin`` first on ``PATH`` with ``VIRTUAL_ENV`` set, ``PYTHONPATH`` unset: the stub runs
``model.py`` with that ``python3`` (its numpy < 2 and onnxruntime).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from shared.settings import CliSettings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VENV = PROJECT_ROOT / ".venv-triton"
SETUP_SCRIPT = "scripts/setup-triton.sh"
STUB = "triton_python_backend_stub"
ONNXRUNTIME = "onnxruntime"
PYTHON = "python"
ONNXRUNTIME_LIBRARY = Path(ONNXRUNTIME) / "libtriton_onnxruntime.so"
NO_ONNXRUNTIME_BACKEND = (
    "the nvidia-pytriton wheel ships only the Python backend, and no package index carries "
    "the ONNX Runtime one. Copy /opt/tritonserver/backends from NVIDIA's "
    "tritonserver:24.10-py3 image (or build triton-inference-server/onnxruntime_backend "
    "r24.10) and set TRITON_BACKEND_DIR to that folder"
)


class TritonNotInstalledError(RuntimeError):
    """No usable Triton environment or backend; the message says how to get one."""


@dataclass(frozen=True)
class TritonInstall:
    """The wheel's pieces inside one Triton environment, and ``TRITON_BACKEND_DIR``."""

    venv: Path
    python_version: str  # "3.11": the stub that runs model.py
    package: Path  # site-packages/pytriton
    backend_dir: Path | None = None  # TRITON_BACKEND_DIR

    @property
    def server(self) -> Path:
        return self.package / "tritonserver" / "bin" / "tritonserver"

    @property
    def wheel_backends(self) -> Path:
        return self.package / "tritonserver" / "backends"

    @property
    def stub(self) -> Path:
        return self.package / "tritonserver" / "python_backend_stubs" / self.python_version / STUB

    @property
    def onnxruntime_backend(self) -> Path | None:
        """``TRITON_BACKEND_DIR/onnxruntime`` when it holds the backend's library."""
        for folder in (self.backend_dir, self.wheel_backends):
            if folder is not None and (folder / ONNXRUNTIME_LIBRARY).is_file():
                return folder / ONNXRUNTIME
        return None

    @property
    def backends(self) -> tuple[str, ...]:
        """What this install can load: the Python backend, and ONNX Runtime's if found."""
        return (PYTHON, ONNXRUNTIME) if self.onnxruntime_backend else (PYTHON,)

    @property
    def library_path(self) -> list[Path]:
        candidates = [
            self.package.parent / "nvidia_pytriton.libs",
            self.package / "tritonserver" / "external_libs",
            self.package / "tritonserver" / "lib",
        ]
        if self.onnxruntime_backend is not None:
            candidates.append(self.onnxruntime_backend)
        return [path for path in candidates if path.is_dir()]


def triton_venv(settings: CliSettings) -> Path:
    """``TRITON_VENV``, else ``.venv-triton`` at the project root."""
    configured = settings.triton_venv
    return Path(configured).expanduser() if configured else DEFAULT_VENV


def find_install(venv: Path, backend_dir: Path | None = None) -> TritonInstall:
    """The wheel inside ``venv`` (with ``TRITON_BACKEND_DIR``), or
    :class:`TritonNotInstalledError` saying what is missing and how to get it."""
    hint = f"run {SETUP_SCRIPT} (creates {DEFAULT_VENV.name} with nvidia-pytriton)"
    packages = sorted(venv.glob("lib/python3.*/site-packages/pytriton"))
    if not packages:
        raise TritonNotInstalledError(f"no Triton environment at {venv}: {hint}")
    package = packages[-1]
    install = TritonInstall(venv, package.parents[1].name.removeprefix("python"), package,
                            backend_dir)
    for needed in (install.server, install.stub, install.wheel_backends / PYTHON):
        if not needed.exists():
            raise TritonNotInstalledError(f"{needed} is missing from {venv}: {hint}")
    return install


def default_backend(settings: CliSettings) -> tuple[str, str]:
    """The flavour ``spine export-triton`` writes when not told: ``onnxruntime`` where
    ``spine triton`` here could load it, else ``python``; and why, for the output."""
    try:
        install = find_install(triton_venv(settings), settings.triton_backend_dir)
    except TritonNotInstalledError as exc:
        return PYTHON, f"no Triton here to run the onnxruntime flavour ({exc})"
    if install.onnxruntime_backend is None:
        return PYTHON, f"Triton's ONNX Runtime backend is not here: {NO_ONNXRUNTIME_BACKEND}"
    return ONNXRUNTIME, f"Triton's ONNX Runtime backend is at {install.onnxruntime_backend}"


def model_backend(config_text: str) -> str:
    """The backend a ``config.pbtxt`` asks for (``platform: "onnxruntime_onnx"`` is
    ``onnxruntime``), or ``''`` when it names none."""
    if re.search(r'^platform:\s*"onnxruntime_onnx"', config_text, re.M):
        return ONNXRUNTIME
    found = re.search(r'^backend:\s*"([^"]+)"', config_text, re.M)
    return found.group(1) if found else ""


def repository_backends(repo: Path) -> dict[str, str]:
    """Model folder name -> the backend its configuration asks for."""
    return {config.parent.name: model_backend(config.read_text())
            for config in sorted(repo.glob("*/config.pbtxt"))}


def check_repository(install: TritonInstall, repo: Path) -> dict[str, str]:
    """Every model's backend, when this install can load them all; else
    :class:`TritonNotInstalledError` naming the models and what to do."""
    wanted = repository_backends(repo)
    missing = {name: backend for name, backend in wanted.items()
               if backend not in install.backends}
    if not missing:
        return wanted
    listed = ", ".join(f"{name} ({backend or 'no backend named'})"
                       for name, backend in missing.items())
    advice = (f"Triton's ONNX Runtime backend is not in {install.backend_dir or 'the wheel'}: "
              f"{NO_ONNXRUNTIME_BACKEND}; or export the python flavour, which this "
              f"tritonserver runs: spine export-triton --backend python --out {repo}")
    raise TritonNotInstalledError(f"{repo} holds models this tritonserver cannot load: "
                                  f"{listed}. {advice}")


def prepare_backends(install: TritonInstall, work_dir: Path) -> Path:
    """A backends folder: the wheel's Python backend with the stub beside
    ``libtriton_python.so`` (copied once per wheel), and ``onnxruntime`` linked to
    ``TRITON_BACKEND_DIR``'s when there is one."""
    onnxruntime = install.onnxruntime_backend
    target = work_dir / f"backends-py{install.python_version}"
    marker = target / ".complete"
    source = f"{install.wheel_backends.resolve()}\n{onnxruntime or ''}"
    if marker.is_file() and marker.read_text() == source:
        return target
    staging = work_dir / f".backends-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(install.wheel_backends / PYTHON, staging / PYTHON,
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(install.stub, staging / PYTHON / STUB)
    if onnxruntime is not None:
        (staging / ONNXRUNTIME).symlink_to(onnxruntime.resolve(), target_is_directory=True)
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


def describe_backend(install: TritonInstall, backend: str) -> str:
    """One line for ``spine triton``'s output: what runs a model of ``backend``."""
    if backend == ONNXRUNTIME:
        return f"Triton's C++ ONNX Runtime backend ({install.onnxruntime_backend})"
    found = sorted(install.package.parent.glob("onnxruntime-*.dist-info"))
    version = found[-1].name.removeprefix("onnxruntime-").removesuffix(".dist-info") \
        if found else "?"
    return (f"Triton's Python backend: the generic model.py runs model.onnx with "
            f"onnxruntime {version} from {install.venv}")
