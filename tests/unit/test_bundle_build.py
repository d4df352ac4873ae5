"""The demo bundle's build beside running services: its progress, estimate and failure.

The meter and the gateway's watch are checked on the real progress file; a build that
fails is a real child process that exits with an error.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from gateway.pipeline.building import BuildWatch
from shared.buildprogress import BuildProgress, read_progress, write_progress
from shared.settings import CliSettings
from spine.background_build import BackgroundBuild, plan_background_build
from spine.supervisor import build_children
from training.build_meter import STAGES, BuildMeter, TrainingCounter, files_counter


def test_the_meter_writes_each_stage_with_a_growing_share_and_a_shrinking_estimate(
    tmp_path: Path,
) -> None:
    path, images = tmp_path / "progress.json", tmp_path / "images"
    images.mkdir()
    now = [1000.0]  # the build's clock: each unit of work below takes 10 s
    seen = []
    with BuildMeter(path, clock=lambda: now[0]) as meter:
        meter.enter(STAGES[0], files_counter(images, "*.dicom", 4))
        for index in range(4):
            now[0] += 10
            (images / f"{index}.dicom").touch()
            meter.write()
            seen.append(read_progress(path))
        training = TrainingCounter(20, 12, lambda: 6)
        meter.enter(STAGES[2], training, training.describe)
        for _ in range(10):
            training.epoch_started()
        now[0] += 10
        meter.write()
        seen.append(read_progress(path))
    progress = [p for p in seen if p is not None]
    assert len(progress) == 5 and all(p.state == "building" for p in progress)
    fractions = [p.fraction for p in progress]
    assert fractions == sorted(fractions) and 0 < fractions[0] < fractions[-1] < 1
    estimates = [p.eta_s or 0.0 for p in progress]
    assert estimates == sorted(estimates, reverse=True) and estimates[0] > 600
    # Estimate = time left as measured, scaled by this build's pace once it has one: the
    # phantoms went at one steady pace (10 s a file), faster than the measured one.
    whole = [p.eta_s / (1 - p.fraction) for p in progress[:4] if p.eta_s]
    assert whole[1] == pytest.approx(whole[2], rel=0.02) == pytest.approx(whole[3], rel=0.02)
    assert whole[1] < whole[0]
    last = progress[-1]
    assert last.stage == "training the models: classifier epoch 10/20, detector epoch 6/12"
    assert "%" in last.summary() and "left" in last.summary()


def test_the_training_counter_counts_a_resumed_model_as_done() -> None:
    counter = TrainingCounter(20, 12, lambda: 0, classifier_trained=True)
    assert counter() == (1.0, 2.0)
    counter = TrainingCounter(20, 12, lambda: 12)
    counter.epoch_started()
    done, total = counter()
    assert total == 2.0 and done == pytest.approx(1.0 + 0.5 / 20)


def test_the_gateway_refuses_with_the_progress_until_the_bundle_is_loaded(
    tmp_path: Path,
) -> None:
    path = tmp_path / "progress.json"
    watch = BuildWatch(path)
    starting = watch.refusal()  # no file yet: the build is starting
    assert starting is not None and starting.status_code == 503
    assert "0% (starting)" in starting.message

    write_progress(path, BuildProgress(state="building", bundle="demo", stage="training",
                                       fraction=0.42, elapsed_s=300, eta_s=400))
    watch._read_at = float("-inf")  # the next read is due (once a second)
    refused = watch.refusal()
    assert refused is not None and refused.retry_after_s == 60
    assert "42% (training), about 7 min left" in refused.message

    write_progress(path, BuildProgress(state="done", bundle="demo", stage="loaded",
                                       fraction=1.0, elapsed_s=900))
    watch._read_at = float("-inf")
    assert watch.refusal() is None and watch.current() is None
    path.unlink()  # once done, never read again
    assert watch.refusal() is None


def test_a_build_that_fails_is_reported_and_analyses_say_so(tmp_path: Path) -> None:
    target, progress = tmp_path / "demo", tmp_path / "demo.progress.json"
    build = BackgroundBuild(
        target, progress, {}, "token",
        argv=[sys.executable, "-c", "print('out of disk'); raise SystemExit(3)"],
    )
    build.start([])
    deadline = time.monotonic() + 60
    while not build.ended and time.monotonic() < deadline:
        build.poll()
        time.sleep(0.1)
    failed = read_progress(progress)
    assert failed is not None and failed.state == "failed"
    assert failed.error is not None and "code 3" in failed.error and "out of disk" in failed.error
    refused = BuildWatch(progress).refusal()
    assert refused is not None and "could not be built" in refused.message
    assert "out of disk" not in refused.message  # the reason (local paths) stays in the log


def test_spine_serve_builds_beside_the_services_only_when_it_has_to(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    settings = CliSettings(spine_cache_dir=cache, model_dir=None, spine_default_bundle="demo")
    env: dict[str, str] = {}
    build = plan_background_build(settings, None, None, env)
    assert build is not None and build.target.parent == (cache / "bundles").resolve()
    assert env["MODEL_REPOSITORY_ROOT"] == str(build.target.parent) and env["INTERNAL_TOKEN"]
    assert env["BUNDLE_BUILD_PROGRESS_FILE"] == str(build.progress_path)
    children = {c.name: c for c in build_children(
        settings, host="127.0.0.1", gateway_port=1, classifier_port=2, detector_port=3,
        model_dir=None, base_env=env)}
    assert children["classifier"].env["MODEL_LOAD_AT_START"] == "false"
    assert "MODEL_DIR" not in children["detector"].env
    assert children["detector"].ready_url.endswith("/v2/health/live")  # no bundle: not ready

    # The bundle to serve is known now: started with it, as before.
    assert plan_background_build(settings, "/models/mine", None, {}) is None
    untrained = CliSettings(spine_cache_dir=cache, model_dir=None, spine_default_bundle="untrained")
    assert plan_background_build(untrained, None, None, {}) is None
    # An operator's repository root that does not hold the bundles cache: built first.
    assert plan_background_build(settings, None, tmp_path / "elsewhere", {}) is None
    (build.target / "manifest.yaml").parent.mkdir(parents=True)
    (build.target / "manifest.yaml").write_text("name: demo\n")
    assert plan_background_build(settings, None, None, {}) is None  # already built
