"""Where the default model bundle lives, and building it once (under a file lock)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

UNTRAINED_SEED = 0


def cache_dir() -> Path:
    """``$SPINE_CACHE_DIR`` or ``~/.cache/spine``: built bundles and the YOLO config dir."""
    return Path(os.environ.get("SPINE_CACHE_DIR", Path.home() / ".cache" / "spine"))


def untrained_bundle_dir() -> Path:
    return cache_dir() / "bundles" / f"untrained-seed{UNTRAINED_SEED}"


def ensure_default_bundle(echo: bool = True) -> Path:
    """The bundle served without ``--model-dir``; built on first use.

    Concurrent callers (three services started at once) wait on a lock instead of
    building it three times.
    """
    target = untrained_bundle_dir()
    if (target / "manifest.yaml").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "manifest.yaml").is_file():
            if echo:
                print(f"building the untrained default bundle in {target} ...", flush=True)
            from training.untrained_bundle import build_untrained_bundle

            build_untrained_bundle(target, seed=UNTRAINED_SEED)
    return target
