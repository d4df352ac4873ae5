"""Triton Inference Server stands in for our model services, for real (issues 15, 24).

The tiny test bundle's graphs (the ones our services serve) are exported with ``spine
export-triton``'s code in both flavours and served by the nvidia-pytriton wheel's
tritonserver (started by ``spine triton``'s code, from ``.venv-triton``:
scripts/setup-triton.sh):

- ``python``: the wheel's Python backend with the generic ``model.py`` running the graph
  with ONNX Runtime. The wheel has that backend, so under CI these tests always run (a
  missing Triton environment fails them, naming the setup script);
- ``onnxruntime``: ``platform: "onnxruntime_onnx"``, Triton's C++ ONNX Runtime backend,
  which the wheel lacks and no package registry ships: these run only when
  ``TRITON_BACKEND_DIR`` is set (README "Triton"), and skip otherwise, under CI too:
  the one documented exception to "CI never skips for a missing tool". Their
  configuration is checked without a server in tests/unit/test_triton_export.py.

Each is compared with our own services on the same tensors, then used by our gateway
alone, mixed with our classifier, killed under load, and watched by ``/readyz``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from shared import contract
from tests.factories import make_detector_fire, make_dicom, radiograph_pixels
from tests.integration.stack import (
    Service,
    Stack,
    base_env,
    free_port,
    start_service,
    start_stack,
    wait_ready,
)
from tests.ops.load import run_load
from tests.tools import unavailable

pytestmark = pytest.mark.timeout(300)

SCORE_ATOL = 1e-4
BOX_ATOL_PX = 0.5
DETECTION_UNAVAILABLE = "Detection unavailable"
CLASSIFIER_OUTPUTS = contract.names(contract.CLASSIFIER_OUTPUTS)
DETECTOR_OUTPUTS = contract.names(contract.DETECTOR_OUTPUTS)
FLAVOURS = ("python", "onnxruntime")
NO_ONNXRUNTIME_BACKEND = (
    "TRITON_BACKEND_DIR is not set: Triton's C++ ONNX Runtime backend "
    "(onnxruntime/libtriton_onnxruntime.so) is not in the nvidia-pytriton wheel and no "
    "package registry ships it, so this flavour runs only where a folder with it is named "
    "(e.g. /opt/tritonserver/backends from NVIDIA's tritonserver:24.10-py3 image); not "
    "required under CI for that reason (README \"Triton\"). Its configuration is checked "
    "by tests/unit/test_triton_export.py; the python flavour runs the same graphs here"
)


@pytest.fixture(scope="module")
def bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle with a detector whose confidences differ per box."""
    copy = tmp_path_factory.mktemp("triton-bundle") / "bundle"
    shutil.copytree(tiny_bundle, copy)
    make_detector_fire(copy / "detection output/yolo11/weights/best.pt", class_logit=-1.0)
    return copy


