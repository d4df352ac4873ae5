"""A stand-in model replica that answers what a broken one would (the one fake on purpose).

A tiny FastAPI app on a free loopback port, in a thread of the test process, that speaks
enough OIP v2 to be called by the gateway: readiness, metadata, model configuration, infer.
``mode`` says how its infer answers misbehave (garbage, HTTP 500, 503 or 400, a hang),
``config_mode`` how its model configuration does (the gateway reads that once per
replica); ``calls`` counts the infers it received.
Every answer is built with the project's own codec (``shared.oip``) and facts
(``shared.contract``), then broken in exactly one way, so a test knows which check it
exercises.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from shared import contract, oip
from shared.bundle import BundleKind
from tests.integration.stack import free_port

MEMBERS = ["standin-member"]
CLASSIFIER_FACTS = contract.ClassifierFacts(
    name="standin", kind=BundleKind.UNTRAINED, threshold=0.5, members=MEMBERS, weights=[1.0],
    checkpoints={"standin.pth": "0" * 64}, device="cpu", backends={MEMBERS[0]: "torch"},
)
DETECTOR_FACTS = contract.DetectorFacts(
    name="standin", kind=BundleKind.UNTRAINED, class_names={0: "Osteophytes"}, conf=0.25,
    iou=0.5, max_det=4, image_size=640, backend="torch", checkpoints={"standin.pt": "1" * 64},
    device="cpu",
)
# A message a replica might include in its 500: it must never reach a client.
INTERNAL_DETAIL = "Traceback: /srv/models/secret-checkpoint.pth CUDA error"

# Broken answers, by mode: what each breaks.
CLASSIFIER_GARBAGE = {
    "shape": "abnormal_probability of shape [1, 2]",
    "nan": "abnormal_probability NaN",
    "above-one": "abnormal_probability 1.7",
    "members": "member_probabilities with 3 columns for 1 member",
    "dtype": "abnormal as FP32, not BOOL",
    "no-abnormal": "the abnormal output missing",
    "not-oip": "a body that is not an OIP answer",
}
DETECTOR_GARBAGE = {
    "shape": "detection_boxes of shape [1, 4, 3]",
    "nan": "a NaN box",
    "above-one": "a score of 3.5",
    "outside": "a box far outside the image",
    "inverted": "a box with x1 > x2",
    "unknown-class": "class id 7 (not in class_names)",
    "count": "num_detections 9 for 4 rows",
}
# Broken model configurations, by config_mode: the facts cannot be read from them.
CONFIG_GARBAGE = {
    "missing": "no /config route (404)",
    "no-threshold": "the threshold fact missing (classifier) / conf (detector)",
    "plain-values": "facts as OIP scalars, not {string_value: text}",
    "not-json": "a body that is not JSON",
}


def _classifier_answer(mode: str, images: int, members: int) -> dict[str, np.ndarray]:
    outputs: dict[str, np.ndarray] = {
        contract.ABNORMAL_PROBABILITY.name: np.full((images, 1), 0.7, np.float32),
        contract.MEMBER_PROBABILITIES.name: np.full((images, members), 0.7, np.float32),
        contract.ABNORMAL.name: np.ones((images, 1), np.bool_),
    }
    if mode == "shape":
        outputs[contract.ABNORMAL_PROBABILITY.name] = np.full((images, 2), 0.7, np.float32)
    elif mode == "nan":
        outputs[contract.ABNORMAL_PROBABILITY.name][:] = np.nan
    elif mode == "above-one":
        outputs[contract.ABNORMAL_PROBABILITY.name][:] = 1.7
    elif mode == "members":
        outputs[contract.MEMBER_PROBABILITIES.name] = np.full(
            (images, members + 2), 0.7, np.float32
        )
    elif mode == "dtype":
        outputs[contract.ABNORMAL.name] = np.ones((images, 1), np.float32)
    elif mode == "no-abnormal":
        del outputs[contract.ABNORMAL.name]
    elif mode == "decided-normal":  # valid: the model's call, whatever the score says
        outputs[contract.ABNORMAL.name][:] = False
    return outputs


def _detector_answer(mode: str, images: int, height: int, width: int) -> dict[str, np.ndarray]:
    rows = DETECTOR_FACTS.max_det
    boxes = np.zeros((images, rows, 4), np.float32)
    boxes[:, 0] = [width * 0.2, height * 0.2, width * 0.5, height * 0.5]
    outputs: dict[str, np.ndarray] = {
        contract.NUM_DETECTIONS.name: np.ones((images, 1), np.int32),
        contract.DETECTION_BOXES.name: boxes,
        contract.DETECTION_SCORES.name: np.full((images, rows), 0.9, np.float32),
        contract.DETECTION_CLASSES.name: np.zeros((images, rows), np.int32),
    }
    if mode == "shape":
        outputs[contract.DETECTION_BOXES.name] = boxes[:, :, :3].copy()
    elif mode == "nan":
        boxes[:, 0, 2] = np.nan
    elif mode == "above-one":
        outputs[contract.DETECTION_SCORES.name][:, 0] = 3.5
    elif mode == "outside":
        boxes[:, 0] = [10, 10, width * 5, height * 5]
    elif mode == "inverted":
        boxes[:, 0] = [width * 0.6, 10, width * 0.2, 50]
    elif mode == "unknown-class":
        outputs[contract.DETECTION_CLASSES.name][:, 0] = 7
    elif mode == "count":
        outputs[contract.NUM_DETECTIONS.name][:] = 9
    return outputs


class StandIn:
    """One misbehaving replica of ``model`` (classifier or detector); set ``mode`` freely."""

    def __init__(self, model: str, facts: contract.ServedFacts | None = None) -> None:
        self.model = model
        self.facts = facts or (
            CLASSIFIER_FACTS if model == contract.CLASSIFIER_MODEL else DETECTOR_FACTS
        )
        self.mode = "ok"
        self.config_mode = "ok"
        # The next answer names this version (then None): a call that was in flight on
        # the old bundle while this replica's bundle was swapped.
        self.straggler_version: str | None = None
        self.config_reads = 0
        self.ready_hangs = False
        self.calls = 0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = self._build()
        self._server = uvicorn.Server(uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off",
        ))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def _config(self, name: str) -> Response:
        self.config_reads += 1
        if self.config_mode == "missing":
            return JSONResponse({"error": "Not Found"}, status_code=404)
        if self.config_mode == "not-json":
            return Response(b"<html>oops</html>", media_type="text/html")
        parameters: dict[str, Any] = dict(self.facts.to_config_parameters())
        if self.config_mode == "no-threshold":
            del parameters["threshold" if "threshold" in parameters else "conf"]
        elif self.config_mode == "plain-values":
            parameters = dict(self.facts.to_parameters())
        specs = (
            contract.CLASSIFIER_OUTPUTS if name == contract.CLASSIFIER_MODEL
            else contract.DETECTOR_OUTPUTS
        )
        config = contract.model_configuration(
            name, inputs=[contract.IMAGE.metadata()], outputs=[s.metadata() for s in specs],
            parameters=parameters, max_batch_size=8, max_queue_delay_us=1000,
        )
        return JSONResponse(config)

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v2/health/ready")
        @app.get("/v2/models/{name}/ready")
        async def ready() -> dict[str, bool]:
            if self.ready_hangs:
                await asyncio.sleep(60)
            return {"ready": True}

        @app.get("/v2/models/{name}")
        async def metadata(name: str) -> dict[str, Any]:
            return {"name": name, "platform": "standin", "versions": [self.facts.version],
                    "inputs": [], "outputs": [], "parameters": self.facts.to_parameters()}

        @app.get("/v2/models/{name}/config")
        async def config(name: str) -> Response:
            return self._config(name)

        @app.post("/v2/models/{name}/infer")
        async def infer(name: str, request: Request) -> Response:
            self.calls += 1
            body = await request.body()
            length = request.headers.get(oip.HEADER_LENGTH)
            header, inputs = oip.decode_request(body, int(length) if length else None)
            images, _, height, width = inputs[contract.IMAGE.name].shape
            if self.mode == "500":
                return JSONResponse({"error": INTERNAL_DETAIL}, status_code=500)
            if self.mode == "503":  # loading or overloaded: ask again in a second
                return JSONResponse({"error": "busy"}, status_code=503,
                                    headers={"Retry-After": "1"})
            if self.mode == "400":  # it refuses the request itself
                return JSONResponse({"error": "bad request"}, status_code=400)
            if self.mode == "hang":
                await asyncio.sleep(60)
            if self.mode == "not-oip":
                return Response(b"<html>oops</html>", media_type="text/html")
            if isinstance(self.facts, contract.ClassifierFacts):
                outputs = _classifier_answer(self.mode, images, len(self.facts.members))
            else:
                outputs = _detector_answer(self.mode, images, height, width)
            version = "another-version" if self.mode == "version" else self.facts.version
            if self.straggler_version is not None:
                version, self.straggler_version = self.straggler_version, None
            payload, headers = oip.encode_response(
                name, outputs, request_id=header.id, binary=set(outputs), model_version=version
            )
            return Response(payload, headers=headers)

        return app

    def start(self) -> StandIn:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self._server.started, "the stand-in replica did not start"
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._server.force_exit = True  # calls left hanging ("hang") are not waited for
        self._thread.join(10)


@contextmanager
def standin(model: str, facts: contract.ServedFacts | None = None) -> Iterator[StandIn]:
    replica = StandIn(model, facts).start()
    try:
        yield replica
    finally:
        replica.stop()
