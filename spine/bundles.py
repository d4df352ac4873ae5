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
from shared.paths import cache_root
from shared.settings import DefaultBundle, Settings

UNTRAINED_SEED = 0


def untrained_bundle_dir() -> Path:
    return cache_root() / "bundles" / f"untrained-seed{UNTRAINED_SEED}"


def demo_bundle_dir() -> Path:
    from training.demo_bundle import DEMO_RECIPE, DEMO_SEED

    return cache_root() / "bundles" / f"demo-seed{DEMO_SEED}-r{DEMO_RECIPE}"


def _ensure(target: Path, build: Callable[[Path], object], what: str, echo: bool) -> Path:
    """Build ``target`` once; concurrent callers wait on a lock instead of building again."""
    if (target / "manifest.yaml").is_file():
        return target
    with file_lock(hidden_lock_path(target)):
        if not (target / "manifest.yaml").is_file():
            if echo:
                print(f"[spine] building the {what} bundle in {target} (first use only) ...",
                      flush=True)
            build(target)
    return target


def ensure_untrained_bundle(echo: bool = True) -> Path:
    from training.untrained_bundle import build_untrained_bundle

    return _ensure(
        untrained_bundle_dir(), lambda t: build_untrained_bundle(t, seed=UNTRAINED_SEED),
        "untrained", echo,
    )


def ensure_demo_bundle(echo: bool = True) -> Path:
    from training.demo_bundle import build_demo_bundle

    what = (
        "demo (trained on phantoms: about 15 minutes on 2 CPU cores; "
        "SPINE_DEFAULT_BUNDLE=untrained starts in seconds with random weights)"
    )
    return _ensure(demo_bundle_dir(), build_demo_bundle, what, echo)


def ensure_default_bundle(echo: bool = True) -> Path:
    """The bundle served without ``--model-dir`` (``SPINE_DEFAULT_BUNDLE``: demo|untrained)."""
    if Settings().spine_default_bundle is DefaultBundle.UNTRAINED:
        return ensure_untrained_bundle(echo)
    return ensure_demo_bundle(echo)