@pytest.fixture(scope="module")
def stack(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Our own three services on the same bundle, for the comparisons."""
    running = start_stack(
        bundle, tmp_path_factory.mktemp("triton-ours"), MAX_CONTENT_LENGTH=str(8 * 1024 * 1024)
    )
    yield running
    running.stop()


@pytest.fixture(scope="module", params=FLAVOURS)
def flavour(request: pytest.FixtureRequest) -> str:
    """The export's backend; ``onnxruntime`` only where TRITON_BACKEND_DIR names one."""
    if request.param == "onnxruntime" and not os.environ.get("TRITON_BACKEND_DIR"):
        pytest.skip(NO_ONNXRUNTIME_BACKEND)
    return request.param


@pytest.fixture(scope="module")
def triton_repo(bundle: Path, flavour: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundle exported as `spine export-triton --backend FLAVOUR` does (our batching
    defaults)."""
    from shared.settings import ModelServerSettings
    from spine.triton.export import PYTHON_MODEL, ExportOptions, export_repository

    repo = tmp_path_factory.mktemp(f"triton-{flavour}") / "repo"
    settings = ModelServerSettings()
    options = ExportOptions.from_settings(settings, threads=1, backend=flavour)
    assert options.letterbox == "rect"  # DETECTOR_LETTERBOX's default, as our detector's
    report = export_repository(bundle, repo, options, settings)
    code = ["model.py"] if flavour == "python" else []
    for model in (contract.CLASSIFIER_MODEL, contract.DETECTOR_MODEL):
        assert sorted(p.name for p in (repo / model).rglob("*") if p.is_file()) == sorted([
            "config.pbtxt", "model.onnx", *code])  # the graph, its configuration, a runner
        config = (repo / model / "config.pbtxt").read_text()
        if flavour == "python":
            assert (repo / model / "1" / "model.py").read_bytes() == PYTHON_MODEL.read_bytes()
            assert 'backend: "python"' in config
        else:
            assert 'platform: "onnxruntime_onnx"' in config
    print(f"\n[triton] {flavour} flavour exported in {report.seconds:.1f} s: {report.parity}")
    return repo


def start_triton(repo: Path, folder: Path, name: str = "triton"):  # type: ignore[no-untyped-def]
    """tritonserver on free loopback ports, as `spine triton` starts it."""
    from shared.settings import CliSettings
    from spine.triton.install import TritonNotInstalledError
    from spine.triton.server import Ports, TritonServer

    folder.mkdir(parents=True, exist_ok=True)
    try:
        server = TritonServer(
            repo, ports=Ports(free_port(), free_port(), free_port()),
            log_path=folder / f"{name}.log",
            settings=CliSettings(spine_cache_dir=folder / "cache"),
        )
    except TritonNotInstalledError as exc:
        unavailable(str(exc))
    server.start()
    seconds = server.wait_ready()
    print(f"\n[{name}] ready in {seconds:.1f} s at {server.url}")
    return server


@pytest.fixture(scope="module")
def tritonserver(triton_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    server = start_triton(triton_repo, tmp_path_factory.mktemp("tritonserver"))
    yield server
    assert server.stop() == 0, server.log_tail()


@contextlib.contextmanager
def _client(url: str) -> Iterator[triton.InferenceServerClient]:
    """Closed after use: tritonserver's graceful stop waits for open connections."""
    client = triton.InferenceServerClient(url=url.removeprefix("http://"))
    try:
        yield client
    finally:
        client.close()


def _infer(url: str, model: str, images: np.ndarray, outputs: list[str]) -> dict[str, np.ndarray]:
    tensor = triton.InferInput(contract.IMAGE.name, list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images, binary_data=True)
    requested = [triton.InferRequestedOutput(name, binary_data=True) for name in outputs]
    with _client(url) as client:
        result = client.infer(model, [tensor], outputs=requested)
    return {name: result.as_numpy(name) for name in outputs}


def _textured(height: int, width: int, seed: int) -> np.ndarray:
    """A phantom radiograph with noise: no flat region, so no two anchors score alike."""
    rng = np.random.default_rng(seed)
    pixels = radiograph_pixels(height, width, bits=8, seed=seed).astype(np.float32)
    return np.clip(pixels + rng.normal(0, 8, pixels.shape), 0, 255).astype(np.uint8)


def _images() -> list[np.ndarray]:
    """Requests of different shapes, one of two images; square and letterboxed (the
    rectangle letterbox pads at most a stride: few equal-scoring padding anchors)."""
    rng = np.random.default_rng(7)
    return [
        _textured(640, 640, 5)[None, None],
        rng.integers(0, 256, size=(2, 1, 320, 320), dtype=np.uint8),
        _textured(1024, 683, 6)[None, None],
        rng.integers(0, 256, size=(1, 1, 97, 131), dtype=np.uint8),
    ]


def _boxes(outputs: dict[str, np.ndarray], index: int) -> np.ndarray:
    """(x1, y1, x2, y2, score, class) rows of one image, in a canonical order."""
    count = int(outputs["num_detections"][index, 0])
    rows = np.concatenate([
        outputs["detection_boxes"][index, :count],
        outputs["detection_scores"][index, :count, None],
        outputs["detection_classes"][index, :count, None].astype(np.float32),
    ], axis=1)
    return rows[np.lexsort(np.round(rows[:, ::-1], 1).T)]


def test_config_parameters_are_the_bundle_facts(stack: Stack, tritonserver, flavour) -> None:
    """Triton's /config parameters decode to the facts our own services report."""
    from model_server.lifecycle import bundle_digest

    for model, facts_type, ours in (
        (contract.CLASSIFIER_MODEL, contract.ClassifierFacts, stack.classifier),
        (contract.DETECTOR_MODEL, contract.DetectorFacts, stack.detector),
    ):
        with _client(tritonserver.url) as client:
            config = client.get_model_config(model)
        assert config["max_batch_size"] == 8 and config["backend"] == flavour
        assert config["platform"] == ("onnxruntime_onnx" if flavour == "onnxruntime" else "")
        assert int(config["dynamic_batching"]["max_queue_delay_microseconds"]) == 5000
        theirs = facts_type.from_config_parameters(config["parameters"])
        ours_config = httpx.get(f"{ours}/v2/models/{model}/config", timeout=10).json()
        for key, value in ours_config["parameters"].items():  # Triton's adds ONNX Runtime's
            assert config["parameters"][key] == value, key
        ours_facts = facts_type.from_config_parameters(ours_config["parameters"])
        assert config["parameters"]["bundle_digest"]["string_value"] == bundle_digest(ours_facts)
        assert config["max_batch_size"] == ours_config["max_batch_size"]
        with _client(ours) as client:
            metadata = client.get_model_metadata(model)
        assert theirs == facts_type.from_parameters(metadata["parameters"])
        assert [o["name"] for o in config["output"]] == [
            o["name"] for o in metadata["outputs"]
        ]


def _assert_same_classifier(theirs: dict[str, np.ndarray], ours: dict[str, np.ndarray]) -> None:
    for name in CLASSIFIER_OUTPUTS:
        assert theirs[name].dtype == ours[name].dtype and theirs[name].shape == ours[name].shape
    np.testing.assert_allclose(
        theirs["member_probabilities"], ours["member_probabilities"], rtol=0, atol=SCORE_ATOL
    )
    np.testing.assert_allclose(
        theirs["abnormal_probability"], ours["abnormal_probability"], rtol=0, atol=SCORE_ATOL
    )
    np.testing.assert_array_equal(theirs["abnormal"], ours["abnormal"])


def _assert_same_detector(theirs: dict[str, np.ndarray], ours: dict[str, np.ndarray]) -> None:
    np.testing.assert_array_equal(theirs["num_detections"], ours["num_detections"])
    assert theirs["detection_boxes"].shape == ours["detection_boxes"].shape
    assert int(ours["num_detections"].sum()) > 0  # this detector fires on every image
    for index in range(ours["num_detections"].shape[0]):
        mine, other = _boxes(ours, index), _boxes(theirs, index)
        np.testing.assert_allclose(other[:, :4], mine[:, :4], rtol=0, atol=BOX_ATOL_PX)
        np.testing.assert_allclose(other[:, 4], mine[:, 4], rtol=0, atol=SCORE_ATOL)
        np.testing.assert_array_equal(other[:, 5], mine[:, 5])


def test_same_answers_as_our_services_on_the_same_tensors(stack: Stack, tritonserver) -> None:
    for images in _images():
        _assert_same_classifier(
            _infer(tritonserver.url, contract.CLASSIFIER_MODEL, images, CLASSIFIER_OUTPUTS),
            _infer(stack.classifier, contract.CLASSIFIER_MODEL, images, CLASSIFIER_OUTPUTS),
        )
        _assert_same_detector(
            _infer(tritonserver.url, contract.DETECTOR_MODEL, images, DETECTOR_OUTPUTS),
            _infer(stack.detector, contract.DETECTOR_MODEL, images, DETECTOR_OUTPUTS),
        )


def _executions(url: str, model: str) -> tuple[float, float]:
    """Triton's /metrics: (requests, executions) of ``model`` so far."""
    counts = dict.fromkeys(("nv_inference_request_success", "nv_inference_exec_count"), 0.0)
    for line in httpx.get(url, timeout=10).text.splitlines():
        name = line.partition("{")[0]
        if name in counts and f'model="{model}"' in line:
            counts[name] += float(line.rsplit(" ", 1)[1])
    return counts["nv_inference_request_success"], counts["nv_inference_exec_count"]


def test_concurrent_requests_each_get_their_own_answer(stack: Stack, tritonserver) -> None:
    """Twelve different images sent at once, two shapes: whatever executions Triton's
    dynamic batcher forms of them (same-shape requests join one; how many is timing,
    printed, not asserted), each answer is its own image's, as ours answers it alone."""
    requests = [_textured(*((320, 256) if i % 2 else (288, 352)), seed=20 + i)[None, None]
                for i in range(12)]
    metrics = f"http://127.0.0.1:{tritonserver.ports.metrics}/metrics"
    before = _executions(metrics, contract.DETECTOR_MODEL)
    with ThreadPoolExecutor(len(requests)) as pool:
        theirs = list(pool.map(lambda images: _infer(
            tritonserver.url, contract.DETECTOR_MODEL, images, DETECTOR_OUTPUTS), requests))
    after = _executions(metrics, contract.DETECTOR_MODEL)
    for images, answer in zip(requests, theirs, strict=True):
        _assert_same_detector(
            answer, _infer(stack.detector, contract.DETECTOR_MODEL, images, DETECTOR_OUTPUTS))
    assert after[0] - before[0] == len(requests)
    print(f"\n[triton] {len(requests)} requests in {after[1] - before[1]:.0f} executions")


def test_bad_input_is_a_client_error(tritonserver) -> None:
    """Triton checks the datatype and rank against the configuration (a graph cannot
    refuse a value: our services' minimum image side is theirs alone)."""
    wrong = triton.InferInput(contract.IMAGE.name, [1, 1, 16, 16], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 1, 16, 16), dtype=np.float32), binary_data=True)
    with _client(tritonserver.url) as client, pytest.raises(
        triton.InferenceServerException
    ) as caught:
        client.infer(contract.CLASSIFIER_MODEL, [wrong])
    assert "FP32" in str(caught.value) or "datatype" in str(caught.value).lower()
    assert caught.value.status() in ("400", 400)


