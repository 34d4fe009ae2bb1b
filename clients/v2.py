"""Build Open Inference Protocol (KServe v2) requests from numpy arrays and read responses back.

For load generators and scripts that talk to ninefold's v2 service (or to Triton itself) without
tritonclient: ninefold's generated `inference` stubs plus the same tensor codec the server uses.

    request = infer_request("resnet_small", {"images": batch}, outputs=[Output("logits", classification=5)])
    async with grpc.aio.insecure_channel(target) as channel:
        call = infer_call(channel, request, timeout_s=5.0)   # zero-argument coroutine factory
        arrays = response_arrays(await call())
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import grpc
import numpy as np

from contract.v2_codec import DATATYPES, datatype_of, decode_raw, encode_raw
from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class Output:
    """An output to ask for; `classification` = k asks for Triton's top-k "score:index:label" strings."""

    name: str
    classification: int = 0


def infer_request(
    model: str,
    inputs: Mapping[str, np.ndarray],
    *,
    outputs: Sequence[Output] = (),
    version: str = "",
    request_id: str = "",
) -> pb.ModelInferRequest:
    """A ModelInferRequest with every input in raw_input_contents (datatype from the array's dtype;
    object/bytes arrays travel as BYTES). No `outputs` = every output of the model."""
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for name, array in inputs.items():
        datatype = datatype_of(array)
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        request.raw_input_contents.append(encode_raw(array, datatype))
    for output in outputs:
        requested = request.outputs.add(name=output.name)
        if output.classification:
            requested.parameters["classification"].int64_param = output.classification
    return request


def http_infer_body(request: pb.ModelInferRequest) -> tuple[bytes, dict[str, str]]:
    """The OIP HTTP body (JSON header, then the raw tensors: the binary-data extension) and headers that
    carry the same tensors as `request`; every output asked for as binary data."""
    inputs = [
        {"name": t.name, "datatype": t.datatype, "shape": list(t.shape), "parameters": {"binary_data_size": len(raw)}}
        for t, raw in zip(request.inputs, request.raw_input_contents, strict=True)
    ]
    document: dict[str, object] = {"inputs": inputs, "parameters": {"binary_data_output": True}}
    if request.id:
        document["id"] = request.id
    if request.outputs:
        document["outputs"] = [{"name": o.name, "parameters": {"binary_data": True}} for o in request.outputs]
    header = json.dumps(document).encode()
    headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}
    return b"".join([header, *request.raw_input_contents]), headers


def response_arrays(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """The response's raw outputs as arrays by name (BYTES as object arrays of bytes)."""
    arrays = {}
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        shape = tuple(tensor.shape)
        arrays[tensor.name] = decode_raw(tensor.name, DATATYPES[tensor.datatype], raw, int(np.prod(shape))).reshape(
            shape
        )
    return arrays


def infer_call(
    channel: grpc.aio.Channel, request: pb.ModelInferRequest, timeout_s: float
) -> Callable[[], Awaitable[pb.ModelInferResponse]]:
    """A zero-argument coroutine factory sending the same pre-built request (for load generators)."""
    stub = pb_grpc.GRPCInferenceServiceStub(channel)

    def call() -> Awaitable[pb.ModelInferResponse]:
        return stub.ModelInfer(request, timeout=timeout_s)

    return call
