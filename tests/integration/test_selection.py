"""Input selection through the real gateway: the real chest and tibia CR files of pydicom-data
are refused with 422 naming the body part, a spine phantom is accepted and names its rule,
and the operator's switches (INPUT_SELECTION=off, INPUT_SELECTION_RULES) do what they say.

Besides the session stack (default rules), two more gateways share its model services:
one with INPUT_SELECTION=off, one with a custom rules file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydicom.data import get_testdata_file

from tests.factories import make_dicom, radiograph_pixels
from tests.integration.stack import Service, base_env, start_service, wait_ready
from training.dicom_writer import file_bytes

pytestmark = pytest.mark.timeout(300)

NOT_STATED = "Body part not stated"
CUSTOM_RULES = """\
# a site that also takes Secondary Captures, but only when the body part is stated
sop_classes:
  secondary_capture: true
body_part:
  when_not_stated: refuse
"""


def _pydicom_file(name: str) -> bytes:
    return Path(get_testdata_file(name)).read_bytes()


@pytest.fixture(scope="module")
def chest() -> bytes:
    return _pydicom_file("RG1_J2KR.dcm")  # CR, BodyPartExamined CHEST, StudyDescription THORAX


@pytest.fixture(scope="module")
def tibia() -> bytes:
    return _pydicom_file("RG3_UNCR.dcm")  # CR, BodyPartExamined EXTREMITY (a distal tibia)


@pytest.fixture(scope="module")
def phantom() -> bytes:
    """A training phantom as `spine phantoms` writes it (DX, BodyPartExamined LSPINE)."""
    from training.phantoms.files import phantom_dataset, phantom_item
    from training.phantoms.image import render_spec

    item = phantom_item(seed=7, split="test", index=0)
    display, _ = render_spec(item.spec)
    return file_bytes(phantom_dataset(item, display, 7, "test"))


@pytest.fixture(scope="module")
def unstated() -> bytes:
    return make_dicom(radiograph_pixels(600, 400, seed=5), body_part=None)


@pytest.fixture(scope="module")
def secondary_capture() -> bytes:
    return make_dicom(radiograph_pixels(600, 400, seed=6), modality="OT")  # LSPINE, SC class


def _gateway(stack, tmp: Path, **overrides: str) -> Iterator[str]:
    env = base_env(
        tmp, CLASSIFIER_URLS=stack.classifier, DETECTOR_URLS=stack.detector, **overrides
    )
    service: Service = start_service("gateway", env, tmp)
    try:
        wait_ready(service)
        yield service.url
    finally:
        service.stop()


@pytest.fixture(scope="module")
def gateway_off(stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _gateway(stack, tmp_path_factory.mktemp("gateway-off"), INPUT_SELECTION="off")


@pytest.fixture(scope="module")
def gateway_custom(stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("gateway-custom")
    rules = tmp / "rules.yaml"
    rules.write_text(CUSTOM_RULES)
    yield from _gateway(stack, tmp, INPUT_SELECTION_RULES=str(rules))


def post(url: str, data: bytes, route: str = "/upload") -> httpx.Response:
    return httpx.post(
        f"{url}{route}", files={"file": ("x.dcm", data, "application/dicom")},
        params={"annotate": "false"} if route == "/upload" else None, timeout=120,
    )


def assert_refused(response: httpx.Response, start: str, rule: str) -> None:
    assert response.status_code == 422, response.text
    body = response.json()
    assert set(body) == {"status", "message", "request_id"}
    assert body["status"] == "error" and body["request_id"] == response.headers["X-Request-ID"]
    assert body["message"].startswith(f"not a spine radiograph: {start}"), body["message"]
    assert f"input selection rule: {rule}" in body["message"]


def accepted(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def test_the_real_chest_and_tibia_are_refused_naming_the_body_part(
    stack, chest: bytes, tibia: bytes
) -> None:
    for route in ("/upload", "/preview"):
        assert_refused(post(stack.gateway, chest, route), "BodyPartExamined is CHEST", "body_part")
        assert_refused(
            post(stack.gateway, tibia, route), "BodyPartExamined is EXTREMITY", "body_part"
        )


def test_a_spine_phantom_is_accepted_and_names_its_rule(stack, phantom: bytes) -> None:
    body = accepted(post(stack.gateway, phantom))
    assert body["input_selection"] == {
        "rule": "body_part", "accepted_by": "BodyPartExamined is LSPINE", "warnings": [],
    }
    assert not any(w.startswith(NOT_STATED) for w in body["warnings"])
    assert post(stack.gateway, phantom, "/preview").status_code == 200


def test_no_body_part_is_accepted_with_the_warning(stack, unstated: bytes) -> None:
    body = accepted(post(stack.gateway, unstated))
    selection = body["input_selection"]
    assert selection["rule"] == "body_part_not_stated"
    assert len(selection["warnings"]) == 1 and selection["warnings"][0].startswith(NOT_STATED)
    assert selection["warnings"][0] in body["warnings"]
    preview = post(stack.gateway, unstated, "/preview")
    assert preview.status_code == 200 and NOT_STATED in preview.headers["X-Warnings"]


def test_secondary_capture_and_tiny_images_are_refused_by_default(
    stack, secondary_capture: bytes
) -> None:
    assert_refused(
        post(stack.gateway, secondary_capture),
        "SOP Class is Secondary Capture Image Storage, accepted only with secondary_capture: "
        "true in INPUT_SELECTION_RULES", "sop_class",
    )
    tiny = make_dicom(np.full((16, 16), 1000, np.uint16))
    for route in ("/upload", "/preview"):
        assert_refused(
            post(stack.gateway, tiny, route), "the image is 16x16 pixels, smaller than the "
            "128x128 minimum", "image_size",
        )


def test_input_selection_off_analyses_the_chest(gateway_off: str, chest: bytes) -> None:
    body = accepted(post(gateway_off, chest))
    assert body["input_selection"] is None
    assert body["metadata"]["modality"] == "CR"
    assert post(gateway_off, chest, "/preview").status_code == 200


def test_a_custom_rules_file_is_applied(
    gateway_custom: str, secondary_capture: bytes, unstated: bytes, chest: bytes
) -> None:
    body = accepted(post(gateway_custom, secondary_capture))
    assert body["input_selection"]["accepted_by"] == "BodyPartExamined is LSPINE"
    assert_refused(
        post(gateway_custom, unstated), "the header names no body part", "body_part_not_stated"
    )
    # what the file does not name keeps the default
    assert_refused(post(gateway_custom, chest), "BodyPartExamined is CHEST", "body_part")


def test_a_broken_rules_file_stops_the_gateway(stack, tmp_path: Path) -> None:
    rules = tmp_path / "broken.yaml"
    rules.write_text("min_rows: -1\n")
    env = base_env(tmp_path, INPUT_SELECTION_RULES=str(rules), CLASSIFIER_URLS=stack.classifier)
    service = start_service("gateway", env, tmp_path)
    try:
        with pytest.raises(RuntimeError, match="exited"):
            wait_ready(service, timeout_s=120)
        assert "min_rows" in service.log_text() and str(rules) in service.log_text()
    finally:
        service.stop()