# --- our gateway in front of Triton ----------------------------------------------------


@pytest.fixture(scope="module")
def dicom() -> bytes:
    """Square (no letterbox padding) and textured: see make_detector_fire."""
    pixels = _textured(1400, 1400, 3).astype(np.uint16) * 16
    return make_dicom(pixels, patient_id="PID-TRITON")


def upload(url: str, data: bytes) -> httpx.Response:
    return httpx.post(
        f"{url}/upload", files={"file": ("x.dcm", data, "application/dicom")},
        params={"annotate": "false"}, timeout=120,
    )


def start_gateway(folder: Path, classifier: str, detector: str, **env: str) -> Service:
    folder.mkdir(parents=True, exist_ok=True)
    gateway = start_service("gateway", {
        **base_env(folder), "CLASSIFIER_URLS": classifier, "DETECTOR_URLS": detector,
        "MAX_CONTENT_LENGTH": str(8 * 1024 * 1024), "READINESS_INTERVAL_S": "0.5", **env,
    }, folder)
    wait_ready(gateway)
    return gateway


def _same_result(theirs: dict, ours: dict, scale: float) -> None:
    assert theirs["diagnosis"] == ours["diagnosis"]
    assert theirs["threshold"] == ours["threshold"] == 0.449
    assert theirs["ensemble_weights"] == ours["ensemble_weights"]
    assert set(theirs["ensemble_prediction"]) == set(ours["ensemble_prediction"])
    for member, score in ours["ensemble_prediction"].items():
        assert theirs["ensemble_prediction"][member] == pytest.approx(score, abs=SCORE_ATOL)
    assert theirs["abnormal_probability"] == pytest.approx(ours["abnormal_probability"],
                                                           abs=SCORE_ATOL)
    assert theirs["model_bundle"] == ours["model_bundle"]
    assert theirs["demo"] is ours["demo"] is False
    assert len(theirs["detections"]) == len(ours["detections"])
    key = lambda d: (d["class_id"], *np.round(d["bbox"], 0))  # noqa: E731
    for mine, other in zip(sorted(ours["detections"], key=key),
                           sorted(theirs["detections"], key=key), strict=True):
        assert other["class"] == mine["class"]
        assert other["confidence"] == pytest.approx(mine["confidence"], abs=SCORE_ATOL)
        assert other["bbox"] == pytest.approx(mine["bbox"], abs=BOX_ATOL_PX * scale)
    assert theirs["warnings"] == ours["warnings"]


