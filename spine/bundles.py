"""Where the default model bundles live, and building them once (under a file lock).

Without ``--model-dir`` the stack serves the demo bundle: trained on synthetic phantoms
by ``training.demo_bundle`` on first use (about 10-15 minutes on 2 CPU cores, progress
shown) and cached. ``SPINE_DEFAULT_BUNDLE=untrained`` serves random weights instead
(built in seconds: for trying the API, or for machines where training is too slow).
Both are labelled as not medical everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from shared.filelock import file_lock, hidden_lock_path
from shared.paths import cache_root, prepare_ultralytics_env
from shared.settings import CliSettings, CommonSettings, DefaultBundle, ModelServerSettings

UNTRAINED_SEED = 0


def untrained_bundle_dir(settings: CommonSettings) -> Path:
    return cache_root(settings) / "bundles" / f"untrained-seed{UNTRAINED_SEED}"


def demo_bundle_dir(settings: CommonSettings) -> Path:
    from training.demo_bundle import DEMO_RECIPE, DEMO_SEED

    return cache_root(settings) / "bundles" / f"demo-seed{DEMO_SEED}-r{DEMO_RECIPE}"


def _ensure(
    target: Path, build: Callable[[Path], object], what: str, echo: bool,
    settings: CommonSettings,
) -> Path:
    """Build ``target`` once; concurrent callers wait on a lock instead of building again."""
    if (target / "manifest.yaml").is_file():
        return target
    with file_lock(hidden_lock_path(target)):
        if not (target / "manifest.yaml").is_file():
            if echo:
                print(f"[spine] building the {what} bundle in {target} (first use only) ...",
                      flush=True)
            prepare_ultralytics_env(settings)  # every bundle has a YOLO detector
            build(target)
    return target


def ensure_untrained_bundle(settings: CommonSettings, echo: bool = True) -> Path:
    from training.untrained_bundle import build_untrained_bundle

    return _ensure(
        untrained_bundle_dir(settings), lambda t: build_untrained_bundle(t, seed=UNTRAINED_SEED),
        "untrained", echo, settings,
    )


def ensure_demo_bundle(
    settings: CommonSettings, echo: bool = True, progress_file: Path | None = None
) -> Path:
    """The demo bundle, built first if needed (its progress to ``progress_file``)."""
    from training.demo_bundle import build_demo_bundle

    what = (
        "demo (trained on phantoms: about 15 minutes on 2 CPU cores; "
        "SPINE_DEFAULT_BUNDLE=untrained starts in seconds with random weights)"
    )
    return _ensure(
        demo_bundle_dir(settings), lambda t: build_demo_bundle(t, progress_file=progress_file),
        what, echo, settings,
    )


def demo_bundle_built(settings: CommonSettings) -> bool:
    return (demo_bundle_dir(settings) / "manifest.yaml").is_file()


def ensure_default_bundle(settings: CliSettings | ModelServerSettings, echo: bool = True) -> Path:
    """The bundle served without ``--model-dir`` (``SPINE_DEFAULT_BUNDLE``: demo|untrained),
    under the cache root of ``settings``."""
    if settings.spine_default_bundle is DefaultBundle.UNTRAINED:
        return ensure_untrained_bundle(settings, echo)
    return ensure_demo_bundle(settings, echo)
