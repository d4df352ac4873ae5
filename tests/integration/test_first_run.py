"""``spine serve`` on a fresh install: everything answers at once while the bundle builds.

The stack is set up as ``spine serve`` sets it up when the demo bundle is not built yet:
model services started with no bundle (``MODEL_LOAD_AT_START=false``) and their repository
API on the bundles folder, a gateway reading ``BUNDLE_BUILD_PROGRESS_FILE``, and
:class:`spine.background_build.BackgroundBuild` running the build, then loading its
bundle into every model service through the repository API. Only the build's command is
a stand-in (the real one trains for minutes): it reports progress with the real
:class:`training.build_meter.BuildMeter`, waits for the test, then puts the tiny bundle in
place. While it builds, an upload is a 503 with Retry-After and the progress (never a
result), and ``/health`` and ``/readyz`` show the progress; once loaded, uploads are
answered by the built bundle, without a restart.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from shared.buildprogress import read_progress
from spine.background_build import BackgroundBuild
from spine.supervisor import Child
from tests.factories import make_dicom, radiograph_pixels
from tests.integration.stack import REPO, Service, base_env, start_service, wait_ready

pytestmark = pytest.mark.timeout(400)

TOKEN = "first-run-internal-token"
# The build's stand-in: the real progress meter, a first stage half done, then (when the
# test says so) the bundle in place, as the real build renames its folder into place.
STAND_IN = """
import shutil, sys, time
from pathlib import Path
from training.build_meter import BuildMeter, files_counter
progress, source, target, gate = map(Path, sys.argv[1:5])
with BuildMeter(progress) as meter:
    work = target.with_name(target.name + ".partial") / "images"
    work.mkdir(parents=True)
    meter.enter("generating phantoms", files_counter(work, "*.dicom", 4))
    for index in range(2):
        (work / f"{index}.dicom").touch()
    meter.write()
    while not gate.exists():
        time.sleep(0.1)
    shutil.copytree(source, target)
"""


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[Service]]]:
    work = tmp_path_factory.mktemp("first-run")
    root = work / "bundles"
    root.mkdir()
    env = base_env(work, MODEL_LOAD_AT_START="false", MODEL_REPOSITORY_ROOT=str(root),
                   INTERNAL_TOKEN=TOKEN, BUNDLE_BUILD_PROGRESS_FILE=str(root / "demo.progress.json"),
                   READINESS_INTERVAL_S="0.5")
    env.pop("MODEL_DIR", None)
    services = []
    try:
        for name in ("classifier", "detector"):
            (work / name).mkdir()
            services.append(start_service(name, env, work / name))
        (work / "gateway").mkdir()
        services.append(start_service("gateway", {
            **env, "CLASSIFIER_URLS": services[0].url, "DETECTOR_URLS": services[1].url,
        }, work / "gateway"))
        for service in services[:2]:  # no bundle yet: they answer, but are not ready
            wait_ready(replace(service, ready_path="/v2/health/live"))
        wait_ready(services[2])
        yield root, services
    finally:
        for service in services:
            service.stop()


def _upload(gateway: str) -> httpx.Response:
    data = make_dicom(radiograph_pixels(480, 360, seed=21))
    return httpx.post(f"{gateway}/upload", files={"file": ("x.dcm", data, "application/dicom")},
                      params={"annotate": "false"}, timeout=120)


def test_the_stack_answers_while_the_bundle_builds_and_serves_it_once_built(
    fresh: tuple[Path, list[Service]], tiny_bundle: Path
) -> None:
    root, (classifier, detector, gateway) = fresh
    target, gate = root / "demo", root / "gate"
    progress_file = root / "demo.progress.json"
    build = BackgroundBuild(
        target, progress_file, base_env(root.parent), TOKEN,
        argv=[sys.executable, "-c", STAND_IN, str(progress_file), str(tiny_bundle),
              str(target), str(gate)],
    )
    build.env["PYTHONPATH"] = str(REPO)
    models = [Child(name, [], {}, "", url=service.url)
              for name, service in (("classifier", classifier), ("detector", detector))]
    build.start(models)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            build.poll()
            progress = read_progress(progress_file)
            if progress is not None and progress.fraction > 0:
                break
            time.sleep(0.2)
        assert progress is not None and progress.state == "building", progress
        time.sleep(1.1)  # the gateway reads the file at most once a second

        refused = _upload(gateway.url)
        assert refused.status_code == 503, refused.text
        assert 5 <= int(refused.headers["Retry-After"]) <= 60
        message = refused.json()["message"]
        assert "the demo model bundle is being built" in message, message
        assert "% (generating phantoms)" in message and "left" in message, message
        health = httpx.get(f"{gateway.url}/health", timeout=30).json()
        assert health["bundle_build"]["state"] == "building", health
        build_state = health["bundle_build"]
        # an estimate is given (the stand-in build's pace makes its value anything >= 0)
        assert 0 < build_state["fraction"] < 0.2 and build_state["eta_s"] >= 0, build_state
        ready = httpx.get(f"{gateway.url}/readyz", timeout=30)
        assert ready.status_code == 503 and "being built" in ready.json()["message"]
        page = httpx.get(f"{gateway.url}/", timeout=30)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]

        gate.touch()  # the build finishes; the bundle is loaded into both services
        deadline = time.monotonic() + 240
        while not build.ended and time.monotonic() < deadline:
            build.poll()
            time.sleep(0.2)
        assert build.ended and read_progress(progress_file).state == "done", (
            build.log_path.read_text(errors="replace")[-2000:])
        assert all(child.env["MODEL_DIR"] == str(target) for child in models)  # restarts

        time.sleep(1.1)
        answered = _upload(gateway.url)
        assert answered.status_code == 200, answered.text
        parts = answered.json()["model_bundle"]["parts"]
        assert {part["name"] for part in parts.values()} == {"tiny-test-bundle"}
        assert httpx.get(f"{gateway.url}/health", timeout=30).json()["bundle_build"] is None
        assert httpx.get(f"{gateway.url}/readyz", timeout=30).status_code == 200
    finally:
        gate.touch()
        build.stop()
        shutil.rmtree(target, ignore_errors=True)
