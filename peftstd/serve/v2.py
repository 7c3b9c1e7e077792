"""KServe's Open Inference Protocol (V2) over REST, with Triton's binary tensor extension, so that stock
`tritonclient.http` works unmodified: a request or response body may be a JSON header of
`Inference-Header-Content-Length` bytes followed by the raw bytes of the tensors that carry
`parameters.binary_data_size` (BYTES elements as a 4-byte little-endian length and the bytes).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np

HEADER = "Inference-Header-Content-Length"
DTYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
          "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}


class ProtocolError(ValueError):
    """A V2 request that does not follow the protocol (shape, datatype, binary sizes): a 400."""


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray | list  # BYTES: a flat list of bytes


def decode_bytes(raw: bytes, count: int) -> list[bytes]:
    out, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ProtocolError("BYTES tensor data ends inside an element's 4-byte length")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise ProtocolError("a BYTES element is longer than the data sent")
        out.append(raw[offset : offset + size])
        offset += size
    if len(out) != count:
        raise ProtocolError(f"BYTES tensor holds {len(out)} elements, its shape says {count}")
    return out


def encode_bytes(values: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def parse_request(body: bytes, header_length: str | None) -> tuple[dict, list[Tensor]]:
    """The request's JSON header and its input tensors."""
    if header_length is not None:
        try:
            size = int(header_length)
        except ValueError:
            raise ProtocolError(f"{HEADER} must be an integer, got {header_length!r}") from None
        if not 0 < size <= len(body):
            raise ProtocolError(f"{HEADER} {size} is outside the body's {len(body)} bytes")
        head, binary = body[:size], body[size:]
    else:
        head, binary = body, b""
    try:
        request = json.loads(head)
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError("the request header is not valid JSON") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise ProtocolError("a V2 infer request needs a non-empty 'inputs' list")
    tensors, offset = [], 0
    for spec in request["inputs"]:
        if not isinstance(spec, dict):
            raise ProtocolError("each input must be an object with name, shape, datatype and data")
        name, datatype, shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
        if not isinstance(name, str) or datatype not in (*DTYPES, "BYTES"):
            raise ProtocolError(f"input {name!r}: datatype must be one of {', '.join([*DTYPES, 'BYTES'])}, got {datatype!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise ProtocolError(f"input {name!r}: shape must be a list of non-negative integers, got {shape!r}")
        count = int(np.prod(shape)) if shape else 1
        size = (spec.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise ProtocolError(f"input {name!r}: binary_data_size {size!r} runs past the body")
            raw, offset = binary[offset : offset + size], offset + size
            if datatype == "BYTES":
                data = decode_bytes(raw, count)
            else:
                if size != count * np.dtype(DTYPES[datatype]).itemsize:
                    raise ProtocolError(f"input {name!r}: {size} bytes do not hold shape {shape} of {datatype}")
                data = np.frombuffer(raw, dtype=np.dtype(DTYPES[datatype]).newbyteorder("<")).reshape(shape)
        else:
            data = spec.get("data")
            if data is None:
                raise ProtocolError(f"input {name!r} has neither data nor binary_data_size")
            data = flatten(data)
            if len(data) != count:
                raise ProtocolError(f"input {name!r}: {len(data)} values do not fill shape {shape}")
            if datatype == "BYTES":
                if not all(isinstance(v, str) for v in data):
                    raise ProtocolError(f"input {name!r}: BYTES data must be strings in JSON")
                data = [v.encode("utf-8") for v in data]
            else:
                try:
                    data = np.asarray(data, dtype=DTYPES[datatype]).reshape(shape)
                except (TypeError, ValueError):
                    raise ProtocolError(f"input {name!r}: data is not {datatype}") from None
        tensors.append(Tensor(name, datatype, shape, data))
    return request, tensors


def flatten(data) -> list:
    if isinstance(data, list):
        return [v for item in data for v in flatten(item)] if data and isinstance(data[0], list) else list(data)
    return [data]


def wants_binary(request: dict, name: str) -> bool:
    for spec in request.get("outputs") or []:
        if isinstance(spec, dict) and spec.get("name") == name:
            return bool((spec.get("parameters") or {}).get("binary_data", False))
    return bool((request.get("parameters") or {}).get("binary_data_output", False))


def encode_response(model: str, request: dict, outputs: list[Tensor]) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers; outputs asked for as binary go behind the JSON header."""
    asked = [spec.get("name") for spec in request.get("outputs") or [] if isinstance(spec, dict)]
    if asked:
        unknown = [name for name in asked if name not in {o.name for o in outputs}]
        if unknown:
            raise ProtocolError(f"unknown output {unknown[0]!r}; outputs: {', '.join(o.name for o in outputs)}")
        outputs = [o for o in outputs if o.name in asked]
    specs, chunks = [], []
    for tensor in outputs:
        spec = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if wants_binary(request, tensor.name):
            raw = encode_bytes(tensor.data) if tensor.datatype == "BYTES" else np.ascontiguousarray(tensor.data).astype(
                np.dtype(DTYPES[tensor.datatype]).newbyteorder("<")).tobytes()
            spec["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            spec["data"] = ([v.decode("utf-8") for v in tensor.data] if tensor.datatype == "BYTES"
                            else np.asarray(tensor.data).reshape(-1).tolist())
        specs.append(spec)
    body = {"model_name": model, "model_version": "1", "outputs": specs}
    if "id" in request:
        body["id"] = request["id"]
    head = json.dumps(body).encode()
    if not chunks:
        return head, {"content-type": "application/json"}
    return head + b"".join(chunks), {"content-type": "application/octet-stream", HEADER: str(len(head))}
