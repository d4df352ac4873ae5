"""One cache root for everything the stack builds, and Ultralytics' environment.

Built bundles (``bundles/``), ONNX exports (``onnx/``), the gateway's sample DICOMs
(``samples/``) and Ultralytics' config folder (``ultralytics/``) all live under
``SPINE_CACHE_DIR`` (default ``~/.cache/spine``), so an operator mounts or wipes one folder.
Torch-free: the gateway may import it.
"""

from __future__ import annotations

import os
from pathlib import Path

from shared.settings import Settings

DEFAULT_CACHE_ROOT = Path("~/.cache/spine")


def cache_root(settings: Settings | None = None) -> Path:
    """``SPINE_CACHE_DIR`` (from ``settings``, else read from the environment now)."""
    configured = (settings or Settings()).spine_cache_dir
    return Path(configured or DEFAULT_CACHE_ROOT).expanduser()


def prepare_ultralytics_env(settings: Settings | None = None) -> None:
    """Call before Ultralytics is first imported: it must never reach the network
    (``YOLO_OFFLINE=1``) and writes its settings file to ``YOLO_CONFIG_DIR``, by default
    ``<cache root>/ultralytics`` (created here, so it is writable). Idempotent."""
    settings = settings or Settings()
    os.environ["YOLO_OFFLINE"] = "1"
    config_dir = settings.yolo_config_dir or cache_root(settings) / "ultralytics"
    config_dir = Path(config_dir).expanduser()
    config_dir.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
