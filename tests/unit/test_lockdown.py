"""The lockdown rules without a server: binds, secrets, study dates, cancelled images."""

from __future__ import annotations

import asyncio
import stat
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from gateway.pipeline.phi import public_study_date
from model_server.batching import DynamicBatcher
from model_server.errors import ModelFailedError
from model_server.infer import infer_images
from model_server.repository import Job
from shared.lockdown import exposure_problems, is_loopback, weak_secret
from shared.settings import (
    CliSettings,
    GatewaySettings,
    ModelServerSettings,
    PhiMode,
    StudyDateMode,
)
from spine.secrets import SECRET_FILE, install_secret, lock_children_env

GOOD = "x" * 43


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True), ("::1", True),
    ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("gateway.example", False),
])
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_weak_secrets_are_named() -> None:
    assert weak_secret("change-me") and weak_secret("replace-with-a-long-random-token")
    assert weak_secret("CHANGE-ME-please-0123456789")
    assert "shorter" in (weak_secret("abc123") or "")
    assert weak_secret(GOOD) is None


def test_exposure_problems_beyond_loopback_only() -> None:
    bare = GatewaySettings(internal_token=None, pseudonym_secret="change-me")
    bare_model = ModelServerSettings(internal_token=None)
    assert exposure_problems("classifier", "127.0.0.1", bare_model) == []
    assert exposure_problems("gateway", "127.0.0.1", bare) == []
    assert "INTERNAL_TOKEN is not set" in exposure_problems("detector", "0.0.0.0", bare_model)[0]
    assert "PSEUDONYM_SECRET" in exposure_problems("gateway", "0.0.0.0", bare)[0]
    good = GatewaySettings(internal_token=GOOD, pseudonym_secret=GOOD)
    assert exposure_problems("classifier", "0.0.0.0", ModelServerSettings(internal_token=GOOD)) == []
    assert exposure_problems("gateway", "0.0.0.0", good) == []
    # redact and passthrough never use the secret
    assert exposure_problems("gateway", "0.0.0.0", GatewaySettings(phi_mode="redact")) == []


@pytest.mark.parametrize(("mode", "phi", "expected"), [
    (StudyDateMode.AUTO, PhiMode.PSEUDONYMIZE, "2024"),
    (StudyDateMode.AUTO, PhiMode.REDACT, None),
    (StudyDateMode.AUTO, PhiMode.PASSTHROUGH, "20240102"),
    (StudyDateMode.FULL, PhiMode.REDACT, "20240102"),
    (StudyDateMode.YEAR, PhiMode.PASSTHROUGH, "2024"),
    (StudyDateMode.OMIT, PhiMode.PASSTHROUGH, None),
])
def test_study_date_modes(mode: StudyDateMode, phi: PhiMode, expected: str | None) -> None:
    assert public_study_date("20240102", mode, phi) == expected
    assert public_study_date(None, mode, phi) is None


def test_the_install_secret_is_private_and_stable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    first, created = install_secret(tmp_path)
    assert created and weak_secret(first) is None
    assert stat.S_IMODE((tmp_path / SECRET_FILE).stat().st_mode) == 0o600
    assert install_secret(tmp_path) == (first, False)
    monkeypatch.setenv("SPINE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PSEUDONYM_SECRET", raising=False)
    monkeypatch.delenv("INTERNAL_TOKEN", raising=False)
    env = lock_children_env({}, "127.0.0.1", CliSettings())
    assert weak_secret(env["PSEUDONYM_SECRET"]) is None and "INTERNAL_TOKEN" not in env
    again = lock_children_env({}, "0.0.0.0", CliSettings())
    assert again["PSEUDONYM_SECRET"] == env["PSEUDONYM_SECRET"]
    assert weak_secret(again["INTERNAL_TOKEN"]) is None
    assert capsys.readouterr().out.count("generated a per-install secret") == 1


def test_a_failed_request_cancels_its_remaining_images() -> None:
    """Image 1 fails; the request's other images are dropped, not computed."""
    computed: list[int] = []
    lock = threading.Lock()

    def run_batch(jobs: list[Job]) -> list[dict[str, np.ndarray]]:
        with lock:
            computed.extend(int(job.image[0, 0]) for job in jobs)
        time.sleep(0.05)
        if any(int(job.image[0, 0]) == 0 for job in jobs):
            raise RuntimeError("boom")
        return [{"x": job.image} for job in jobs]

    async def scenario() -> None:
        batcher: DynamicBatcher[Job, dict[str, np.ndarray]] = DynamicBatcher(
            run_batch, max_batch_size=1, max_delay_ms=0, max_queue_size=64
        )
        await batcher.start()
        served = SimpleNamespace(batcher=batcher)
        model = SimpleNamespace(name="spine-test")  # the model the request leased
        never = asyncio.Event()

        async def receive() -> dict[str, str]:
            await never.wait()
            return {"type": "http.disconnect"}

        images = [np.full((8, 8), i, np.uint8) for i in range(10)]
        with pytest.raises(ModelFailedError):
            await infer_images(
                served, model, images, time.perf_counter() + 30, receive  # type: ignore[arg-type]
            )
        await asyncio.sleep(0.5)
        await batcher.stop()

    asyncio.run(scenario())
    assert computed[0] == 0 and len(computed) <= 2, computed
