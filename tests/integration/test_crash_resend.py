"""Crashes and resends leave one SR and one presentation state per image (issue 22, 3-4).

A real Orthanc sends phantom studies to the real listener, which analyses them through a
real gateway of its own (the session stack's model services behind it) and sends the
results back to Orthanc by C-STORE. Meanwhile the listener and the gateway are SIGKILLed
at random moments, each restarted at once on the same ports and folders (as a supervisor
or an orchestrator would); Orthanc retries a study whose send failed and, while the kills
go on, sends every study again (a PACS resending after errors). Once all is settled each
image has exactly one SR and one presentation state in Orthanc, the spool holds nothing,
nothing was given up on; then Orthanc sends everything once more: every image is
analysed again and Orthanc still holds one SR and one presentation state of each (the
result objects' UIDs are derived from the image: the second copy is the same instance).
Also: a second listener on the same spool folder is refused, naming the setting.

The counts are printed (``-s``); docs/INTEGRATION.md quotes them.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.integration.listener import Listener, metric, start_listener
from tests.integration.stack import REPO, base_env, free_port
from tests.integration.test_dicom_listener import GSPS_CLASS, SR_CLASS, _phantom, study_of
from tests.peers.orthanc import Orthanc

pytestmark = pytest.mark.timeout(600)

MODALITY = "CRASHLSN"
STUDIES, IMAGES_PER_STUDY = 4, 2
KILLS = ("listener", "gateway", "listener", "gateway")  # shuffled: each killed twice
SETTLE_TIMEOUT_S = 150.0
RESEND_ROUNDS, SEND_PAUSE_S = 3, 1.5  # Orthanc's sends while the kills go on


@dataclass
class Gateway:
    """A gateway in its own process group, so a SIGKILL takes its decode workers with it
    (as an orchestrator killing its container does)."""

    root: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 120.0) -> None:
        log = (self.root / "gateway.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "spine.cli", "gateway", "--host", "127.0.0.1",
             "--port", str(self.port)],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited:\n{self.log_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"gateway not ready in {timeout_s} s:\n{self.log_text()[-3000:]}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_text(self) -> str:
        return (self.root / "gateway.log").read_text(errors="replace")


@pytest.fixture
def gateway(stack, tiny_bundle: Path, tmp_path: Path) -> Iterator[Gateway]:
    """A gateway of this test's own (it is killed) before the session's model services."""
    root = tmp_path / "gateway"
    root.mkdir()
    env = base_env(
        root, MODEL_DIR=str(tiny_bundle), CLASSIFIER_URLS=stack.classifier,
        DETECTOR_URLS=stack.detector, MAX_CONTENT_LENGTH=str(8 * 1024 * 1024),
    )
    running = Gateway(root, env)
    running.start()
    yield running
    running.stop()


@dataclass
class Sender:
    """Orthanc sending studies to the listener as a PACS does: a failed send is retried."""

    orthanc: Orthanc
    studies: list[list[str]]  # Orthanc ids of each study's instances
    sends: int = 0
    failed_sends: int = 0

    def send(self, ids: list[str], stop: threading.Event | None = None) -> None:
        while stop is None or not stop.is_set():
            self.sends += 1
            try:
                answer = self.orthanc.store_to_modality(MODALITY, ids)
                if answer.get("FailedInstancesCount", 0) == 0:
                    return
            except httpx.HTTPError:
                pass
            self.failed_sends += 1
            time.sleep(1.0)

    def send_all(self) -> None:
        for ids in self.studies:
            self.send(ids)


def _kill_and_restart(
    listener: Listener, gateway: Gateway, sender: Sender, rng: random.Random
) -> int:
    """SIGKILL the targets of :data:`KILLS` at random moments while Orthanc keeps sending;
    each is restarted at once. The number of kills."""
    done = threading.Event()

    def resend_until_done() -> None:  # the PACS resends everything while errors go on
        for _round in range(RESEND_ROUNDS):
            for ids in sender.studies:
                sender.send(ids, done)
                if done.wait(SEND_PAUSE_S):
                    return

    pacs = threading.Thread(target=resend_until_done, daemon=True)
    pacs.start()
    kills = 0
    try:
        for target in rng.sample(KILLS, len(KILLS)):
            time.sleep(rng.uniform(0.5, 4.0))
            if target == "listener":
                assert listener.process is not None
                listener.process.kill()  # SIGKILL
                listener.process.wait()
                listener.start()
            else:
                gateway.kill()
                gateway.start()
            kills += 1
    finally:
        done.set()
        pacs.join(120)
    return kills


def _references(orthanc: Orthanc, study_uid: str) -> dict[str, list[str]]:
    """SOP Class -> the analysed images its result objects reference, one per object."""
    found = orthanc.rest("POST", "/tools/find", json={
        "Level": "Instance", "Query": {"StudyInstanceUID": study_uid}, "Expand": False,
    }).json()
    refs: dict[str, list[str]] = {SR_CLASS: [], GSPS_CLASS: []}
    for instance_id in found:
        tags = orthanc.tags(instance_id)
        if tags["SOPClassUID"] == SR_CLASS:
            evidence = tags["CurrentRequestedProcedureEvidenceSequence"][0]
            image = evidence["ReferencedSeriesSequence"][0]["ReferencedSOPSequence"][0]
            refs[SR_CLASS].append(image["ReferencedSOPInstanceUID"])
        elif tags["SOPClassUID"] == GSPS_CLASS:
            image = tags["ReferencedSeriesSequence"][0]["ReferencedImageSequence"][0]
            refs[GSPS_CLASS].append(image["ReferencedSOPInstanceUID"])
    return refs


def _settled(listener: Listener, orthanc: Orthanc, studies: dict[str, list[str]]) -> dict:
    """Once the listener is idle and every image has its results: the references."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while time.monotonic() < deadline:
        health = listener.health()
        spool = health["spool"]
        if spool["instances"] == 0 and spool["results"] == 0 and health["in_flight"] == 0:
            refs = {study: _references(orthanc, study) for study in studies}
            if all(
                set(refs[study][kind]) >= set(sops)
                for study, sops in studies.items() for kind in (SR_CLASS, GSPS_CLASS)
            ):
                return refs
        time.sleep(0.5)
    raise AssertionError(f"not settled after {SETTLE_TIMEOUT_S} s: {listener.health()}\n"
                         f"{listener.log_text()[-3000:]}")


