"""Which exported models a Triton install can load, and what `spine triton` says about it.

An install is laid out as the nvidia-pytriton wheel lays it out (the server, the Python
backend and its stubs), with or without a ``TRITON_BACKEND_DIR`` holding Triton's ONNX
Runtime backend; the real wheel is started in tests/integration/test_triton.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from spine.triton.install import (
    TritonNotInstalledError,
    check_repository,
    default_backend,
    find_install,
    prepare_backends,
    server_env,
)

PYTHON_CONFIG = 'name: "spine-classifier"\nbackend: "python"\nmax_batch_size: 8\n'
ORT_CONFIG = 'name: "spine-detector"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'


def _wheel(venv: Path) -> Path:
    """The wheel's files that matter here, empty."""
    package = venv / "lib/python3.11/site-packages/pytriton/tritonserver"
    for path in ("bin/tritonserver", "backends/python/libtriton_python.so",
                 "python_backend_stubs/3.11/triton_python_backend_stub"):
        (package / path).parent.mkdir(parents=True, exist_ok=True)
        (package / path).write_text("")
    return venv


def _backend_dir(root: Path) -> Path:
    library = root / "backends/onnxruntime/libtriton_onnxruntime.so"
    library.parent.mkdir(parents=True)
    library.write_text("")
    return root / "backends"


def _repo(root: Path, **configs: str) -> Path:
    for name, text in configs.items():
        (root / name).mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(text)
    return root


def test_the_wheel_alone_loads_the_python_flavour_only(tmp_path: Path) -> None:
    install = find_install(_wheel(tmp_path / "venv"))
    assert install.backends == ("python",)
    python = _repo(tmp_path / "py", **{"spine-classifier": PYTHON_CONFIG})
    assert check_repository(install, python) == {"spine-classifier": "python"}
    mixed = _repo(tmp_path / "ort", **{"spine-classifier": PYTHON_CONFIG,
                                       "spine-detector": ORT_CONFIG})
    with pytest.raises(TritonNotInstalledError) as refused:
        check_repository(install, mixed)
    message = str(refused.value)
    assert "spine-detector (onnxruntime)" in message and "spine-classifier" not in message
    assert "TRITON_BACKEND_DIR" in message and "--backend python" in message


def test_triton_backend_dir_adds_the_onnxruntime_flavour(tmp_path: Path) -> None:
    backends = _backend_dir(tmp_path)
    install = find_install(_wheel(tmp_path / "venv"), backends)
    assert install.backends == ("python", "onnxruntime")
    repo = _repo(tmp_path / "ort", **{"spine-detector": ORT_CONFIG})
    assert check_repository(install, repo) == {"spine-detector": "onnxruntime"}
    folder = prepare_backends(install, tmp_path / "work")
    assert (folder / "python" / "triton_python_backend_stub").is_file()
    assert (folder / "python" / "libtriton_python.so").is_file()
    assert (folder / "onnxruntime").resolve() == (backends / "onnxruntime").resolve()
    assert str(backends / "onnxruntime") in server_env(install, {})["LD_LIBRARY_PATH"]


def test_the_stub_runs_model_py_with_the_triton_environment(tmp_path: Path) -> None:
    install = find_install(_wheel(tmp_path / "venv"))
    env = server_env(install, {"PYTHONPATH": "/project", "PATH": "/usr/bin"})
    assert "PYTHONPATH" not in env  # numpy 2 of the project must not shadow numpy < 2
    assert env["PATH"].split(":")[0] == str(tmp_path / "venv" / "bin")
    assert env["VIRTUAL_ENV"] == str(tmp_path / "venv")
    assert not (prepare_backends(install, tmp_path / "work") / "onnxruntime").exists()


def test_a_wheel_without_the_python_stub_names_the_setup_script(tmp_path: Path) -> None:
    venv = _wheel(tmp_path / "venv")
    next(venv.rglob("triton_python_backend_stub")).unlink()
    with pytest.raises(TritonNotInstalledError, match="scripts/setup-triton.sh"):
        find_install(venv)


def test_the_default_flavour_is_what_spine_triton_here_can_load(tmp_path: Path) -> None:
    from shared.settings import CliSettings

    venv = _wheel(tmp_path / "venv")
    backend, why = default_backend(CliSettings(triton_venv=venv))
    assert backend == "python" and "TRITON_BACKEND_DIR" in why
    backends = _backend_dir(tmp_path)
    settings = CliSettings(triton_venv=venv, triton_backend_dir=backends)
    assert default_backend(settings)[0] == "onnxruntime"
    assert default_backend(CliSettings(triton_venv=tmp_path / "none"))[0] == "python"


def test_spine_triton_refuses_a_repository_it_cannot_load_before_starting(
    tmp_path: Path, monkeypatch
) -> None:
    from shared.settings import CliSettings
    from spine import commands_triton

    monkeypatch.setenv("TRITON_VENV", str(_wheel(tmp_path / "venv")))
    monkeypatch.delenv("TRITON_BACKEND_DIR", raising=False)
    monkeypatch.setenv("SPINE_CACHE_DIR", str(tmp_path / "cache"))
    repo = _repo(tmp_path / "repo", **{"spine-detector": ORT_CONFIG})
    parser = argparse.ArgumentParser()
    commands_triton.register(parser.add_subparsers())
    args = parser.parse_args(["triton", "--repo", str(repo)])
    with pytest.raises(SystemExit) as exited:
        args.func(args, CliSettings())
    assert "spine-detector (onnxruntime)" in str(exited.value)
    assert "spine export-triton --backend python" in str(exited.value)
    assert not (tmp_path / "cache" / "triton").exists()  # nothing was prepared or started
