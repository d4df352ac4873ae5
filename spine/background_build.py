"""``spine serve`` on a fresh install: the services at once, the demo bundle built beside them.

Without ``--model-dir`` the stack serves the demo bundle, which takes minutes to train on
first use. Rather than keep everything down meanwhile, ``spine serve`` starts the model
services with no bundle (``MODEL_LOAD_AT_START=false``, their repository API on the
bundles folder), starts the gateway (it reads the build's progress from
``BUNDLE_BUILD_PROGRESS_FILE``: ``/health``, ``/readyz``, the page, and a 503 with
Retry-After for every analysis), and builds the bundle in a child process
(``spine demo-bundle --progress-file``). When the build is done, it loads the bundle into
every model service through the repository API (:mod:`spine.swap`, the mechanism of a
bundle swap) and restarts of a model service load it at start from then on.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from shared.buildprogress import BuildProgress, read_progress, write_progress
from shared.settings import CliSettings, DefaultBundle
from spine.bundles import demo_bundle_built, demo_bundle_dir
from spine.supervisor import Child, die_with_parent
from spine.swap import MODELS, Replica, SwapError, load
from training.build_meter import STAGE_SECONDS

REPORT_EVERY_S = 30.0
LOAD_ATTEMPTS = 5  # a model service restarting just then gets a few chances
STOP_GRACE_S = 10.0


class BackgroundBuild:
    """The demo bundle's build in a child process, then its load into the services."""

    def __init__(
        self, target: Path, progress_path: Path, env: dict[str, str], token: str,
        argv: list[str] | None = None,
    ) -> None:
        """``argv``: the build's command (``spine demo-bundle`` with its progress file)."""
        self.target = target
        self.progress_path = progress_path
        self.log_path = target.with_name(target.name + ".build.log")
        self.env = env
        self.token = token
        self.argv = argv or [sys.executable, "-m", "spine.cli", "demo-bundle",
                             "--progress-file", str(progress_path)]
        self.models: list[Child] = []
        self.process: subprocess.Popen[bytes] | None = None
        self.started = time.monotonic()
        self._loader: threading.Thread | None = None
        self.ended = False  # loaded, or failed: nothing more to do
        self._reported = (0.0, "")

    def start(self, children: list[Child]) -> None:
        """Start the build; ``children`` holds the model services it loads the bundle into."""
        self.models = [c for c in children if c.name in MODELS or c.name.startswith("detector")]
        self._write("building", "starting", 0.0, eta_s=sum(STAGE_SECONDS.values()))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            # Its own process group: a stop reaches the training processes it starts too.
            self.process = subprocess.Popen(  # noqa: S603
                self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
            )
        print(f"[spine] building the demo bundle beside the running services (about 15 "
              f"minutes on 2 CPU cores; log {self.log_path}); uploads answer 503 with the "
              "progress until it is loaded", flush=True)

    def poll(self) -> None:
        """Report the progress now and then; once the build ends, load it (a thread)."""
        if self.process is None or self._loader is not None or self.ended:
            return
        code = self.process.poll()
        progress = read_progress(self.progress_path)
        if code is None:
            self._report(progress)
            return
        if code == 0 and (self.target / "manifest.yaml").is_file():
            self._loader = threading.Thread(target=self._load_all, name="bundle-load",
                                            daemon=True)
            self._loader.start()
        else:
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-1:]
            self._fail(f"the build exited with code {code} ({' '.join(tail)[:300]}); "
                       f"log {self.log_path}")

    def stop(self) -> None:
        """Stop the build (it resumes from where it was on the next ``spine serve``)."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def _report(self, progress: BuildProgress | None) -> None:
        if progress is None:
            return
        last_at, last_stage = self._reported
        stage = progress.stage.split(":")[0]
        if time.monotonic() - last_at >= REPORT_EVERY_S or stage != last_stage:
            self._reported = (time.monotonic(), stage)
            print(f"[spine] demo bundle: {progress.summary()}", flush=True)

    def _load_all(self) -> None:
        self._write("loading", "loading the bundle into the model services", 1.0)
        print(f"[spine] demo bundle built in {time.monotonic() - self.started:.0f} s; "
              "loading it into the model services ...", flush=True)
        try:
            with httpx.Client() as http:
                for child in self.models:
                    model = MODELS.get(child.name, MODELS["detector"])
                    self._load_one(http, Replica(model, child.url))
        except SwapError as exc:
            self._fail(f"the built bundle did not load: {exc}")
            return
        for child in self.models:  # a restart loads it at start from now on
            child.env = {**child.env, "MODEL_DIR": str(self.target), "MODEL_LOAD_AT_START": "true"}
        self.ended = True
        self._write("done", "loaded", 1.0)
        print(f"[spine] demo bundle loaded after {time.monotonic() - self.started:.0f} s: "
              "uploads are answered now", flush=True)

    def _load_one(self, http: httpx.Client, replica: Replica) -> None:
        for attempt in range(1, LOAD_ATTEMPTS + 1):
            try:
                load(http, replica, str(self.target), self.token)
                return
            except SwapError:
                if attempt == LOAD_ATTEMPTS:
                    raise
                time.sleep(2.0 * attempt)  # restarting: its supervisor brings it back

    def _fail(self, error: str) -> None:
        self.ended = True
        self._write("failed", "failed", 0.0, error)
        print(f"[spine] the demo bundle is not served: {error}", flush=True)

    def _write(
        self, state: str, stage: str, fraction: float, error: str | None = None,
        eta_s: float | None = None,
    ) -> None:
        write_progress(self.progress_path, BuildProgress(
            state=state, bundle="demo", stage=stage, fraction=fraction,  # type: ignore[arg-type]
            elapsed_s=round(time.monotonic() - self.started, 1), eta_s=eta_s, error=error,
        ))


def plan_background_build(
    settings: CliSettings, chosen: str | None, repository_root: Path | None,
    env: dict[str, str],
) -> BackgroundBuild | None:
    """The build to run beside the services, with ``env`` (the children's) set up for it;
    None when the bundle to serve is known now (``--model-dir``, ``MODEL_DIR``, the
    untrained bundle, a demo bundle already built) or the operator's
    ``MODEL_REPOSITORY_ROOT`` does not hold the demo bundle's folder (then it is built
    first, as before)."""
    if (chosen or settings.model_dir or demo_bundle_built(settings)
            or settings.spine_default_bundle is DefaultBundle.UNTRAINED):
        return None
    target = demo_bundle_dir(settings).expanduser().resolve()
    root = (repository_root or target.parent).expanduser().resolve()
    if not target.is_relative_to(root):
        print(f"[spine] MODEL_REPOSITORY_ROOT {root} does not hold the demo bundle's folder "
              f"{target}: building it before the services start", flush=True)
        return None
    token = env.get("INTERNAL_TOKEN") or secrets.token_urlsafe(32)
    if "INTERNAL_TOKEN" not in env:
        print("[spine] generated an INTERNAL_TOKEN for this run: the model services' "
              "repository API, which loads the demo bundle once built, needs one", flush=True)
    progress = target.with_name(target.name + ".progress.json")
    env.update({"INTERNAL_TOKEN": token, "MODEL_REPOSITORY_ROOT": str(root),
                "BUNDLE_BUILD_PROGRESS_FILE": str(progress)})
    return BackgroundBuild(target, progress, dict(env), token)