def _assert_one_each(refs: dict, studies: dict[str, list[str]]) -> int:
    """Exactly one SR and one presentation state per image; the number of SRs."""
    for study, sops in studies.items():
        for kind in (SR_CLASS, GSPS_CLASS):
            assert sorted(refs[study][kind]) == sorted(sops), (kind, refs[study][kind], sops)
    return sum(len(refs[study][SR_CLASS]) for study in studies)


def test_kills_and_resends_leave_one_sr_and_one_pr_per_image(
    gateway: Gateway, orthanc: Orthanc, tmp_path: Path
) -> None:
    listener = start_listener(
        tmp_path / "listener", gateway.url, RESULTS_STORE_AE=orthanc.store_ae,
        LISTENER_FORWARD_TIMEOUT_S="30",
    )
    orthanc.add_modality(MODALITY, listener.ae_title, "127.0.0.1", listener.port)
    try:
        studies: dict[str, list[str]] = {}
        ids: list[list[str]] = []
        for s in range(STUDIES):
            study, files, sops = study_of(
                *(_phantom(20 + s * IMAGES_PER_STUDY + i) for i in range(IMAGES_PER_STUDY))
            )
            studies[study] = sops
            ids.append([orthanc.upload(data) for data in files])
        sender = Sender(orthanc, ids)
        kills = _kill_and_restart(listener, gateway, sender, random.Random(22))
        sender.send_all()  # every study acknowledged at least once
        refs = _settled(listener, orthanc, studies)
        print(f"\n[crash] {STUDIES * IMAGES_PER_STUDY} instances, {kills} SIGKILLs, "
              f"{sender.sends} sends ({sender.failed_sends} failed): SRs in Orthanc "
              f"{sum(len(r[SR_CLASS]) for r in refs.values())}, PRs "
              f"{sum(len(r[GSPS_CLASS]) for r in refs.values())}")
        srs = _assert_one_each(refs, studies)
        health = listener.health()["spool"]
        assert (health["failed"], health["failed_results"]) == (0, 0)
        assert not list((tmp_path / "listener" / "spool" / "tmp").iterdir())  # none half-written

        analysed = metric(listener.metrics(), 'spine_listener_images_total{outcome="analysed"}')
        sender.send_all()  # the PACS sends everything again, nothing failing
        images = STUDIES * IMAGES_PER_STUDY
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while (metric(listener.metrics(), 'spine_listener_images_total{outcome="analysed"}')
               < analysed + images and time.monotonic() < deadline):
            time.sleep(0.5)
        assert metric(
            listener.metrics(), 'spine_listener_images_total{outcome="analysed"}'
        ) == analysed + images  # analysed again, results sent again
        after = _assert_one_each(_settled(listener, orthanc, studies), studies)
        print(f"\n[crash] {images} instances in {STUDIES} studies, {kills} SIGKILLs "
              f"(listener and gateway), {sender.sends} sends by Orthanc "
              f"({sender.failed_sends} failed); SRs in Orthanc: {srs} after the kills, "
              f"{after} after one more resend of everything")
    finally:
        listener.stop()


def test_a_second_listener_on_the_same_spool_is_refused(tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    first = start_listener(tmp_path / "first", nowhere)
    try:
        spool = first.env["LISTENER_SPOOL_DIR"]
        with pytest.raises(RuntimeError, match="listener exited") as refused:
            start_listener(tmp_path / "second", nowhere, LISTENER_SPOOL_DIR=spool)
        assert f"LISTENER_SPOOL_DIR {spool} is in use by another running listener" in str(
            refused.value
        )
        assert first.health()["status"] == "ok"
    finally:
        assert first.stop() == 0
