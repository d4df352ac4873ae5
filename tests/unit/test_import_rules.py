"""The import rules hold by rule, not by care: import-linter's contracts, and a live check.

The contracts live in pyproject.toml (``[tool.importlinter]``); `make test` runs
``lint-imports`` too. The second test is what the contracts promise, observed: a
fresh interpreter that builds the gateway app and decodes DICOMs has loaded no
module of the ML stack.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ML_STACK = ("torch", "torchvision", "timm", "ultralytics", "onnxruntime")


def test_import_contracts_hold() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    assert lint_imports.is_file(), f"{lint_imports} missing: install the dev extra"
    result = subprocess.run(
        [str(lint_imports), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


_PROBE = f"""
import json, sys
import numpy as np
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless
import dicom_listener.service
import gateway.app
from shared.settings import GatewaySettings
from shared.dicom import decode_dicom
from training.dicom_writer import file_bytes, xray_dataset

gateway.app.create_app(GatewaySettings())
pixels = (np.arange(64 * 48, dtype=np.uint16).reshape(64, 48) * 7) % 4096
for syntax in (ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless):
    decode_dicom(file_bytes(xray_dataset(pixels, sop_instance_uid="1.2.3", transfer_syntax=syntax)))
stack = {ML_STACK!r}
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in stack)))
"""


def test_gateway_loads_no_ml_stack() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == [], f"the gateway or the DICOM listener loaded {loaded}"


def test_torch_free_contract_names_whole_packages() -> None:
    """The no-ML-stack contract covers shared/, the gateway and the listener as packages, so
    a new module joins it by where it lives (the torch runtime is model_server/, outside)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    ml_free = next(
        c for c in config["contracts"] if "torch" in c.get("forbidden_modules", [])
    )["source_modules"]
    assert {"shared", "gateway", "dicom_listener"} <= set(ml_free)
    assert not (ROOT / "shared" / "serving").exists(), "the torch runtime lives in model_server/"
