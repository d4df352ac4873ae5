#!/usr/bin/env bash
# Create .venv and install the project with every service and the dev tools.
# torch 2.14.1 / torchvision 0.29.1 are pinned in pyproject.toml; pip takes them from the
# machine's local wheel cache where one exists (no multi-GB download).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
marker="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$marker" ]; then
  echo "[setup] installing the project and its dependencies (a few minutes the first time)"
  "$VENV/bin/pip" install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/pip" install --quiet -e ".[all,dev]" 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/python" -c "import torch, timm, ultralytics, pydicom, fastapi" \
    || { echo "[setup] install failed" >&2; exit 1; }
  rm -f "$VENV"/.installed-*
  touch "$marker"
fi
echo "[setup] ready: $VENV"
