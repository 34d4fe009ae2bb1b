"""OIP HTTP infer bodies <-> the v2 gRPC messages, so HTTP inference runs the one v2 path (serving.api.v2_infer).

Request: a JSON object, optionally followed by binary tensor data (the binary-data extension: the
`Inference-Header-Content-Length` header gives the JSON's length, each binary input says its
`binary_data_size`, their bytes follow in input order). JSON `data` (a flat or nested list) becomes
the same raw bytes a gRPC client would send, so the codec checks both alike. Response: each output as
JSON `data`, or as binary data after the JSON when the request asked (`binary_data` per output,
`binary_data_output` for all), or nothing at all when it went to shared memory.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from contract.v2_codec import DATATYPES, decode_raw, encode_raw
from protos.inference import grpc_service_pb2 as pb
from serving.api.v2_infer import SHM_REGION
from serving.errors import InvalidArgument

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_SIZE = "binary_data_size"
_HTTP_ONLY = {"binary_data", "binary_data_output", BINARY_SIZE}


@dataclass(frozen=True)
class OutputFormat:
    """Which outputs the response carries as binary data: `default` unless named in `overrides`."""

    default: bool
    overrides: Mapping[str, bool]

    def binary(self, name: str) -> bool:
        return self.overrides.get(name, self.default)


def parse_json(text: bytes, what: str) -> Any:
    """A JSON document, or InvalidArgument naming `what` was not JSON."""
    try:
        return json.loads(text) if text.strip() else {}
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidArgument(f"{what} is not valid JSON: {error}") from None


def infer_request(
    model: str, version: str, body: bytes, header_length: str | None
) -> tuple[pb.ModelInferRequest, OutputFormat]:
    """The ModelInferRequest an HTTP infer body describes, and how to format its response."""
    split = _header_length(header_length, len(body))
    document = _object(parse_json(body[:split], "the inference request"), "the inference request")
    binary = memoryview(body)[split:]
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=str(document.get("id", "")))
    parameters = _object(document.get("parameters", {}), "parameters")
    _set_parameters(request.parameters, parameters, "request")
    used = 0
    for tensor in _list(document.get("inputs"), "inputs"):
        used += _add_input(request, _object(tensor, "each input"), binary[used:])
    if used != len(binary):
        raise InvalidArgument(f"{len(binary) - used} bytes of binary data follow the inputs' binary_data_size total")
    overrides = {}
    for output in _list(document.get("outputs", []), "outputs"):
        output = _object(output, "each output")
        wanted = request.outputs.add(name=str(output.get("name", "")))
        output_parameters = _object(output.get("parameters", {}), f"output '{wanted.name}' parameters")
        _set_parameters(wanted.parameters, output_parameters, f"output '{wanted.name}'")
        if "binary_data" in output_parameters:
            overrides[wanted.name] = output_parameters["binary_data"] is True
    return request, OutputFormat(parameters.get("binary_data_output") is True, overrides)


def infer_response(response: pb.ModelInferResponse, output_format: OutputFormat) -> tuple[bytes, int | None]:
    """The HTTP body of a response, and the JSON part's length when binary data follows (else None)."""
    outputs, binary = [], []
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        described: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if SHM_REGION in tensor.parameters:
            described["parameters"] = {key: _parameter_value(value) for key, value in tensor.parameters.items()}
        elif output_format.binary(tensor.name):
            described["parameters"] = {BINARY_SIZE: len(raw)}
            binary.append(raw)
        else:
            described["data"] = _json_data(tensor, raw)
        outputs.append(described)
    document: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        document["id"] = response.id
    document["outputs"] = outputs
    header = json.dumps(document, separators=(",", ":")).encode()
    if not binary:
        return header, None
    return b"".join([header, *binary]), len(header)


def _header_length(value: str | None, body_length: int) -> int:
    if value is None:
        return body_length
    if not value.isdigit() or int(value) > body_length:
        raise InvalidArgument(f"{HEADER_LENGTH} must be a byte count within the {body_length}-byte body, got '{value}'")
    return int(value)


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be a JSON object")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidArgument(f"'{what}' must be a JSON list")
    return value


def _add_input(request: pb.ModelInferRequest, tensor: dict[str, Any], binary: memoryview) -> int:
    """Append one input (raw bytes from JSON data, from the binary section, or none for shared memory);
    returns how many binary bytes it used."""
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    if not isinstance(name, str) or not isinstance(datatype, str):
        raise InvalidArgument("each input needs a string 'name' and 'datatype'")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise InvalidArgument(f"input '{name}': 'shape' must be a list of integers")
    added = request.inputs.add(name=name, datatype=datatype, shape=shape)
    parameters = _object(tensor.get("parameters", {}), f"input '{name}' parameters")
    _set_parameters(added.parameters, parameters, f"input '{name}'")
    if SHM_REGION in parameters:
        return 0
    if BINARY_SIZE in parameters:
        size = parameters[BINARY_SIZE]
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= len(binary):
            raise InvalidArgument(f"input '{name}': binary_data_size {size!r} exceeds the {len(binary)} bytes left")
        request.raw_input_contents.append(bytes(binary[:size]))
        return size
    if "data" not in tensor:
        raise InvalidArgument(f"input '{name}': no data; send 'data', binary data or a shared memory region")
    request.raw_input_contents.append(_raw_from_json(name, datatype, tensor["data"]))
    return 0


def _raw_from_json(name: str, datatype: str, data: Any) -> bytes:
    kind = DATATYPES.get(datatype)
    if kind is None:
        raise InvalidArgument(f"input '{name}': unknown datatype '{datatype}'; use one of {sorted(DATATYPES)}")
    try:
        flat = np.asarray(data, dtype=object if datatype == "BYTES" else kind.compute).reshape(-1)
    except (ValueError, TypeError, OverflowError):
        raise InvalidArgument(f"input '{name}': 'data' is not a flat or nested list of {datatype} values") from None
    if datatype == "BYTES" and not all(isinstance(item, str) for item in flat):
        raise InvalidArgument(f"input '{name}': BYTES data in JSON must be strings; send other bytes as binary data")
    return encode_raw(flat, datatype)


def _json_data(tensor: pb.ModelInferResponse.InferOutputTensor, raw: bytes) -> list[Any]:
    flat = decode_raw(tensor.name, DATATYPES[tensor.datatype], raw, math.prod(tensor.shape))
    if tensor.datatype != "BYTES":
        return list(flat.tolist())
    try:
        return [bytes(item).decode() for item in flat]
    except UnicodeDecodeError:
        raise InvalidArgument(f"output '{tensor.name}' is not UTF-8 text; request it as binary data") from None


def _set_parameters(target: Any, parameters: Mapping[str, Any], what: str) -> None:
    """JSON parameters -> InferParameter map entries (bool, int64, double or string); HTTP-only ones stay here."""
    for key, value in parameters.items():
        if key in _HTTP_ONLY:
            continue
        slot = target[key]
        if isinstance(value, bool):
            slot.bool_param = value
        elif isinstance(value, int):
            slot.int64_param = value
        elif isinstance(value, float):
            slot.double_param = value
        elif isinstance(value, str):
            slot.string_param = value
        else:
            raise InvalidArgument(f"{what}: parameter '{key}' must be a boolean, number or string")


def _parameter_value(parameter: pb.InferParameter) -> Any:
    choice = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, choice) if choice else None
