"""Issue 4's bar, checked from a clean checkout: the demo bundle really works.

Builds the demo bundle from scratch (not the cached one), serves it with the real stack
on loopback ports and evaluates it through the gateway on phantoms with a seed it never
saw and that no recipe or serving choice was made on (docs/DEMO_BUNDLE.md, "Seeds").
About 15-20 minutes on 2 CPU cores; deselect with ``-m 'not slow'``.

The bars are written here, not imported from the code under test, and never moved to
fit a result: if the bundle misses them, the recipe is improved on validation.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

AUROC_BAR = 0.95
MAP50_BAR = 0.5
# Fresh test seed. 20261128 trains and validates the bundle; 1, 2 and 7 were test seeds
# that recipe choices were made on, so they are not test sets any more.
TEST_SEED = 2027
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "training"
COUNT = 200


def test_demo_bundle_meets_its_quality_bar(tmp_path: Path) -> None:
    from bench.demo_quality import main
    from training.demo_bundle import DEMO_SEED

    assert TEST_SEED not in (DEMO_SEED, 1, 2, 7)
    out = tmp_path / "demo-quality"
    code = main(["--rebuild", "--out", str(out), "--count", str(COUNT), "--seed", str(TEST_SEED)])
    summary = json.loads((out / "demo_quality.json").read_text())
    # Kept after the run (tmp_path is not): the measured numbers, for the docs and a reviewer.
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(out / "demo_quality.json", ARTIFACTS / f"demo_quality_seed{TEST_SEED}.json")
    auroc, (auroc_low, auroc_high) = summary["auroc"], summary["auroc_ci95"]
    map50, (map50_low, map50_high) = summary["map50"], summary["map50_ci95"]
    print(
        f"\n[demo-quality] seed {TEST_SEED}, {summary['test_images']} phantoms: "
        f"AUROC {auroc:.3f} (95% CI {auroc_low:.3f}-{auroc_high:.3f}), "
        f"mAP50 {map50:.3f} (95% CI {map50_low:.3f}-{map50_high:.3f})"
    )
    detector = summary["recipe"]["detector"]  # conf / NMS IoU were chosen on validation
    print(f"[demo-quality] chosen on validation: {detector['chosen']}")
    assert detector["split"] == "validation", detector
    assert summary["build_seconds"] is not None  # built here, not taken from a cache
    assert summary["test_images"] == COUNT
    assert auroc_low <= auroc <= auroc_high and map50_low <= map50 <= map50_high, summary
    assert auroc >= AUROC_BAR, summary
    assert map50 >= MAP50_BAR, summary
    assert all(summary["checks"].values()), summary["checks"]  # references agree to 0.005
    assert code == 0
    report = json.loads((out / "evaluation" / "report.json").read_text())
    assert report["demo"] is True  # every answer was labelled as demo output
