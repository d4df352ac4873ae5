"""Open Inference Protocol (KServe v2 REST) codec: JSON tensors and the binary extension.

Both model services and the gateway use this one module, so the wire format is defined
once. It follows the KServe v2 protocol and Triton's binary tensor data extension:
the body is a JSON header, optionally followed by raw little-endian tensor bytes; the
header's length is sent in ``Inference-Header-Content-Length``. Triton's own
``tritonclient.http`` can therefore talk to our services.
"""

from __future__ import annotations

import json
import struct
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

HEADER_LENGTH = "Inference-Header-Content-Length"

_NUMPY_BY_DATATYPE: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_DATATYPE_BY_KIND = {dtype.newbyteorder("="): name for name, dtype in _NUMPY_BY_DATATYPE.items()}


class OipError(ValueError):
    """A request that does not follow the protocol; the services answer it with 400."""


M = TypeVar("M", bound=BaseModel)
Tensors = dict[str, np.ndarray]  # named tensors of one request or response


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    """``GET /v2/models/{name}``; ``parameters`` carries bundle facts (our addition)."""

    name: str
    versions: list[str] = Field(default_factory=lambda: ["1"])
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] = Field(default_factory=dict)


class TensorData(BaseModel):
    """One tensor of an infer request or response: JSON ``data`` or a binary part."""

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: list[Any] | None = None


class RequestInput(TensorData):
    model_config = ConfigDict(extra="allow")


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferenceRequest(BaseModel):
    """The JSON part of ``POST /v2/models/{name}/infer``."""

    model_config = ConfigDict(extra="allow")
    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(TensorData):
    pass


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = "1"
    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    outputs: list[ResponseOutput]


def datatype_of(array: np.ndarray) -> str:
    """The v2 datatype name of a numpy array (``BYTES`` for object/str arrays)."""
    if array.dtype.kind in ("O", "S", "U"):
        return "BYTES"
    try:
        return _DATATYPE_BY_KIND[array.dtype.newbyteorder("=")]
    except KeyError as exc:
        raise OipError(f"no v2 datatype for numpy dtype {array.dtype}") from exc


def _element_count(shape: list[int]) -> int:
    if any(dim < 0 for dim in shape):
        raise OipError(f"negative dimension in shape {shape}")
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


def _array_from_bytes(raw: bytes | memoryview, datatype: str, shape: list[int]) -> np.ndarray:
    count = _element_count(shape)
    if datatype == "BYTES":
        items: list[bytes] = []
        offset = 0
        view = memoryview(raw)
        while offset < len(view):
            if offset + 4 > len(view):
                raise OipError("truncated BYTES tensor")
            (length,) = struct.unpack_from("<I", view, offset)
            offset += 4
            items.append(bytes(view[offset : offset + length]))
            offset += length
        if len(items) != count:
            raise OipError(f"BYTES tensor has {len(items)} elements, shape says {count}")
        return np.array(items, dtype=object).reshape(shape)
    dtype = _NUMPY_BY_DATATYPE.get(datatype)
    if dtype is None:
        raise OipError(f"unsupported datatype {datatype!r}")
    if len(raw) != count * dtype.itemsize:
        raise OipError(
            f"tensor data is {len(raw)} bytes, shape {shape} of {datatype} needs "
            f"{count * dtype.itemsize}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _array_from_json(data: list[Any], datatype: str, shape: list[int]) -> np.ndarray:
    count = _element_count(shape)
    if datatype == "BYTES":
        flat = np.array(
            [item.encode() if isinstance(item, str) else item for item in _flatten(data)],
            dtype=object,
        )
    else:
        dtype = _NUMPY_BY_DATATYPE.get(datatype)
        if dtype is None:
            raise OipError(f"unsupported datatype {datatype!r}")
        try:
            flat = np.asarray(data, dtype=dtype).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise OipError(f"tensor data is not valid {datatype}: {exc}") from exc
    if flat.size != count:
        raise OipError(f"tensor has {flat.size} elements, shape {shape} needs {count}")
    return flat.reshape(shape)


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, list):
        return [leaf for item in data for leaf in _flatten(item)]
    return [data]


def _array_to_bytes(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for item in array.reshape(-1):
            value = item.encode() if isinstance(item, str) else bytes(item)
            parts.append(struct.pack("<I", len(value)) + value)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=_NUMPY_BY_DATATYPE[datatype]).tobytes()


def _array_to_json(array: np.ndarray, datatype: str) -> list[Any]:
    if datatype == "BYTES":
        return [
            item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
            for item in array.reshape(-1)
        ]
    return array.reshape(-1).tolist()


