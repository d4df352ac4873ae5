from __future__ import annotations

import json

import numpy as np
import pytest

from shared import oip


@pytest.mark.parametrize("binary", [True, False])
def test_request_round_trip(binary: bool) -> None:
    image = np.arange(2 * 1 * 5 * 4, dtype=np.uint8).reshape(2, 1, 5, 4)
    scale = np.array([[0.5, 1.5]], dtype=np.float32)
    body, headers = oip.encode_request(
        {"IMAGE": image, "SCALE": scale}, outputs=["out"], request_id="r1", binary=binary
    )
    length = headers.get(oip.HEADER_LENGTH)
    request, tensors = oip.decode_request(body, int(length) if length else None)
    assert request.id == "r1"
    np.testing.assert_array_equal(tensors["IMAGE"], image)
    np.testing.assert_array_equal(tensors["SCALE"], scale)
    assert oip.wants_binary(request, "out") is binary


def test_response_round_trip_mixed_binary_and_json() -> None:
    outputs = {
        "boxes": np.ones((1, 3, 4), dtype=np.float32),
        "count": np.array([[3]], dtype=np.int32),
        "flag": np.array([[True]]),
        "names": np.array([b"a", b"bc"], dtype=object),
    }
    body, headers = oip.encode_response(
        "m", outputs, request_id="x", binary={"boxes", "names"}, parameters={"k": 1}
    )
    response, tensors = oip.decode_response(body, int(headers[oip.HEADER_LENGTH]))
    assert response.parameters == {"k": 1}
    for name, array in outputs.items():
        np.testing.assert_array_equal(tensors[name], array)


def test_json_only_response_has_no_header_length() -> None:
    body, headers = oip.encode_response("m", {"x": np.zeros((1,), np.float32)}, request_id=None, binary=set())
    assert oip.HEADER_LENGTH not in headers
    assert json.loads(body)["outputs"][0]["data"] == [0.0]


@pytest.mark.parametrize(
    ("body", "length", "match"),
    [
        (b"not json", None, "JSON"),
        (b"[1,2]", None, "object"),
        (json.dumps({"inputs": [{"name": "a", "shape": [2], "datatype": "UINT8", "data": [1]}]}).encode(), None, "elements"),
        (json.dumps({"inputs": [{"name": "a", "shape": [4], "datatype": "UINT8", "parameters": {"binary_data_size": 4}}]}).encode() + b"\0\0", "header", "exceeds"),
        (json.dumps({"inputs": [{"name": "a", "shape": [1], "datatype": "WEIRD", "data": [1]}]}).encode(), None, "datatype"),
        (json.dumps({"inputs": [{"name": "a", "shape": [-1], "datatype": "UINT8", "data": []}]}).encode(), None, "negative"),
        (b"{}", 999, "exceeds"),
    ],
)
def test_malformed_requests_raise_oip_error(body: bytes, length: object, match: str) -> None:
    header_length = len(body) - 2 if length == "header" else length
    with pytest.raises(oip.OipError, match=match):
        oip.decode_request(body, header_length)  # type: ignore[arg-type]