def test_gateway_against_triton_answers_as_against_our_stack(
    stack: Stack, tritonserver, dicom: bytes, tmp_path: Path
) -> None:
    ours = upload(stack.gateway, dicom)
    assert ours.status_code == 200, ours.text
    gateway = start_gateway(tmp_path / "gw", tritonserver.url, tritonserver.url)
    try:
        theirs = upload(gateway.url, dicom)
        assert theirs.status_code == 200, theirs.text + gateway.log_text()[-2000:]
        body = theirs.json()
        _same_result(body, ours.json(), scale=1400 / 1024)
        assert body["detections"], "this detector fires on every image"
        assert httpx.get(f"{gateway.url}/readyz").status_code == 200
    finally:
        gateway.stop()


def test_mixed_our_classifier_and_tritons_detector(
    stack: Stack, tritonserver, dicom: bytes, tmp_path: Path
) -> None:
    ours = upload(stack.gateway, dicom).json()
    gateway = start_gateway(tmp_path / "gw", stack.classifier, tritonserver.url)
    try:
        response = upload(gateway.url, dicom)
        assert response.status_code == 200, response.text + gateway.log_text()[-2000:]
        _same_result(response.json(), ours, scale=1400 / 1024)
    finally:
        gateway.stop()


def _wait_readyz(url: str, status: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if httpx.get(f"{url}/readyz", timeout=5).status_code == status:
            return
        time.sleep(0.2)
    raise AssertionError(f"/readyz never answered {status}")


def _wait_health(url: str, status: str, timeout_s: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout_s
    body: dict = {}
    while time.monotonic() < deadline:
        body = httpx.get(f"{url}/health", timeout=5).json()
        if body.get("status") == status:
            return body
        time.sleep(0.2)
    raise AssertionError(f"/health never said {status}: {body}")


def test_triton_killed_under_load_behaves_as_our_detector_killed(
    stack: Stack, triton_repo: Path, dicom: bytes, tmp_path: Path
) -> None:
    """Our classifier + a Triton detector that is SIGKILLed mid-load: every answer 200,
    a diagnosis always, detections missing with a warning once it is gone; /health goes
    degraded (detector not ready; /readyz needs the classifier only and stays 200) and
    healthy again when a new tritonserver comes up on the same port."""
    server = start_triton(triton_repo, tmp_path / "killed")
    gateway = start_gateway(tmp_path / "gw", stack.classifier, server.url,
                            UPSTREAM_TIMEOUT_S="20", REQUEST_TIMEOUT_S="30")
    try:
        assert upload(gateway.url, dicom).json()["detections"] is not None  # warm
        outcomes = run_load(f"{gateway.url}/upload", dicom, requests=16, concurrency=4,
                            client_timeout_s=45, fault_after=4, fault=server.kill)
        assert all(o.status == 200 for o in outcomes), [(o.status, o.body) for o in outcomes]
        for o in outcomes:
            assert o.body["diagnosis"] in ("Normal", "Abnormal")
            if o.body["detections"] is None:
                assert any(DETECTION_UNAVAILABLE in w for w in o.body["warnings"]), o.body
        after = [o for o in outcomes if o.started_after_fault]
        assert after and all(o.body["detections"] is None for o in after)
        _wait_health(gateway.url, "degraded")
        assert httpx.get(f"{gateway.url}/readyz").status_code == 200

        from spine.triton.server import TritonServer

        again = TritonServer(triton_repo, ports=server.ports, log_path=tmp_path / "again.log",
                             settings=_settings(tmp_path / "killed" / "cache"))
        again.start()
        again.wait_ready()
        try:
            _wait_health(gateway.url, "healthy")
            # detections come back once the ejected replica is tried again (the breaker)
            deadline, body = time.monotonic() + 30, {}
            while time.monotonic() < deadline:
                body = upload(gateway.url, dicom).json()
                if body.get("detections") is not None:
                    break
                time.sleep(1)
            assert body.get("detections") is not None, body
        finally:
            again.stop()
    finally:
        gateway.stop()
        server.kill()


def test_triton_for_both_models_killed_is_a_503(
    triton_repo: Path, dicom: bytes, tmp_path: Path
) -> None:
    """With Triton serving the classifier too, its death leaves no diagnosis: 503, and
    Triton's /v2/health/ready (through the model's ready endpoint) drives our /readyz."""
    server = start_triton(triton_repo, tmp_path / "both")
    gateway = start_gateway(tmp_path / "gw", server.url, server.url)
    try:
        assert upload(gateway.url, dicom).status_code == 200
        server.kill()
        response = upload(gateway.url, dicom)
        assert response.status_code == 503, response.text
        assert "classifier" in response.json()["message"]
        assert response.headers["Retry-After"].isdigit()
        _wait_readyz(gateway.url, 503)

        from spine.triton.server import TritonServer

        again = TritonServer(triton_repo, ports=server.ports, log_path=tmp_path / "again.log",
                             settings=_settings(tmp_path / "both" / "cache"))
        again.start()
        again.wait_ready()
        try:
            _wait_readyz(gateway.url, 200)
            assert upload(gateway.url, dicom).status_code == 200
        finally:
            again.stop()
    finally:
        gateway.stop()
        server.kill()


def _settings(cache: Path):  # type: ignore[no-untyped-def]
    from shared.settings import CliSettings

    return CliSettings(spine_cache_dir=cache)
