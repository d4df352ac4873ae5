"""Triton's model repository extension on the real model-server app, around a small model.

The model is a stand-in (a real ``BatchedModel`` whose weights are a number read from its
bundle folder), so the swap itself is what is watched: a request in flight finishes on
the bundle it started on while new ones get the new bundle, the old one is freed after,
a failed load leaves the old one serving, and the API refuses what it must (403).
The real bundles' loads (pins, confinement, ONNX) are tests/integration/test_bundle_swap.py.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from model_server.app import create_model_app
from model_server.lifecycle import BatchedModel
from shared import oip
from shared.settings import ModelServerSettings, documented_defaults

NAME = "stand-in"
TOKEN = "internal-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class FolderModel(BatchedModel):
    """Outputs the number in ``<folder>/weight``; ``load`` fails without that file. A
    model whose folder has a ``hold`` file waits in ``predict_batch`` until released."""

    name = NAME

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder
        self.weight = 0.0
        self.entered = threading.Event()
        self.release = threading.Event()

    def load(self) -> None:
        self.weight = float((self.folder / "weight").read_text())

    def metadata(self) -> oip.ModelMetadata:
        return oip.ModelMetadata(name=NAME, versions=[self.model_version()], platform="test",
                                 inputs=[], outputs=[])

    def model_version(self) -> str:
        return self.folder.name

    def predict_batch(self, images: list[np.ndarray]) -> Sequence[dict[str, np.ndarray]]:
        if (self.folder / "hold").exists():
            self.entered.set()
            assert self.release.wait(30)
        return [{"weight": np.array([self.weight], dtype=np.float32)} for _ in images]

    def merge_outputs(self, per_image: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        return {"weight": np.stack([item["weight"] for item in per_image])}


def bundle(root: Path, name: str, weight: float | None, hold: bool = False) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    if weight is not None:
        (folder / "weight").write_text(str(weight))
    if hold:
        (folder / "hold").touch()
    return folder


def settings(root: Path | None, token: str | None = TOKEN) -> ModelServerSettings:
    return documented_defaults(
        ModelServerSettings, model_repository_root=root,
        internal_token=SecretStr(token) if token else None,
        http_body_idle_timeout_s=10.0, max_header_bytes=16384,
    )


@asynccontextmanager
async def serving(
    first: Path | None, config: ModelServerSettings
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_model_app(
        FolderModel(first) if first is not None else None, title="t", max_batch_size=4,
        max_delay_ms=1, max_queue_size=16, settings=config, build=FolderModel, name=NAME,
    )
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://model", headers=AUTH) as client,
    ):
        for _ in range(200):
            if first is None or app.state.served.repository.ready:
                break
            await asyncio.sleep(0.01)
        yield app, client


async def infer(client: httpx.AsyncClient) -> tuple[str, float]:
    body, headers = oip.encode_request({"IMAGE": np.zeros((1, 1, 16, 16), np.uint8)},
                                       outputs=["weight"])
    response = await client.post(f"/v2/models/{NAME}/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    length = response.headers.get(oip.HEADER_LENGTH)
    answer, tensors = oip.decode_response(response.content, int(length) if length else None)
    return str(answer.model_version), float(tensors["weight"][0, 0])


async def load(client: httpx.AsyncClient, model_dir: str) -> httpx.Response:
    return await client.post(f"/v2/repository/models/{NAME}/load",
                             json={"parameters": {"model_dir": model_dir}})


async def index(client: httpx.AsyncClient) -> list[dict[str, str]]:
    response = await client.post("/v2/repository/index", json={})
    assert response.status_code == 200, response.text
    return response.json()


async def test_a_request_in_flight_finishes_on_its_bundle_and_the_old_one_is_freed_after(
    tmp_path: Path,
) -> None:
    old_dir = bundle(tmp_path, "old", 1.0, hold=True)
    bundle(tmp_path, "new", 2.0)
    async with serving(old_dir, settings(tmp_path)) as (app, client):
        repository = app.state.served.repository
        old = repository.serving
        in_flight = asyncio.create_task(infer(client))
        assert await asyncio.to_thread(old.entered.wait, 10)  # in the old model's batch

        swap = asyncio.create_task(load(client, "new"))
        for _ in range(500):  # the new bundle loads beside the old one, then switches in
            if repository.serving is not old:
                break
            await asyncio.sleep(0.01)
        assert repository.serving.model_version() == "new"
        assert [(e["state"], e.get("version")) for e in await index(client)] == [
            ("READY", "new"), ("UNLOADING", "old")]
        assert not swap.done()  # it waits for the old bundle to drain

        after = asyncio.create_task(infer(client))  # admitted now: leases the new bundle
        old.release.set()
        assert await in_flight == ("old", 1.0)  # finished on the bundle it started on
        assert await after == ("new", 2.0)
        assert (await swap).status_code == 200
        assert [(e["state"], e.get("version")) for e in await index(client)] == [
            ("READY", "new")]
        freed = weakref.ref(old)
        del old, in_flight
        gc.collect()
        assert freed() is None, gc.get_referrers(freed())  # nothing holds the old bundle


async def test_a_failed_load_leaves_the_old_bundle_serving_and_says_why(tmp_path: Path) -> None:
    bundle(tmp_path, "old", 1.0)
    bundle(tmp_path, "broken", None)  # no weight file: its load raises
    async with serving(tmp_path / "old", settings(tmp_path)) as (app, client):
        response = await load(client, "broken")
        assert response.status_code == 400
        error = response.json()["error"]
        assert "failed to load 'stand-in'" in error and "weight" in error, error
        assert "the bundle loaded before still serves" in error
        assert await infer(client) == ("old", 1.0)
        assert [(e["state"], e.get("version")) for e in await index(client)] == [
            ("READY", "old")]
        assert app.state.served.repository.load_failures == 1  # the load-failure hook


async def test_folders_outside_the_root_are_forbidden(tmp_path: Path) -> None:
    root = tmp_path / "root"
    bundle(root, "old", 1.0)
    outside = bundle(tmp_path, "outside", 3.0)
    (root / "link").symlink_to(outside)
    async with serving(root / "old", settings(root)) as (_app, client):
        for model_dir in (str(outside), "../outside", "link", "/etc"):
            response = await load(client, model_dir)
            assert response.status_code == 403, (model_dir, response.text)
            assert "is not under MODEL_REPOSITORY_ROOT" in response.json()["error"]
        assert (await load(client, "missing")).status_code == 400
        assert await infer(client) == ("old", 1.0)
        no_token = await client.post(f"/v2/repository/models/{NAME}/load", headers={
            "Authorization": ""}, json={"parameters": {"model_dir": "old"}})
        assert no_token.status_code == 401


@pytest.mark.parametrize(("root", "token", "needs"), [
    (None, TOKEN, "set MODEL_REPOSITORY_ROOT"), ("root", None, "needs INTERNAL_TOKEN"),
])
async def test_the_api_is_off_until_the_operator_turns_it_on(
    tmp_path: Path, root: str | None, token: str | None, needs: str
) -> None:
    first = bundle(tmp_path, "old", 1.0)
    config = settings(tmp_path if root else None, token)
    async with serving(first, config) as (_app, client):
        for path in ("/v2/repository/index", f"/v2/repository/models/{NAME}/load",
                     f"/v2/repository/models/{NAME}/unload"):
            response = await client.post(path, json={})
            assert response.status_code == 403, response.text
            assert needs in response.json()["error"]
        assert await infer(client) == ("old", 1.0)


async def test_a_server_started_empty_serves_once_a_bundle_is_loaded_and_unload_drains(
    tmp_path: Path,
) -> None:
    bundle(tmp_path, "first", 5.0)
    async with serving(None, settings(tmp_path)) as (_app, client):
        ready = await client.get("/v2/health/ready")
        assert ready.status_code == 503 and "no bundle loaded yet" in ready.json()["error"]
        assert [e["state"] for e in await index(client)] == ["UNAVAILABLE"]
        refused = await client.post(f"/v2/models/{NAME}/infer", content=b"{}")
        assert refused.status_code == 503 and refused.headers["Retry-After"]

        assert (await load(client, "first")).status_code == 200
        assert (await client.get("/v2/health/ready")).status_code == 200
        assert await infer(client) == ("first", 5.0)
        assert await index(client) == [{"name": NAME, "state": "READY", "reason": "",
                                         "version": "first"}]

        reload = await client.post(f"/v2/repository/models/{NAME}/load")  # no model_dir
        assert reload.status_code == 200 and await infer(client) == ("first", 5.0)
        assert (await client.post(f"/v2/repository/models/{NAME}/unload")).status_code == 200
        assert (await client.get("/v2/health/ready")).status_code == 503
        assert (await client.post("/v2/repository/index", json={"ready": True})).json() == []
