"""One cache root for everything the stack builds, and Ultralytics' environment.

Built bundles (``bundles/``), ONNX exports (``onnx/``), the gateway's sample DICOMs
(``samples/``) and Ultralytics' config folder (``ultralytics/``) all live under
``SPINE_CACHE_DIR`` (default ``~/.cache/spine``), so an operator mounts or wipes one folder.
Torch-free: the gateway may import it. Both read the settings the process's entry point
passed down, never the environment.
"""

from __future__ import annotations

import os
from pathlib import Path

from shared.settings import CommonSettings

DEFAULT_CACHE_ROOT = Path("~/.cache/spine")


def cache_root(settings: CommonSettings) -> Path:
    """``SPINE_CACHE_DIR`` of the process's ``settings``, else ``~/.cache/spine``."""
    return Path(settings.spine_cache_dir or DEFAULT_CACHE_ROOT).expanduser()


def prepare_ultralytics_env(settings: CommonSettings) -> None:
    """Ultralytics' own environment, set once by an entry point that may load it (the
    detector service, the bundle builders, training, export): it must never reach the
    network (``YOLO_OFFLINE=1``) and writes its settings file to ``YOLO_CONFIG_DIR``, by
    default ``<cache root>/ultralytics`` (created here, so it is writable). Ultralytics
    reads both when first imported; child processes inherit them. Idempotent."""
    keep_ultralytics_offline()
    config_dir = settings.yolo_config_dir or cache_root(settings) / "ultralytics"
    config_dir = Path(config_dir).expanduser()
    config_dir.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)


def keep_ultralytics_offline() -> None:
    """``YOLO_OFFLINE=1``, whatever the caller prepared: every function that imports
    Ultralytics calls this first, so no path through our code lets it go online."""
    os.environ["YOLO_OFFLINE"] = "1"
