"""``spine serve``: start the three services, wait until ready, supervise, stop cleanly.

Children are restarted with backoff when they die; they are also tied to this process
(Linux parent-death signal), so a supervisor killed with SIGKILL leaves no orphan
holding the ports. On SIGTERM/SIGINT the DICOM listener (with ``--dicom-port``) stops
first (it is a client of the gateway; what it has not analysed stays in its spool), then
the gateway drains (no new work reaches the models), then both model services together.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx

from shared.settings import CliSettings

READY_TIMEOUT_S = 600.0
RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
# uvicorn's graceful shutdown (spine/cli.py passes it): how long in-flight requests may
# finish after SIGTERM. The supervisor waits a little longer before it kills, so that
# uvicorn's own drain always ends first.
UVICORN_GRACE_S = 20
STOP_GRACE_S = UVICORN_GRACE_S + 5.0
STABLE_AFTER_S = 60.0  # a child up this long has its restart backoff reset
_PR_SET_PDEATHSIG = 1
LISTENER = "dicom-listener"
DEFAULT_LISTENER_STATUS_PORT = 8003


def die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the supervisor dies (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    """One service process; restarted by :func:`supervise` if it dies."""

    name: str
    argv: list[str]
    env: dict[str, str]
    ready_url: str
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = field(default=0.0)
    url: str = ""  # the service's base URL (model services: what a bundle load calls)

    def start(self) -> None:
        preexec = die_with_parent if sys.platform.startswith("linux") else None
        self.process = subprocess.Popen(self.argv, env=self.env, preexec_fn=preexec)  # noqa: S603
        self.started_at = time.monotonic()

    def terminate(self) -> None:
        """Ask to drain (uvicorn stops accepting, finishes in-flight requests, exits)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.terminate()
        self.wait_or_kill(grace_s)

    def wait_or_kill(self, grace_s: float) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            print(f"[spine] {self.name} did not drain in {grace_s:g} s; killed", flush=True)
            self.process.kill()
            self.process.wait()


def stop_order(children: list[Child]) -> list[list[Child]]:
    """The listener first (a client of the gateway), then the gateway (it stops taking
    uploads and finishes those in flight, which still need the models), then every model
    service at once."""
    listeners = [child for child in children if child.name == LISTENER]
    gateways = [child for child in children if child.name == "gateway"]
    others = [child for child in children if child.name not in ("gateway", LISTENER)]
    return [group for group in (listeners, gateways, others) if group]


def stop_all(children: list[Child], grace_s: float = STOP_GRACE_S) -> None:
    """Stop group by group, in :func:`stop_order`."""
    for group in stop_order(children):
        for child in group:
            child.terminate()
        for child in group:
            child.wait_or_kill(grace_s)


def _is_ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass(frozen=True)
class CpuPlan:
    """How ``spine serve`` shares the cores between the model services."""

    classifier_threads: int
    detector_threads: int
    detector_replicas: int


