#!/usr/bin/env bash
# Create .venv and install the project with every service and the dev tools.
# torch 2.14.1 / torchvision 0.29.1 are pinned in pyproject.toml; pip takes them from the
# machine's local wheel cache where one exists (no multi-GB download).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
marker="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"

# A fresh install writes about 7 GiB into $VENV (torch, CUDA libraries) plus pip's build
# files in $TMPDIR. A disk that fills up half-way leaves a broken venv and an OSError deep
# in pip's output, so say it first, in one line. SPINE_SETUP_FREE_GIB=0 skips the check.
need_free_space() {  # need_free_space DIR GIB
  local avail_kib
  avail_kib=$(df -Pk "$1" 2>/dev/null | awk 'NR==2 {print $4}')
  [ -n "$avail_kib" ] || return 0
  if [ "$avail_kib" -lt $(( $2 * 1024 * 1024 )) ]; then
    echo "[setup] only $(( avail_kib / 1024 / 1024 )) GiB free for $1; installing needs about" \
      "$2 GiB there. Free some space, or set SPINE_SETUP_FREE_GIB=0 to skip this check." >&2
    exit 1
  fi
}
if [ ! -f "$marker" ] && [ "${SPINE_SETUP_FREE_GIB:-8}" != 0 ]; then
  need_free_space "$(dirname "$VENV")" "${SPINE_SETUP_FREE_GIB:-8}"
  need_free_space "${TMPDIR:-/tmp}" 2
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$marker" ]; then
  echo "[setup] installing the project and its dependencies (a few minutes the first time)"
  "$VENV/bin/pip" install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/pip" install --quiet -e ".[all,dev]" 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/python" -c "import torch, timm, ultralytics, pydicom, fastapi, opentelemetry.sdk" \
    || { echo "[setup] install failed" >&2; exit 1; }
  rm -f "$VENV"/.installed-*
  touch "$marker"
fi
echo "[setup] ready: $VENV"
