"""OIP HTTP infer bodies <-> v2 messages, without a server: JSON data of every kind, binary data, the
split header, and refusals that name the problem."""

from __future__ import annotations

import json

import numpy as np
import pytest

from contract.v2_codec import DATATYPES, decode_raw, encode_raw
from protos.inference import grpc_service_pb2 as pb
from serving.api.http_infer import OutputFormat, infer_request, infer_response
from serving.errors import InvalidArgument


def _raw_values(request: pb.ModelInferRequest, index: int) -> list:
    tensor = request.inputs[index]
    count = int(np.prod(tensor.shape))
    return decode_raw(tensor.name, DATATYPES[tensor.datatype], request.raw_input_contents[index], count).tolist()


@pytest.mark.parametrize(
    ("datatype", "data", "expected"),
    [
        ("FP32", [[1.5, -2.0], [0.25, 4.0]], [1.5, -2.0, 0.25, 4.0]),
        ("FP16", [0.5, 2.0, -1.0, 8.0], [0.5, 2.0, -1.0, 8.0]),
        ("BF16", [1.0, -0.5, 3.0, 256.0], [1.0, -0.5, 3.0, 256.0]),
        ("INT64", [1, -2, 3, 2**40], [1, -2, 3, 2**40]),
        ("BOOL", [True, False, False, True], [True, False, False, True]),
        ("BYTES", ["a", "bé", "", "d"], [b"a", "bé".encode(), b"", b"d"]),
    ],
)
def test_json_data_becomes_the_raw_bytes_a_grpc_client_sends(datatype: str, data: list, expected: list) -> None:
    body = json.dumps({"inputs": [{"name": "x", "datatype": datatype, "shape": [2, 2], "data": data}]}).encode()
    request, _ = infer_request("m", "", body, None)
    assert _raw_values(request, 0) == expected


def test_binary_inputs_follow_the_json_header_in_order() -> None:
    first, second = np.arange(4, dtype=np.int32), np.array([7.0], dtype=np.float32)
    header = json.dumps({"id": "r1", "inputs": [
        {"name": "a", "datatype": "INT32", "shape": [4], "parameters": {"binary_data_size": 16}},
        {"name": "b", "datatype": "FP32", "shape": [1], "data": [7.0]},
        {"name": "c", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 4}},
    ], "outputs": [{"name": "y", "parameters": {"binary_data": False, "classification": 2}}],
        "parameters": {"binary_data_output": True}}).encode()
    body = header + first.tobytes() + second.tobytes()
    request, output_format = infer_request("m", "3", body, str(len(header)))
    assert (request.model_name, request.model_version, request.id) == ("m", "3", "r1")
    assert _raw_values(request, 0) == [0, 1, 2, 3] and _raw_values(request, 1) == [7.0] == _raw_values(request, 2)
    assert request.outputs[0].parameters["classification"].int64_param == 2
    assert "binary_data" not in request.outputs[0].parameters  # HTTP presentation stays in the HTTP layer
    assert not output_format.binary("y") and output_format.binary("z")


@pytest.mark.parametrize(
    ("body", "header_length", "message"),
    [
        (b"[1, 2]", None, "must be a JSON object"),
        (b'{"inputs": {}}', None, "'inputs' must be a JSON list"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": ["2"]}]}', None, "list of integers"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2]}]}', None, "no data"),
        (b'{"inputs": [{"name": "x", "datatype": "FP99", "shape": [1], "data": [1]}]}', None, "unknown datatype"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [[1], [2, 3]]}]}', None,
         "not a flat or nested list of FP32"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1],'
         b' "parameters": {"p": [1]}}]}', None, "parameter 'p' must be a boolean, number or string"),
        (b'{"inputs": []}xyz', "14", "3 bytes of binary data follow"),
        (b"{}", "99", "must be a byte count within the 2-byte body"),
        (b"{}", "-1", "must be a byte count"),
    ],
)
def test_malformed_bodies_are_refused_with_what_is_wrong(body: bytes, header_length: str | None, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        infer_request("m", "", body, header_length)


def test_responses_carry_json_data_binary_data_or_shared_memory_parameters() -> None:
    response = pb.ModelInferResponse(model_name="m", model_version="1", id="r1")
    logits = np.array([[0.5, 1.5]], dtype=np.float32)
    for name, datatype, raw in (("j", "FP32", encode_raw(logits, "FP32")), ("b", "FP32", encode_raw(logits, "FP32")),
                                ("s", "BYTES", encode_raw(np.array(["x", "yz"], dtype=object), "BYTES"))):
        response.outputs.add(name=name, datatype=datatype, shape=[1, 2])
        response.raw_output_contents.append(raw)
    shm = response.outputs.add(name="m", datatype="FP32", shape=[1, 2])
    shm.parameters["shared_memory_region"].string_param = "out"
    shm.parameters["shared_memory_byte_size"].int64_param = 8
    response.raw_output_contents.append(b"")
    body, header_length = infer_response(response, OutputFormat(False, {"b": True}))
    assert header_length is not None
    document = json.loads(body[:header_length])
    outputs = {o["name"]: o for o in document["outputs"]}
    assert document["id"] == "r1" and outputs["j"]["data"] == [0.5, 1.5] and outputs["s"]["data"] == ["x", "yz"]
    assert outputs["b"]["parameters"] == {"binary_data_size": 8} and body[header_length:] == logits.tobytes()
    assert outputs["m"]["parameters"] == {"shared_memory_region": "out", "shared_memory_byte_size": 8}
    assert "data" not in outputs["m"]
    only_json, no_split = infer_response(response, OutputFormat(False, {}))
    assert no_split is None and json.loads(only_json)["outputs"][1]["data"] == [0.5, 1.5]


def test_a_bytes_output_that_is_not_text_must_be_asked_for_as_binary() -> None:
    response = pb.ModelInferResponse(model_name="m", model_version="1")
    response.outputs.add(name="png", datatype="BYTES", shape=[1])
    response.raw_output_contents.append(encode_raw(np.array([b"\x89PNG\xff"], dtype=object), "BYTES"))
    with pytest.raises(InvalidArgument, match="output 'png' is not UTF-8 text; request it as binary data"):
        infer_response(response, OutputFormat(False, {}))
    body, header_length = infer_response(response, OutputFormat(True, {}))
    assert header_length is not None and body.endswith(b"\x89PNG\xff")