def cpu_plan(cores: int, settings: CliSettings) -> CpuPlan:
    """The operator's ``CLASSIFIER_THREADS`` / ``DETECTOR_THREADS`` / ``DETECTOR_REPLICAS``;
    unset threads are half the cores (two services side by side). ONNX Runtime threads do
    not spin, so a service given more threads than its share only uses them while the
    other one idles."""
    half = max(1, cores // 2)
    return CpuPlan(
        settings.classifier_threads or half,
        settings.detector_threads or half,
        settings.detector_replicas,
    )


def free_loopback_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def build_children(
    settings: CliSettings, *, host: str, gateway_port: int, classifier_port: int,
    detector_port: int, model_dir: Path | None, base_env: dict[str, str],
    dicom_port: int | None = None,
    extra_detector_ports: list[int] | None = None,
) -> list[Child]:
    """The classifier, the detector (and its extra replicas: ``detector-2`` ... on
    ``extra_detector_ports``, default free ports when ``DETECTOR_REPLICAS`` > 1), the
    gateway and (with ``dicom_port``) the DICOM listener, with their environments
    (``base_env`` plus what each needs). ``settings``: ``spine serve``'s own, read from
    the environment ``base_env`` copies (the CPU plan, the listener's status address).
    ``model_dir`` None: the model services start with no bundle (one is loaded later
    through their repository API) and count as started once they answer at all."""
    python = [sys.executable, "-m", "spine.cli"]
    plan = cpu_plan(os.cpu_count() or 2, settings)
    if extra_detector_ports is None:
        extra_detector_ports = [free_loopback_port(host) for _ in range(plan.detector_replicas - 1)]
    model_env = (
        {**base_env, "MODEL_DIR": str(model_dir)} if model_dir is not None
        else {**base_env, "MODEL_LOAD_AT_START": "false"}
    )
    probe = "/v2/health/ready" if model_dir is not None else "/v2/health/live"
    explicit = "TORCH_THREADS" in base_env  # an operator's TORCH_THREADS wins, as before

    def env_with(threads: int) -> dict[str, str]:
        return model_env if explicit else {**model_env, "TORCH_THREADS": str(threads)}

    detector_ports = [detector_port, *extra_detector_ports]
    gateway_env = {
        **base_env,
        "CLASSIFIER_URLS": f"http://{host}:{classifier_port}",
        "DETECTOR_URLS": ",".join(f"http://{host}:{port}" for port in detector_ports),
    }
    detectors = [
        Child(
            "detector" if index == 0 else f"detector-{index + 1}",
            python + ["detector", "--host", host, "--port", str(port)],
            env_with(plan.detector_threads), f"http://{host}:{port}{probe}",
            url=f"http://{host}:{port}",
        )
        for index, port in enumerate(detector_ports)
    ]
    children = [
        Child(
            "classifier", python + ["classifier", "--host", host, "--port", str(classifier_port)],
            env_with(plan.classifier_threads), f"http://{host}:{classifier_port}{probe}",
            url=f"http://{host}:{classifier_port}",
        ),
        *detectors,
        Child(
            "gateway", python + ["gateway", "--host", host, "--port", str(gateway_port)],
            gateway_env, f"http://{host}:{gateway_port}/livez",
        ),
    ]
    if dicom_port is not None:
        children.append(listener_child(settings, host, dicom_port, gateway_port, base_env))
    return children


def listener_child(
    settings: CliSettings, host: str, dicom_port: int, gateway_port: int, env: dict[str, str]
) -> Child:
    """``spine dicom-listener`` sending to this gateway; ready when its status server is."""
    status_port = settings.listener_status_port or DEFAULT_LISTENER_STATUS_PORT
    status_host = settings.listener_status_host
    argv = [sys.executable, "-m", "spine.cli", LISTENER, "--host", host,
            "--port", str(dicom_port), "--gateway-url", f"http://{host}:{gateway_port}",
            "--status-port", str(status_port)]
    return Child(LISTENER, argv, env, f"http://{status_host}:{status_port}/health")


def wait_until_ready(children: list[Child], timeout_s: float = READY_TIMEOUT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    pending = {child.name for child in children}
    while pending and time.monotonic() < deadline:
        for child in children:
            if child.name not in pending:
                continue
            if not child.alive():
                print(f"[spine] {child.name} exited during start-up (code "
                      f"{child.process.returncode if child.process else '?'})", flush=True)
                return False
            if _is_ready(child.ready_url):
                print(f"[spine] {child.name} ready", flush=True)
                pending.discard(child.name)
        time.sleep(0.5)
    if pending:
        print(f"[spine] not ready after {timeout_s:.0f} s: {sorted(pending)}", flush=True)
    return not pending


class Companion(Protocol):
    """Work ``spine serve`` runs beside its services (the demo bundle's build)."""

    def start(self, children: list[Child]) -> None: ...

    def poll(self) -> None: ...

    def stop(self) -> None: ...


def supervise(
    children: list[Child], stop_requested: list[bool], companion: Companion | None = None
) -> None:
    """Restart any child that dies, with backoff, until a stop is requested."""
    while not stop_requested[0]:
        if companion is not None:
            companion.poll()
        for child in children:
            if stop_requested[0]:
                break
            if not child.alive():
                delay = RESTART_BACKOFF_S[min(child.restarts, len(RESTART_BACKOFF_S) - 1)]
                code = child.process.returncode if child.process else None
                print(f"[spine] {child.name} exited (code {code}); restarting in {delay:g} s",
                      flush=True)
                time.sleep(delay)
                if stop_requested[0]:
                    break
                child.restarts += 1
                child.start()
                print(f"[spine] {child.name} restarted (restart #{child.restarts})", flush=True)
            elif time.monotonic() - child.started_at > STABLE_AFTER_S:
                child.restarts = 0  # stable again: reset the backoff
        time.sleep(0.5)


def serve(
    children: list[Child], gateway_url: str, companion: Companion | None = None,
    banner: list[str] | None = None,
) -> int:
    stop_requested = [False]

    def request_stop(signum: int, _frame: object) -> None:
        stop_requested[0] = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    for child in children:
        child.start()
    if companion is not None:
        companion.start(children)
    try:
        if not wait_until_ready(children):
            return 1
        what = "services up (the demo bundle is building: progress on the page, /health " \
            "and here)" if companion is not None else "all services ready"
        print(f"[spine] {what}. Swagger UI: {gateway_url}/docs  "
              f"(web page: {gateway_url}/)  Ctrl-C stops everything.", flush=True)
        for line in banner or ():
            print(f"[spine] {line}", flush=True)
        supervise(children, stop_requested, companion)
        return 0
    finally:
        print("[spine] stopping: draining in-flight requests ...", flush=True)
        if companion is not None:
            companion.stop()
        stop_all(children)
        print("[spine] stopped", flush=True)