def _split_body(body: bytes, header_length: int | None) -> tuple[dict[str, Any], memoryview]:
    if header_length is None:
        header_bytes, rest = body, b""
    else:
        if header_length < 0 or header_length > len(body):
            raise OipError(f"{HEADER_LENGTH} {header_length} exceeds body of {len(body)} bytes")
        header_bytes, rest = body[:header_length], body[header_length:]
    try:
        header = json.loads(header_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OipError(f"inference header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise OipError("inference header must be a JSON object")
    return header, memoryview(rest)


def _tensors_from(
    items: list[RequestInput] | list[ResponseOutput], binary: memoryview
) -> dict[str, np.ndarray]:
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for item in items:
        size = item.parameters.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise OipError(f"binary_data_size of {item.name!r} exceeds the binary payload")
            tensors[item.name] = _array_from_bytes(
                binary[offset : offset + size], item.datatype, item.shape
            )
            offset += size
        elif item.data is not None:
            tensors[item.name] = _array_from_json(item.data, item.datatype, item.shape)
        else:
            raise OipError(f"tensor {item.name!r} has neither data nor binary_data_size")
    if offset != len(binary):
        raise OipError(f"{len(binary) - offset} unclaimed bytes after the tensors")
    return tensors


def decode_request(body: bytes, header_length: int | None) -> tuple[InferenceRequest, Tensors]:
    """Parse an infer request body into its header and named numpy tensors."""
    request, binary = _validate(body, header_length, InferenceRequest, "request")
    return request, _tensors_from(request.inputs, binary)


def _validate(
    body: bytes, header_length: int | None, model: type[M], what: str
) -> tuple[M, memoryview]:
    """The body's JSON header as ``model``, and the binary tensor data that follows it."""
    header, binary = _split_body(body, header_length)
    try:
        return model.model_validate(header), binary
    except ValueError as exc:
        raise OipError(f"invalid inference {what}: {exc}") from exc


def wants_binary(request: InferenceRequest, output_name: str) -> bool:
    """Whether the client asked for ``output_name`` in binary form."""
    if request.outputs:
        for output in request.outputs:
            if output.name == output_name and "binary_data" in output.parameters:
                return bool(output.parameters["binary_data"])
    return bool(request.parameters.get("binary_data_output", False))


def _encode(header: dict[str, Any], blobs: list[bytes]) -> tuple[bytes, dict[str, str]]:
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    if not blobs:
        return header_bytes, {"Content-Type": "application/json"}
    headers = {
        "Content-Type": "application/octet-stream",
        HEADER_LENGTH: str(len(header_bytes)),
    }
    return header_bytes + b"".join(blobs), headers


def _tensor_items(
    arrays: dict[str, np.ndarray], binary: set[str]
) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Tensor descriptions for a header, and the raw blobs of those sent in binary."""
    items: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, array in arrays.items():
        datatype = datatype_of(array)
        item: dict[str, Any] = {"name": name, "shape": list(array.shape), "datatype": datatype}
        if name in binary:
            blob = _array_to_bytes(array, datatype)
            item["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            item["data"] = _array_to_json(array, datatype)
        items.append(item)
    return items, blobs


def encode_response(
    model_name: str,
    outputs: dict[str, np.ndarray],
    *,
    request_id: str | None,
    binary: set[str],
    parameters: dict[str, Any] | None = None,
    model_version: str = "1",
) -> tuple[bytes, dict[str, str]]:
    """Build an infer response body; outputs named in ``binary`` travel as raw bytes."""
    items, blobs = _tensor_items(outputs, binary)
    header = {
        "model_name": model_name,
        "model_version": model_version,
        "id": request_id,
        "parameters": parameters or {},
        "outputs": items,
    }
    return _encode(header, blobs)


def encode_request(
    inputs: dict[str, np.ndarray],
    *,
    outputs: list[str],
    request_id: str | None = None,
    binary: bool = True,
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Build an infer request body (binary inputs, binary outputs requested by default)."""
    items, blobs = _tensor_items(inputs, set(inputs) if binary else set())
    header: dict[str, Any] = {
        "inputs": items,
        "outputs": [{"name": name, "parameters": {"binary_data": binary}} for name in outputs],
        "parameters": parameters or {},
    }
    if request_id is not None:
        header["id"] = request_id
    return _encode(header, blobs)


def decode_response(body: bytes, header_length: int | None) -> tuple[InferenceResponse, Tensors]:
    """Parse an infer response body into its header and named numpy tensors."""
    response, binary = _validate(body, header_length, InferenceResponse, "response")
    return response, _tensors_from(response.outputs, binary)
