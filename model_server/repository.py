"""The served model and its swaps: Triton's model repository extension, for one model.

A model service serves one model, under the name its service fixes. The repository holds
the bundle serving it now and replaces it without a failed request
(``POST /v2/repository/models/{name}/load``, :mod:`model_server.repository_api`):

- the new bundle is built and loaded beside the old one by the start-up path itself (the
  service's model type, then ``BatchedModel.load_in_background``: weights-only loading,
  confinement, sha256 pins, ONNX checks); a load that fails leaves the old one serving;
- the switch is one assignment on the event loop. A request leases the model serving at
  its admission (:meth:`ModelRepository.lease`) and keeps it to its answer: its images
  carry their model through the batcher (:class:`Job`), so its outputs, their merge and
  the answer's ``model_version`` all come from one bundle;
- the old bundle drains: requests that leased it finish on it, then it is dropped and
  its memory freed.

Index states are Triton's: READY, LOADING, UNLOADING (draining), UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np

from model_server.errors import LoadFailedError, ModelNotReadyError
from model_server.lifecycle import BatchedModel

log = logging.getLogger(__name__)

# Makes the model of a bundle folder, as at start-up (the service's model type).
ModelBuilder = Callable[[Path], BatchedModel]
Outputs = dict[str, np.ndarray]


class Job(NamedTuple):
    """One image queued for the batcher, with the model its request leased."""

    model: BatchedModel
    image: np.ndarray


def run_jobs(jobs: Sequence[Job]) -> list[Outputs]:
    """One batch: a forward pass per model in it (two only while a swap drains)."""
    results: list[Outputs | None] = [None] * len(jobs)
    groups: dict[int, list[int]] = {}
    for index, job in enumerate(jobs):
        groups.setdefault(id(job.model), []).append(index)
    for indices in groups.values():
        model = jobs[indices[0]].model
        outputs = model.predict_batch([jobs[i].image for i in indices])
        for index, output in zip(indices, outputs, strict=True):
            results[index] = output
    return [result for result in results if result is not None]


def free_device_memory() -> None:
    """Collect the dropped model and give its cached GPU memory back (no-op on CPU)."""
    gc.collect()
    torch = sys.modules.get("torch")  # never import torch here: the model did, or none
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


class ModelRepository:
    """The one model of a service: the bundle serving it, loads, swaps and drains."""

    def __init__(
        self, name: str, build: ModelBuilder, drain_timeout_s: float, *,
        first: BatchedModel | None = None, model_dir: Path | None = None,
    ) -> None:
        """``first``: the model made at start-up, loaded by :meth:`start`; None: nothing
        serves until a :meth:`load`."""
        self.name = name
        self._build = build
        self.drain_timeout_s = drain_timeout_s
        self.serving = first  # what new requests lease
        self.model_dir = model_dir  # its bundle folder
        self.loading: BatchedModel | None = None
        # Why nothing serves (index, readiness).
        self.reason = f"no bundle loaded yet: load one with POST /v2/repository/models/{name}/load"
        self.load_failures = 0  # loads that failed (start-up and swaps)
        self._leases: dict[int, int] = {}  # id(model) -> requests holding it
        self._drained: dict[int, asyncio.Event] = {}
        self._draining: list[BatchedModel] = []
        self._lock = asyncio.Lock()  # one load or unload at a time

    @property
    def ready(self) -> bool:
        return self.serving is not None and self.serving.ready

    @property
    def load_error(self) -> str | None:
        """Why nothing serves: the start-up load's error, or unloaded (None while loading)."""
        if self.serving is None:
            return self.reason
        return self.serving.load_error

    def current(self) -> BatchedModel:
        """The model serving (perhaps still loading at start-up); 503 when there is none."""
        if self.serving is None:
            raise ModelNotReadyError(f"model {self.name} is not ready: {self.reason}")
        return self.serving

    @contextmanager
    def lease(self) -> Iterator[BatchedModel]:
        """The ready model, held until the block ends (a swap waits for it to drain)."""
        model = self.serving
        if model is None or not model.ready:
            why = self.reason if model is None else "loading"
            raise ModelNotReadyError(f"model {self.name} is not ready ({why})")
        key = id(model)
        self._leases[key] = self._leases.get(key, 0) + 1
        try:
            yield model
        finally:
            self._leases[key] -= 1
            if not self._leases[key]:
                del self._leases[key]
                if (drained := self._drained.get(key)) is not None:
                    drained.set()

    async def start(self) -> None:
        """Load the model made at start-up; a failure is kept as its ``load_error``
        (readiness says it) and counted."""
        async with self._lock:
            if self.serving is not None and not await self._load(self.serving):
                self.load_failures += 1

    async def load(self, model_dir: Path) -> BatchedModel:
        """Load the bundle in ``model_dir`` beside the one serving, switch to it, drain and
        free the old one. :class:`LoadFailedError` (the old one still serving) says why not."""
        async with self._lock:
            try:
                model = await asyncio.to_thread(self._build, model_dir)
            except (OSError, ValueError, RuntimeError) as exc:  # manifest refused
                self.load_failures += 1
                raise LoadFailedError(f"failed to load {self.name!r}: {exc}") from exc
            self.loading = model
            try:
                loaded = await self._load(model)
            finally:
                self.loading = None
            if not loaded:
                self.load_failures += 1
                serving = "the bundle loaded before still serves" if self.ready else "none serves"
                raise LoadFailedError(
                    f"failed to load {self.name!r}: {model.load_error}; {serving}"
                )
            old, self.serving, self.model_dir = self.serving, model, model_dir
            log.info("model %s: now serving %s (version %s)", self.name, model_dir,
                     model.model_version())
            if old is not None:
                await self._drain(old)
                del old  # the last reference: the old bundle is garbage now
                free_device_memory()
                log.info("model %s: the previous bundle drained and was freed", self.name)
            return model

    async def unload(self) -> None:
        """Stop serving: requests in flight finish, then the bundle is freed."""
        async with self._lock:
            old, self.serving, self.model_dir = self.serving, None, None
            self.reason = "unloaded"
            if old is not None:
                await self._drain(old)
                del old
                free_device_memory()

    @staticmethod
    async def _load(model: BatchedModel) -> bool:
        """The start-up load, in its thread; True when the model is ready."""
        await asyncio.to_thread(model.load_in_background().join)
        return model.ready

    async def _drain(self, old: BatchedModel) -> None:
        """Wait until no request holds ``old`` (at most ``drain_timeout_s``); then it is
        no longer ready (the caller drops the last reference)."""
        key = id(old)
        self._draining.append(old)
        try:
            if self._leases.get(key):
                drained = self._drained.setdefault(key, asyncio.Event())
                try:
                    await asyncio.wait_for(drained.wait(), self.drain_timeout_s)
                except TimeoutError:
                    log.warning("model %s: %d request(s) still hold the old bundle after "
                                "%g s; it is freed when they end", self.name,
                                self._leases.get(key, 0), self.drain_timeout_s)
        finally:
            self._drained.pop(key, None)
            self._draining.remove(old)
        old.ready = False

    def holders(self, model: BatchedModel) -> int:
        """Requests holding ``model`` now."""
        return self._leases.get(id(model), 0)

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Triton's repository index: this model, in each state it is in now."""
        entries = []
        if self.serving is not None:
            state = "READY" if self.serving.ready else (
                "UNAVAILABLE" if self.serving.load_error else "LOADING")
            entries.append(self._entry(self.serving, state, self.serving.load_error or ""))
        if self.loading is not None:
            entries.append(self._entry(self.loading, "LOADING", ""))
        entries += [self._entry(m, "UNLOADING", "draining") for m in self._draining]
        if not entries:
            entries.append({"name": self.name, "state": "UNAVAILABLE", "reason": self.reason})
        return [e for e in entries if e["state"] == "READY" or not ready_only]

    def _entry(self, model: BatchedModel, state: str, reason: str) -> dict[str, str]:
        entry = {"name": self.name, "state": state, "reason": reason}
        if model.ready:
            entry["version"] = model.model_version()
        return entry
