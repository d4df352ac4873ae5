#!/usr/bin/env bash
# Create .venv-triton: tritonserver 2.51 from the nvidia-pytriton 0.7.0 wheel, with
# onnxruntime and numpy<2 for the python flavour's generic model.py (it runs the exported
# graph; the onnxruntime flavour needs Triton's ONNX Runtime backend, which the wheel does
# not ship: TRITON_BACKEND_DIR, README "Triton"). A separate environment: the wheel pins
# numpy<2, the project needs numpy 2. Idempotent: a marker keyed by
# requirements/triton.txt skips a done install.
# Installs from the package index; set TRITON_WHEEL_DIR to a folder holding the wheel to use
# a local copy instead.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${TRITON_VENV:-.venv-triton}
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
req=requirements/triton.txt
marker="$VENV/.installed-$(sha256sum "$req" | cut -c1-16)"
if [ -f "$marker" ]; then
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup-triton] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
links=()
wheels=${TRITON_WHEEL_DIR:-}
if [ -n "$wheels" ] && compgen -G "$wheels/nvidia_pytriton-*.whl" >/dev/null; then
  links=(--find-links "$wheels")
fi
echo "[setup-triton] installing $req into $VENV (tritonserver wheel, ~55 MB the first time)"
"$VENV/bin/pip" install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/pip" install --quiet "${links[@]}" -r "$req" 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" - <<'PY' || { echo "[setup-triton] install failed" >&2; exit 1; }
import pathlib, numpy, onnxruntime, pytriton
server = pathlib.Path(pytriton.__file__).parent / "tritonserver" / "bin" / "tritonserver"
assert server.is_file(), server
assert int(numpy.__version__.split(".")[0]) < 2, numpy.__version__
PY
rm -f "$VENV"/.installed-*
touch "$marker"
echo "[setup-triton] ready: $VENV"
